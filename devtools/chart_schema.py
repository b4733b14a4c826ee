"""The Helm chart's values.schema.json ``config`` property, generated from the worker's own config model.

``python -m devtools.chart_schema`` rewrites it; ``--check`` exits 1 when the checked-in file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from worker.config import Settings, _duration

__all__ = ["CHART_SCHEMA", "config_schema", "render", "values_schema"]

CHART_SCHEMA = Path(__file__).resolve().parents[1] / "helm" / "spanmetrics-worker" / "values.schema.json"

#: "15s", "1400ms", "1m30s", "0": what parse_duration reads (a bare number is seconds).
DURATION_PATTERN = r"^\s*\+?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)\s*$"

#: Options the chart sets itself from its values (they win over `config`), and secrets, which must
#: never reach the ConfigMap: refused under `config` at render time, with where to set them.
CHART_MANAGED: dict[str, dict[str, str]] = {
    "redis": {
        "url": "redis.url",
        "password": "redis.password or redis.existingSecret",
        "key_prefix": "redis.keyPrefix",
    },
    "kafka": {
        "bootstrap_servers": "kafka.bootstrapServers",
        "input_topic": "kafka.inputTopic",
        "output_topic": "kafka.outputTopic",
        "dlq_topic": "kafka.dlqTopic",
        "group_id": "kafka.groupId",
        "security_protocol": "kafka.securityProtocol",
        "sasl_mechanism": "kafka.sasl.mechanism",
        "sasl_username": "kafka.sasl.username",
        "sasl_password": "kafka.sasl.existingSecret",
    },
    "http": {"port": "http.port", "enabled": "(always on: the probes need it)"},
}


#: Core schema types of a model's body: a validator around them keeps the structure.
_STRUCTURAL = ("model", "model-fields")


class _ChartSchema(GenerateJsonSchema):
    """The input the worker accepts, no stricter: a lenient before-validator widens the schema.

    Durations take a string ("15s") or a number; a field normalised before validation (a
    case-insensitive enum, a bare string for a list) accepts any value here and is checked by
    the worker at start; a dimension may be a bare string (its name).
    """

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema["function"]["function"]
        inner = self.generate_inner(schema["schema"])
        if function is _duration:
            return _duration_schema(inner)
        if schema["schema"].get("type") in _STRUCTURAL:
            # A model-level check or rewrite: the structure stands; Dimension also takes a bare name.
            if getattr(function, "__qualname__", "") == "Dimension._from_name":
                return {"anyOf": [{"type": "string"}, inner]}
            return inner
        return {}

    def function_wrap_schema(self, schema: core_schema.WrapValidatorFunctionSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        return inner if schema["schema"].get("type") in _STRUCTURAL else {}

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        # Defaults are documentation noise here (and tuples of models do not round-trip).
        return self.generate_inner(schema["schema"])


def _duration_schema(inner: JsonSchemaValue) -> JsonSchemaValue:
    numeric = {key: value for key, value in inner.items() if key != "title"}
    return {"anyOf": [numeric, {"type": "string", "pattern": DURATION_PATTERN}]}


def _strip(node: Any) -> Any:
    """Titles out (noise); pydantic's secret markers out (helm's validators know no `writeOnly`)."""
    if isinstance(node, dict):
        return {
            key: (
                {name: _strip(sub) for name, sub in value.items()} if key == "properties" else _strip(value)
            )
            for key, value in node.items()
            if key not in ("title", "writeOnly", "format")
        }
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def config_schema() -> dict[str, Any]:
    """The ``config`` property: Settings' validation schema, its ``$defs`` returned alongside."""
    schema = _strip(Settings.model_json_schema(mode="validation", schema_generator=_ChartSchema))
    definitions = schema.pop("$defs")
    for definition in definitions.values():
        if "anyOf" in definition and "additionalProperties" in definition:
            # A model that also takes a bare string: the object branch is the one closed to extras.
            closed = definition.pop("additionalProperties")
            for branch in definition["anyOf"]:
                if branch.get("type") == "object":
                    branch["additionalProperties"] = closed
    for section, managed in CHART_MANAGED.items():
        reference = schema["properties"][section]["$ref"].rsplit("/", 1)[1]
        definition = definitions[reference] = json.loads(json.dumps(definitions[reference]))
        for option in managed:
            definition["properties"].pop(option, None)
    schema["description"] = (
        "Further worker configuration merged into the config file (generated from the worker's "
        "config model by devtools/chart_schema.py; options the chart sets from other values and "
        "secrets are refused here: "
        + "; ".join(
            f"{section}.{option} -> {where}"
            for section, managed in CHART_MANAGED.items()
            for option, where in managed.items()
        )
        + ")."
    )
    return {"config": schema, "$defs": definitions}


def values_schema(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (the checked-in values schema) with its ``config`` property regenerated."""
    generated = config_schema()
    updated = dict(current)
    updated["properties"] = {**current["properties"], "config": generated["config"]}
    updated["$defs"] = generated["$defs"]
    return updated


def render(current: dict[str, Any]) -> str:
    return json.dumps(values_schema(current), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the checked-in schema is stale")
    options = parser.parse_args(argv)
    text = CHART_SCHEMA.read_text(encoding="utf-8")
    wanted = render(json.loads(text))
    if options.check:
        if text != wanted:
            print(
                f"{CHART_SCHEMA} is stale: run `python -m devtools.chart_schema` and commit it",
                file=sys.stderr,
            )
            return 1
        print(f"{CHART_SCHEMA.name} is up to date")
        return 0
    CHART_SCHEMA.write_text(wanted, encoding="utf-8")
    print(f"wrote {CHART_SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
