"""``spanmetrics process``: the worker's own path, the connector documentation's examples, input
formats and input errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from state.memory_store import MemoryStore
from tests.reference.metrics_builder import build_metrics_request
from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    CLIENT,
    SERVER,
    FakeClock,
    attribute_dict,
    make_span,
    points,
    simple_request,
    total,
)
from worker.cli import cli
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.series import Temporality, with_companions
from worker.offline import process_documents, read_documents
from worker.otlp.json_codec import metrics_to_dict, traces_from_json, traces_to_json
from worker.otlp.metrics_encoder import encode_requests, fit_otlp
from worker.processors.pipeline import Pipeline

DOCS = Path(__file__).resolve().parents[1] / "data" / "connector_docs"
NO_HISTOGRAM = "spanmetrics:\n  histogram:\n    disable: true\n"

pytestmark = pytest.mark.usefixtures("clean_env")


def without_timestamps(document: Any) -> Any:
    if isinstance(document, dict):
        return {
            key: without_timestamps(value)
            for key, value in document.items()
            if key not in ("startTimeUnixNano", "timeUnixNano")
        }
    if isinstance(document, list):
        return [without_timestamps(item) for item in document]
    return document


_MINUTE_NS = 60 * 10**9


def without_zero_points(document: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The document without its zero-initialisation points, and those points, each checked: a
    sum point of value 0 right before the point of the same series (same attributes and start),
    at max(start, the end of the minute before the flush) (Tempo's getEndOfLastMinuteMs)."""
    zeros: list[dict[str, Any]] = []
    for resource_metrics in document.get("resourceMetrics", []):
        for scope_metrics in resource_metrics["scopeMetrics"]:
            for metric in scope_metrics["metrics"]:
                if "sum" not in metric:
                    continue
                kept = []
                data_points = metric["sum"]["dataPoints"]
                for index, point in enumerate(data_points):
                    following = data_points[index + 1] if index + 1 < len(data_points) else None
                    if following is not None and following["attributes"] == point["attributes"]:
                        start, now = int(point["startTimeUnixNano"]), int(following["timeUnixNano"])
                        assert int(point["asInt"]) == 0 and "exemplars" not in point
                        assert point["startTimeUnixNano"] == following["startTimeUnixNano"]
                        assert int(point["timeUnixNano"]) == max(start, now - now % _MINUTE_NS - 10**9) < now
                        zeros.append(point)
                    else:
                        kept.append(point)
                metric["sum"]["dataPoints"] = kept
    return document, zeros


def run_cli(*args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(cli, ["process", *args], input=input)


def assert_clean_failure(result: Result, *fragments: str) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("spanmetrics: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def no_histogram_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(NO_HISTOGRAM, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- golden


def _process_file(name: str, settings: Settings | None = None) -> dict[str, Any]:
    path = DOCS / name
    documents = read_documents(path.name, path.read_bytes(), None)
    result = process_documents(settings or Settings(), documents, clock=FakeClock())
    return metrics_to_dict(result.request)


def test_same_resource_gives_one_resource_metrics_with_two_calls() -> None:
    path = DOCS / "same_resource_input.json"
    result = process_documents(
        Settings(), read_documents(path.name, path.read_bytes(), None), clock=FakeClock()
    )
    assert result.spans == 2
    assert result.skipped_no_service == 0
    [resource_metrics] = result.request.resource_metrics
    assert attribute_dict(resource_metrics.resource.attributes) == {
        "service.name": "TestSvcName",
        "k8s.pod.name": "first",
    }
    [calls] = points(result.request, "calls")
    assert calls.value == 2
    [duration] = points(result.request, "duration")
    assert duration.proto.count == 2


def test_two_resources_give_two_resource_metrics_with_one_call_each() -> None:
    path = DOCS / "two_resources_input.json"
    result = process_documents(
        Settings(), read_documents(path.name, path.read_bytes(), None), clock=FakeClock()
    )
    assert len(result.request.resource_metrics) == 2
    pods = [attribute_dict(rm.resource.attributes)["k8s.pod.name"] for rm in result.request.resource_metrics]
    assert pods == ["first", "second"]
    assert [p.value for p in points(result.request, "calls")] == [1, 1]


@pytest.mark.parametrize("example", ["same_resource", "two_resources"])
def test_documented_output_exactly_without_the_histogram(example: str) -> None:
    settings = Settings.model_validate({"spanmetrics": {"histogram": {"disable": True}}})
    produced = _process_file(f"{example}_input.json", settings)
    documented = json.loads((DOCS / f"{example}_output.json").read_text(encoding="utf-8"))
    assert without_timestamps(produced) == without_timestamps(documented)


@pytest.mark.parametrize("example", ["same_resource", "two_resources"])
def test_documented_output_through_the_cli(example: str, no_histogram_config: Path) -> None:
    result = run_cli("--config", str(no_histogram_config), str(DOCS / f"{example}_input.json"))
    assert result.exit_code == 0, result.output
    # The documented output predates zero-initialisation (connector PR #39052): each new calls
    # series now also shows its 0 point first, in the same output (Tempo's way), then the
    # documented point.
    produced, zeros = without_zero_points(json.loads(result.stdout))
    assert len(zeros) == (1 if example == "same_resource" else 2)
    documented = json.loads((DOCS / f"{example}_output.json").read_text(encoding="utf-8"))
    assert without_timestamps(produced) == without_timestamps(documented)
    assert result.stderr == ""


def test_cli_timestamps_are_consistent(no_histogram_config: Path) -> None:
    result = run_cli("--config", str(no_histogram_config), str(DOCS / "same_resource_input.json"))
    point = json.loads(result.stdout)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
        "dataPoints"
    ][0]
    assert int(point["startTimeUnixNano"]) <= int(point["timeUnixNano"])


# ---------------------------------------------------------------------------------------- formats


def _jsonl(*requests: Any) -> str:
    return "\n".join(traces_to_json(request) for request in requests) + "\n"


def test_json_lines_with_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text(
        _jsonl(simple_request(make_span("a")), simple_request(make_span("a")), simple_request(make_span("b")))
        + "\n",
        encoding="utf-8",
    )
    result = run_cli(str(path))
    assert result.exit_code == 0, result.output
    calls = {
        point["attributes"][1]["value"]["stringValue"]: int(point["asInt"])
        for point in json.loads(result.stdout)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
            "dataPoints"
        ]
    }
    assert calls == {"a": 2, "b": 1}


def test_stdin_dash() -> None:
    result = run_cli("-", input=_jsonl(simple_request(make_span()), simple_request(make_span())))
    assert result.exit_code == 0, result.output
    data_points = json.loads(result.stdout)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
        "dataPoints"
    ]
    assert [int(p["asInt"]) for p in data_points] == [0, 2]  # the new series' zero point, then its count


def test_stdin_without_arguments() -> None:
    result = run_cli(input=(DOCS / "same_resource_input.json").read_bytes())
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["resourceMetrics"]) == 1


def test_protobuf_input(tmp_path: Path) -> None:
    path = tmp_path / "traces.pb"
    path.write_bytes(simple_request(make_span(), make_span(), make_span("other")).SerializeToString())
    result = run_cli(str(path))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    data_points = document["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"]
    assert [int(p["asInt"]) for p in data_points[::2]] == [0, 0]  # each series' zero point first
    assert sorted(int(p["asInt"]) for p in data_points[1::2]) == [1, 2]


def test_explicit_protobuf_format(tmp_path: Path) -> None:
    path = tmp_path / "traces.bin"
    path.write_bytes(simple_request(make_span()).SerializeToString())
    assert run_cli("--input-format", "otlp_proto", str(path)).exit_code == 0


def test_several_files_are_one_interval(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    second = tmp_path / "b.pb"
    first.write_text(traces_to_json(simple_request(make_span())), encoding="utf-8")
    second.write_bytes(simple_request(make_span()).SerializeToString())
    result = run_cli(str(first), str(second))
    assert result.exit_code == 0, result.output
    data_points = json.loads(result.stdout)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
        "dataPoints"
    ]
    assert [p["asInt"] for p in data_points] == ["0", "2"]


def test_empty_input_gives_an_empty_request() -> None:
    result = run_cli("-", input="")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {}


def test_skipped_spans_are_reported_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "anon.json"
    request = simple_request(make_span())
    del request.resource_spans[0].resource.attributes[:]
    path.write_text(traces_to_json(request), encoding="utf-8")
    result = run_cli(str(path))
    assert result.exit_code == 0
    assert "skipped 1 span(s)" in result.stderr


def test_tenant_option(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(traces_to_json(simple_request(make_span())), encoding="utf-8")
    assert run_cli("--tenant", "acme", str(path)).exit_code == 0


def test_process_documents_counts_spans() -> None:
    documents = [simple_request(make_span(), make_span()), simple_request(make_span())]
    result = process_documents(Settings(), documents, clock=FakeClock())
    assert result.spans == 3
    assert total(result.request, "calls") == 3


# ---------------------------------------------------------------------------------------- errors


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"resourceSpans": [', encoding="utf-8")
    assert_clean_failure(run_cli(str(path)), str(path), "not valid JSON")


def test_bad_hex_id_names_the_file(tmp_path: Path) -> None:
    document = json.loads((DOCS / "same_resource_input.json").read_text(encoding="utf-8"))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "not-hex"
    del document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["trace_id"]
    path = tmp_path / "bad-id.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert_clean_failure(run_cli(str(path)), str(path), "traceId")


def test_bad_third_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    good = traces_to_json(simple_request(make_span()))
    path.write_text(f"{good}\n{good}\n{{oops\n{good}\n", encoding="utf-8")
    assert_clean_failure(run_cli(str(path)), str(path), "line 3")


def test_bad_line_from_stdin(tmp_path: Path) -> None:
    good = traces_to_json(simple_request(make_span()))
    assert_clean_failure(run_cli("-", input=f"{good}\n[1, 2\n"), "<stdin>", "line 2")


def test_bad_protobuf_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pb"
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    assert_clean_failure(run_cli(str(path)), str(path), "protobuf")


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_failure(run_cli(str(tmp_path / "absent.json")), "absent.json", "cannot read")


def test_not_utf8_json(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"resourceSpans": [], "x": "\xe9"}')
    assert_clean_failure(run_cli("--input-format", "otlp_json", str(path)), str(path), "UTF-8")


def test_read_documents_error_names_the_line() -> None:
    good = traces_to_json(simple_request(make_span()))
    with pytest.raises(OtlpDecodeError, match=r"^spans\.jsonl: line 3: "):
        list(read_documents("spans.jsonl", f"{good}\n\n{{\n".encode(), None))


def test_read_documents_whole_document_and_lines_agree() -> None:
    request = simple_request(make_span("x"))
    [whole] = read_documents(
        "a.json", json.dumps(json.loads(traces_to_json(request)), indent=2).encode(), None
    )
    [line] = read_documents("a.jsonl", traces_to_json(request).encode(), None)
    assert whole == line == traces_from_json(traces_to_json(request))


def test_malformed_input_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    good = traces_to_json(simple_request(make_span()))
    path.write_text(f"{good}\n{good}\nnot json\n", encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "process", str(path)], capture_output=True, timeout=60, check=False
    )
    stderr = completed.stderr.decode()
    assert completed.returncode != 0
    assert "Traceback" not in stderr
    assert stderr.startswith(f"spanmetrics: error: {path}: line 3: ")
    assert completed.stdout == b""


# ---------------------------------------------------------------------------------------- the worker's path


def _by_hand(settings: Settings, documents: list[Any], clock: FakeClock) -> tuple[bytes, bytes]:
    """(the worker's bytes, the protobuf builder's bytes) for the documents in one flush: the
    pipeline, then the memory store's merge and fold and the encoder, each called directly."""
    pipeline = Pipeline(settings, clock=clock)
    store = MemoryStore(
        slots=1,
        max_exemplars=pipeline.max_exemplars,
        active_series_limit=settings.worker.max_active_series_per_tenant,
    )
    tenant = settings.kafka.default_tenant
    for document in documents:
        pipeline.consume(document, tenant)
    pipeline.expire_all()
    deltas = pipeline.take_deltas()
    temporality = settings.spanmetrics.aggregation_temporality
    now = clock()
    builder = build_metrics_request(
        deltas[tenant].resources,
        with_companions(deltas[tenant].series),
        pipeline.descriptors(),
        temporality,
        now,
    ).SerializeToString()

    async def worker() -> bytes:
        [token] = (await store.claim([0])).values()
        await store.merge(deltas, {0: (token, 1)})
        fold = await store.fold_slot(tenant, 0, token, delta_mode=temporality is Temporality.DELTA)
        assert fold.committed
        for series in fold.live:
            fit_otlp(series)
        [request] = encode_requests(
            await store.resources(tenant),
            fold.live,
            pipeline.descriptors(),
            temporality,
            now,
            1 << 40,
            reuse_attribute_tuples=False,
        )
        return request.data

    return asyncio.run(worker()), builder


@pytest.mark.parametrize("temporality", ["CUMULATIVE", "DELTA"])
def test_process_emits_the_bytes_of_the_workers_store_fold_and_encoder(temporality: str) -> None:
    settings = Settings.model_validate(
        {
            "spanmetrics": {
                "aggregation_temporality": temporality,
                "exemplars": {"enabled": True},
                "histogram": {"exponential": {"max_size": 40}},
            },
            "servicegraphs": {"enabled": True},
        }
    )
    spans = [make_span("a", kind=kind, duration_ms=n) for n, kind in enumerate((SERVER, CLIENT) * 3)]
    documents = [simple_request(*spans[:4]), simple_request(*spans[4:], service="other")]
    # An odd clock: the fold keeps microseconds, so its start times differ from the deltas' own.
    start = BASE_NS + 1_234_567
    result = process_documents(settings, documents, clock=FakeClock(start))
    worker, builder = _by_hand(settings, documents, FakeClock(start))
    assert result.data == worker
    assert result.request == ExportMetricsServiceRequest.FromString(worker)
    assert worker != builder  # (so the equality above says which path process took)
    assert metrics_to_dict(ExportMetricsServiceRequest.FromString(builder)) != metrics_to_dict(result.request)


def test_process_applies_the_workers_active_series_limit() -> None:
    """A new series past the tenant's limit goes to the overflow series at the next fold, as in
    the worker: one flush emits only the admitted ones."""
    settings = Settings.model_validate({"worker": {"max_active_series_per_tenant": 2}})
    result = process_documents(
        settings, [simple_request(*(make_span(f"s{n}") for n in range(3)))], clock=FakeClock()
    )
    # One label set each (calls and duration together): the first two span series.
    assert total(result.request, "calls") == 2


def test_a_metrics_request_is_refused_as_the_worker_refuses_it(tmp_path: Path) -> None:
    """A metrics request parses as traces (protobuf is lenient): ``process`` names its bad span
    instead of counting phantom spans, as the worker dead-letters such a record."""
    from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics

    metrics = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics()])
    metrics.resource_metrics[0].scope_metrics.add().metrics.add(name="calls")
    path = tmp_path / "metrics.pb"
    path.write_bytes(metrics.SerializeToString())
    with pytest.raises(OtlpDecodeError, match=r"metrics\.pb: span 0 of resource 0: trace_id"):
        list(read_documents("metrics.pb", path.read_bytes(), "otlp_proto"))


def test_process_shows_the_zero_point_then_the_counted_value(tmp_path: Path) -> None:
    """Tempo's initial zero sample (modules/generator/registry/counter_test.go Test_counter: 0 at
    getEndOfLastMinuteMs, then the value, in one collection), for the connector's zero-initialised
    counters (connector_test.go, #38537 / PR #39052: calls and events, not the histogram)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "spanmetrics:\n  events:\n    enabled: true\n    dimensions: [{name: exception.type}]\n",
        encoding="utf-8",
    )
    span = make_span("a", events=[{"exception.type": "E"}])
    result = run_cli("--config", str(config), "-", input=_jsonl(simple_request(span, span)))
    assert result.exit_code == 0, result.output
    document, zeros = without_zero_points(json.loads(result.stdout))
    metrics = {m["name"]: m for m in document["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]}
    assert len(zeros) == 2  # calls and events
    assert [p["asInt"] for p in metrics["calls"]["sum"]["dataPoints"]] == ["2"]
    assert [p["asInt"] for p in metrics["events"]["sum"]["dataPoints"]] == ["2"]
    assert [p["count"] for p in metrics["duration"]["histogram"]["dataPoints"]] == ["2"]  # no zero point
