"""Settings: one YAML file with upstream option names and environment overrides, validated into one object.

Invalid values fail at start with one line naming the option (:class:`~worker.model.errors.ConfigError`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from worker.model.durations import parse_duration
from worker.model.enums import SPAN_KIND_NAMES as SPAN_KIND_BY_NUMBER
from worker.model.enums import STATUS_CODE_NAMES as STATUS_CODE_BY_NUMBER
from worker.model.errors import ConfigError
from worker.model.series import CONNECTOR_OVERFLOW, TEMPO_OVERFLOW, Attributes, Temporality

__all__ = [
    "DEFAULT_HISTOGRAM_BUCKETS",
    "RESERVED_DIMENSIONS",
    "TEMPO_SPAN_METRICS_BUCKETS",
    "Dimension",
    "DimensionMapping",
    "FilterPolicy",
    "HistogramMode",
    "HistogramUnit",
    "HostInfoConfig",
    "IntrinsicDimensions",
    "KafkaConfig",
    "MetricsGeneratorConfig",
    "PolicyAttribute",
    "PolicyMatch",
    "RedisConfig",
    "RegistryConfig",
    "RemoteWriteConfig",
    "ServiceGraphsConfig",
    "Settings",
    "SpanMetricsConfig",
    "TempoSpanMetricsConfig",
    "Temporality",
    "compile_glob",
    "load_config",
    "parse_policy_key",
]

#: The connector's default explicit buckets, in seconds.
DEFAULT_HISTOGRAM_BUCKETS: tuple[float, ...] = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.050, 0.100, 0.200, 0.400, 0.800,
    1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
)  # fmt: skip

#: The default dimensions; a configured dimension may not reuse these names (upstream refuses too).
RESERVED_DIMENSIONS: tuple[str, ...] = ("service.name", "span.name", "span.kind", "status.code")

#: Tempo's default service-graph latency buckets, in seconds.
DEFAULT_SERVICE_GRAPH_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


def _duration(value: object) -> float:
    return parse_duration(value)


#: A duration in seconds, written as "15s", "1400ms" or a number of seconds.
Duration = Annotated[float, BeforeValidator(_duration)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class HistogramUnit(StrEnum):
    MILLISECONDS = "ms"
    SECONDS = "s"

    @property
    def divisor_ns(self) -> float:
        """Nanoseconds in one unit: span durations are nanoseconds, the histogram is in this unit."""
        return 1e6 if self is HistogramUnit.MILLISECONDS else 1e9


def _unit(value: object) -> object:
    # Upstream's Unit.UnmarshalText is case-insensitive (internal/metrics/unit.go, unit_test.go):
    # ms, Ms, MS, s, S. Anything else goes on unchanged, to be refused naming what it was.
    if isinstance(value, str) and value.lower() in {"ms", "s"}:
        return value.lower()
    return value


def _temporality(value: object) -> object:
    if isinstance(value, str):
        text = value.strip().upper()
        return text.removeprefix("AGGREGATION_TEMPORALITY_")
    return value


def _is_temporality(value: object) -> bool:
    return _temporality(value) in {Temporality.CUMULATIVE.value, Temporality.DELTA.value}


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A dimension glob as a regular expression matching whole attribute keys.

    The syntax is upstream's (``github.com/gobwas/glob`` compiled with ``.`` as the separator,
    connector.go newDimensions): ``*`` any run of characters without a ``.``, ``**`` any run at
    all, ``?`` one character other than ``.``, ``[abc]`` / ``[!abc]`` one of (not of) the listed
    characters, ``[a-z]`` / ``[!a-z]`` one in (not in) the range, ``{a,b*}`` one of the
    alternatives, ``\\`` escapes the next character. ``http.*`` matches ``http.method`` but not
    ``http.request.method``; ``http.**`` matches both. Raises ValueError on an unclosed ``[`` or
    ``{`` or a malformed range.
    """
    out: list[str] = []
    depth = 0
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                out.append(".*")
                i += 2
            else:
                out.append("[^.]*")
                i += 1
        elif char == "?":
            out.append("[^.]")
            i += 1
        elif char == "{":
            depth += 1
            out.append("(?:")
            i += 1
        elif char == "," and depth:
            out.append("|")
            i += 1
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
            i += 1
        elif char == "[":
            i, piece = _glob_class(pattern, i + 1)
            out.append(piece)
        else:
            text: list[str] = []
            breakers = "*?[{,}" if depth else "*?[{"
            while i < n and pattern[i] not in breakers:
                if pattern[i] == "\\":
                    i += 1
                    if i == n:
                        break
                text.append(pattern[i])
                i += 1
            out.append(re.escape("".join(text)))
    if depth:
        raise ValueError("unclosed '{'")
    return re.compile("".join(out), re.DOTALL)


def _glob_class(pattern: str, i: int) -> tuple[int, str]:
    """``[...]`` from just after the ``[``: (index after the ``]``, regex piece)."""
    n = len(pattern)
    negate = i < n and pattern[i] == "!"
    if negate:
        i += 1
    if i + 2 < n and pattern[i + 1] == "-":
        low, high = pattern[i], pattern[i + 2]
        i += 3
        if i >= n or pattern[i] != "]":
            raise ValueError("a range is one '[lo-hi]' and must end with ']'")
        if high < low:
            raise ValueError(f"empty range [{low}-{high}]")
        body = f"{re.escape(low)}-{re.escape(high)}"
    else:
        chars: list[str] = []
        while i < n and pattern[i] != "]":
            if pattern[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(pattern[i])
            i += 1
        if i >= n:
            raise ValueError("unclosed '['")
        if not chars:
            return i + 1, "(?s:.)" if negate else "(?!)"
        body = "".join(re.escape(c) for c in chars)
    return i + 1, f"[{'^' if negate else ''}{body}]"


class Dimension(_Frozen):
    """An extra dimension: ``name`` (looked up in span attributes, then resource attributes, then
    ``default``) or ``glob`` (every span or resource attribute key the pattern matches, see
    :func:`worker.model.globs.compile_glob`)."""

    name: str = ""
    default: str | None = None
    glob: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        # Accept a bare string as shorthand for {name: ...}.
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _name_or_glob(self) -> Dimension:
        # Upstream config.go validateDimensions (PR #48312): exactly one of name and glob, and no
        # default on a glob (a glob only matches keys that are present).
        if self.name and self.glob:
            raise ValueError(
                f"set only one of 'name' or 'glob', got both: name={self.name!r} glob={self.glob!r}"
            )
        if not self.name and not self.glob:
            raise ValueError("set one of 'name' or 'glob'")
        if self.glob:
            if self.default is not None:
                raise ValueError(f"'default' is not supported on glob dimension {self.glob!r}")
            try:
                compile_glob(self.glob)
            except ValueError as exc:
                raise ValueError(f"invalid dimension glob {self.glob!r}: {exc}") from None
        return self


class ExplicitBuckets(_Frozen):
    buckets: tuple[Duration, ...] = DEFAULT_HISTOGRAM_BUCKETS

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets:
            raise ValueError("needs at least one bucket boundary")
        if any(b <= 0 for b in buckets):
            raise ValueError("bucket boundaries must be positive durations")
        if any(later <= earlier for earlier, later in pairwise(buckets)):
            raise ValueError("bucket boundaries must be strictly increasing")
        return buckets


def _max_size(value: object) -> object:
    # Upstream (connector.go initHistogramMetrics) takes 0 as go-expohisto's DefaultMaxSize.
    return 160 if value == 0 and not isinstance(value, bool) else value


class ExponentialBuckets(_Frozen):
    max_size: Annotated[int, BeforeValidator(_max_size)] = Field(default=160, ge=2, le=16384)


class HistogramConfig(_Frozen):
    disable: bool = False
    unit: Annotated[HistogramUnit, BeforeValidator(_unit)] = HistogramUnit.MILLISECONDS
    dimensions: tuple[Dimension, ...] = ()
    explicit: ExplicitBuckets | None = None
    exponential: ExponentialBuckets | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HistogramConfig:
        if self.explicit is not None and self.exponential is not None:
            raise ValueError("set either 'explicit' or 'exponential', not both")
        return self

    @property
    def bounds(self) -> tuple[float, ...]:
        """Explicit bucket boundaries in the histogram's unit (the connector's defaults when unset)."""
        seconds = self.explicit.buckets if self.explicit else DEFAULT_HISTOGRAM_BUCKETS
        scale = 1000.0 if self.unit is HistogramUnit.MILLISECONDS else 1.0
        return tuple(round(b * scale, 9) for b in seconds)


class ExemplarsConfig(_Frozen):
    enabled: bool = False
    #: Only a negative value is an error (upstream config.go Validate). 0 means no exemplars: since
    #: PR #41679 the field is a plain int defaulting to 5 (the pointer whose nil meant "unlimited"
    #: is gone), and internal/metrics/metrics.go AddExemplar stops once the slice holds as many as
    #: the maximum, so a maximum of 0 admits none.
    max_per_data_point: int = 5

    @field_validator("max_per_data_point")
    @classmethod
    def _not_negative_when_enabled(cls, value: int, info: ValidationInfo) -> int:
        # Upstream config.go Validate refuses a negative value only with exemplars enabled.
        if value < 0 and info.data.get("enabled"):
            raise ValueError("must be greater than or equal to 0 when exemplars are enabled")
        return value


class EventsConfig(_Frozen):
    enabled: bool = False
    dimensions: tuple[Dimension, ...] = ()

    @model_validator(mode="after")
    def _dimensions_required(self) -> EventsConfig:
        if self.enabled and not self.dimensions:
            raise ValueError("'dimensions' needs at least one entry when events are enabled")
        return self


def _check_dimension_names(option: str, dimensions: Sequence[Dimension]) -> None:
    """Refuse names that collide with the defaults or with each other within one list, as the
    connector does (config.go validateDimensions).

    A glob may not match a default dimension or a name of its own list ("duplicate dimension name
    X conflicting with glob Y"); a name or glob matching a name of another list is allowed there
    and here, and that attribute is written once.
    """
    seen: set[str] = set()
    own: list[str] = []
    for dimension in dimensions:
        if not dimension.name:
            continue
        if dimension.name in RESERVED_DIMENSIONS:
            raise ValueError(
                f"{option}: '{dimension.name}' is a default dimension and cannot be configured again "
                f"(defaults: {', '.join(RESERVED_DIMENSIONS)}; use exclude_dimensions to drop one)"
            )
        if dimension.name in seen:
            raise ValueError(f"{option}: duplicate dimension name '{dimension.name}'")
        seen.add(dimension.name)
        own.append(dimension.name)
    for dimension in dimensions:
        if not dimension.glob:
            continue
        pattern = compile_glob(dimension.glob)
        for name in (*RESERVED_DIMENSIONS, *own):
            if pattern.fullmatch(name):
                raise ValueError(
                    f"{option}: duplicate dimension name '{name}' conflicting with glob '{dimension.glob}'"
                )


#: Tempo's filter-policy intrinsics (pkg/spanfilter/config/config.go supportedIntrinsics), also
#: spelled with TraceQL's ``span:`` scope.
POLICY_INTRINSICS: tuple[str, ...] = ("name", "status", "kind")

#: The strict values of the ``kind`` and ``status`` intrinsics: the OTLP enum names, as Tempo
#: looks them up (tracev1.Span_SpanKind_value, tracev1.Status_StatusCode_value).
SPAN_KIND_NAMES: tuple[str, ...] = tuple(SPAN_KIND_BY_NUMBER.values())
STATUS_CODE_NAMES: tuple[str, ...] = tuple(STATUS_CODE_BY_NUMBER.values())

_POLICY_KEY_HELP = "use resource.<attribute>, span.<attribute> or an intrinsic (name, status, kind)"
#: What TraceQL's lexer ends an unquoted attribute name at (pkg/traceql/lexer.go isAttributeRune).
_NOT_ATTRIBUTE_RUNES = frozenset("{}()=~!<>&|^,")
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _attribute_name(text: str) -> str | None:
    """A TraceQL attribute name: unquoted runes and ``"quoted"`` parts (escapes ``\\"`` and ``\\\\``)."""
    name: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                    if i >= len(text) or text[i] not in '\\"':
                        return None
                name.append(text[i])
                i += 1
            if i >= len(text):
                return None
        elif char.isspace() or char in _NOT_ATTRIBUTE_RUNES:
            return None
        else:
            name.append(char)
        i += 1
    return "".join(name) or None


def parse_policy_key(key: str) -> tuple[Literal["intrinsic", "resource", "span"], str]:
    """Where a filter-policy key looks: ``("intrinsic", "kind")``, ``("resource", "service.name")``...

    Tempo parses the key as a TraceQL attribute (traceql.ParseIdentifier) and accepts the
    ``resource.`` and ``span.`` scopes and the intrinsics name, status and kind.
    """
    text = key.strip()
    intrinsic = text.removeprefix("span:")
    if intrinsic in POLICY_INTRINSICS:
        return "intrinsic", intrinsic
    scopes: tuple[Literal["resource", "span"], ...] = ("resource", "span")
    for scope in scopes:
        rest = text.removeprefix(f"{scope}.")
        if rest != text and (name := _attribute_name(rest)) is not None:
            return scope, name
    raise ValueError(f"unsupported key {key!r}: {_POLICY_KEY_HELP}")


class PolicyAttribute(_Frozen):
    """One ``key: value`` condition of a filter policy (Tempo's MatchPolicyAttribute)."""

    key: str
    #: bool, int, double or string, as Tempo's NewStrictAttributeFilter takes them; a strict
    #: comparison is typed (an int never equals the string "1").
    value: bool | int | float | str

    @field_validator("key")
    @classmethod
    def _scoped(cls, key: str) -> str:
        parse_policy_key(key)
        return key

    @field_validator("value")
    @classmethod
    def _int64(cls, value: bool | int | float | str) -> bool | int | float | str:
        if type(value) is int and not _INT64[0] <= value <= _INT64[1]:
            raise ValueError("an integer value must fit in 64 bits")
        return value

    @property
    def target(self) -> tuple[Literal["intrinsic", "resource", "span"], str]:
        """``(scope, name)`` of :attr:`key` (see :func:`parse_policy_key`)."""
        return parse_policy_key(self.key)


def _check_policy_value(match_type: str, attribute: PolicyAttribute) -> None:
    """Refuse what Tempo's NewSplitPolicy refuses (policymatch/intrinsic.go, attribute.go)."""
    scope, name = attribute.target
    value = attribute.value
    if (match_type == "regex" or scope == "intrinsic") and not isinstance(value, str):
        wanted = "a regular expression" if match_type == "regex" else "a string"
        raise ValueError(f"{attribute.key}: the value must be {wanted} (got {value!r})")
    if match_type == "regex":
        try:
            re.compile(str(value))
        except re.error as exc:
            raise ValueError(f"{attribute.key}: invalid regular expression {value!r}: {exc}") from None
        return
    allowed = (
        {"kind": SPAN_KIND_NAMES, "status": STATUS_CODE_NAMES}.get(name) if scope == "intrinsic" else None
    )
    if allowed is not None and value not in allowed:
        raise ValueError(f"{attribute.key}: unsupported value {value!r} (allowed: {', '.join(allowed)})")


class PolicyMatch(_Frozen):
    """Conditions that must all hold (Tempo's PolicyMatch): ``strict`` equality or ``regex`` search."""

    match_type: Literal["strict", "regex"]
    attributes: tuple[PolicyAttribute, ...] = ()

    @model_validator(mode="after")
    def _values(self) -> PolicyMatch:
        for attribute in self.attributes:
            _check_policy_value(self.match_type, attribute)
        return self


class FilterPolicy(_Frozen):
    """One entry of Tempo's ``filter_policies``: a span is kept when every ``include`` matches or
    any ``include_any`` does, and no ``exclude`` does (see worker/processors/spanfilter.py)."""

    include: PolicyMatch | None = None
    include_any: PolicyMatch | None = None
    exclude: PolicyMatch | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> FilterPolicy:
        if self.include is None and self.include_any is None and self.exclude is None:
            raise ValueError("a filter policy needs at least one of include, include_any, exclude")
        return self


class SpanMetricsConfig(_Frozen):
    """The connector's options, under the upstream names.

    Like upstream, some values are accepted with no effect: :attr:`warnings` names them, and the
    worker logs each once at start.
    """

    dimensions: tuple[Dimension, ...] = ()
    calls_dimensions: tuple[Dimension, ...] = ()
    exclude_dimensions: tuple[str, ...] = ()
    histogram: HistogramConfig = HistogramConfig()
    aggregation_temporality: Annotated[Temporality, BeforeValidator(_temporality)] = Temporality.CUMULATIVE
    metrics_flush_interval: Duration = Field(default=15.0, gt=0)
    #: Per resource: once no span of a resource was seen for this long, its series are emitted
    #: one last time and dropped (upstream PR #31106). 0: never.
    metrics_expiration: Duration = Field(default=0.0, ge=0)
    #: Per series: a series that received no span for this long is dropped (upstream PR #48270,
    #: issue #44187). 0: never. Both may be set; whichever drops a series first wins.
    series_expiration: Duration = Field(default=0.0, ge=0)
    namespace: str = ""
    resource_metrics_key_attributes: tuple[str, ...] = ()
    resource_metrics_cache_size: int = Field(default=1000, ge=1)
    #: Deprecated upstream since v0.130.0 (ignored there, with a warning); here it sizes the cache
    #: of series attributes kept across intervals (0 or unset: 10,000), which changes no output.
    dimensions_cache_size: int = 0
    aggregation_cardinality_limit: int = Field(default=0, ge=0)
    exemplars: ExemplarsConfig = ExemplarsConfig()
    events: EventsConfig = EventsConfig()
    include_instrumentation_scope: tuple[str, ...] = ()
    #: Upstream copies the resource attributes to the output unless its alpha gate
    #: ``excludeResourceMetrics`` is on and this is false (#43394). There are no gates here and the
    #: attributes are always copied: the output upstream gives with its default gates, whatever
    #: this says.
    add_resource_attributes: bool = False
    #: Adds ``sampling.method`` = ``extrapolated`` (the span's count came from an ``ot=th``
    #: tracestate) or ``counted`` to every data point, and to the series identity (PR #45557).
    enable_metrics_sampling_method: bool = False
    #: Upstream's LRU of delta start times (delta only; must then be > 0). Here every series keeps
    #: its start time in the state store, so nothing is evicted and the size has no effect.
    metric_timestamp_cache_size: int = 1000

    #: The aggregation_temporality given when it was neither CUMULATIVE nor DELTA (nor empty).
    _unknown_temporality: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _temporality_as_upstream(
        cls, data: object, handler: ModelWrapValidatorHandler[SpanMetricsConfig]
    ) -> SpanMetricsConfig:
        # Upstream's GetAggregationTemporality (config.go; config_test.go TestGetAggregationTemporality:
        # empty -> cumulative) returns delta only for AGGREGATION_TEMPORALITY_DELTA and cumulative for
        # any other string, with no error. Here: "" is cumulative silently, another unknown string
        # cumulative with a warning at start.
        unknown: str | None = None
        if isinstance(data, Mapping) and isinstance(data.get("aggregation_temporality"), str):
            given = data["aggregation_temporality"]
            if not _is_temporality(given):
                if given.strip():
                    unknown = given
                data = {**data, "aggregation_temporality": Temporality.CUMULATIVE.value}
        config = handler(data)
        if unknown is not None:
            config._unknown_temporality = unknown
        return config

    @model_validator(mode="after")
    def _dimension_names(self) -> SpanMetricsConfig:
        # Upstream config.go Validate checks each list on its own (PR #48312): a name of
        # ``dimensions`` may be repeated in another list, and the attribute is then written once
        # (with that list's value: its own default when the span lacks it).
        _check_dimension_names("dimensions", self.dimensions)
        _check_dimension_names("calls_dimensions", self.calls_dimensions)
        _check_dimension_names("histogram.dimensions", self.histogram.dimensions)
        _check_dimension_names("events.dimensions", self.events.dimensions)
        # exclude_dimensions naming something that is not a default dimension is accepted and
        # ignored, as upstream does (connector_test.go: exclude_dimensions with "totallyWrong").
        if self.aggregation_temporality is Temporality.DELTA and self.metric_timestamp_cache_size <= 0:
            # Upstream config.go Validate refuses it with delta only (the cache exists only then).
            raise ValueError(
                f"metric_timestamp_cache_size: invalid delta timestamp cache size: "
                f"{self.metric_timestamp_cache_size}, the maximum number of the items in the cache "
                "should be positive"
            )
        return self

    @property
    def warnings(self) -> tuple[tuple[str, str, object], ...]:
        """``(option, why, value)`` for each value accepted with no effect (logged once at start)."""
        found: list[tuple[str, str, object]] = []
        ignored = [name for name in self.exclude_dimensions if name not in RESERVED_DIMENSIONS]
        if ignored:
            found.append(
                (
                    "spanmetrics.exclude_dimensions",
                    f"not a default dimension ({', '.join(RESERVED_DIMENSIONS)}); ignored, as upstream",
                    ignored,
                )
            )
        if self.dimensions_cache_size != 0:
            # Upstream (connector.go newConnector) logs this for any value other than 0.
            found.append(
                (
                    "spanmetrics.dimensions_cache_size",
                    "deprecated (upstream v0.130.0: use aggregation_cardinality_limit); here it only "
                    "sizes a cache of series attributes, which changes no output",
                    self.dimensions_cache_size,
                )
            )
        if "metric_timestamp_cache_size" in self.model_fields_set:
            found.append(
                (
                    "spanmetrics.metric_timestamp_cache_size",
                    "no effect here: each series keeps its delta start time in the state store, "
                    "so none is evicted (upstream's cache size caps that)",
                    self.metric_timestamp_cache_size,
                )
            )
        if self._unknown_temporality is not None:
            found.append(
                (
                    "spanmetrics.aggregation_temporality",
                    "neither AGGREGATION_TEMPORALITY_CUMULATIVE nor AGGREGATION_TEMPORALITY_DELTA; "
                    "taken as cumulative, as upstream",
                    self._unknown_temporality,
                )
            )
        return tuple(found)

    def metric_name(self, name: str) -> str:
        """``calls`` or ``<namespace>.calls``: the connector's naming."""
        return f"{self.namespace}.{name}" if self.namespace else name


#: Tempo's service-graph sub-processors; a bare ``service-graphs`` means the first two.
ServiceGraphsSubprocessor = Literal[
    "service-graphs-request", "service-graphs-latency", "service-graphs-connection-info"
]


class ServiceGraphsConfig(_Frozen):
    """Tempo's service-graph processor options."""

    enabled: bool = False
    wait: Duration = Field(default=10.0, gt=0)
    max_items: int = Field(default=10000, ge=1)
    histogram_buckets: tuple[float, ...] = DEFAULT_SERVICE_GRAPH_BUCKETS
    dimensions: tuple[str, ...] = ()
    enable_client_server_prefix: bool = False
    peer_attributes: tuple[str, ...] = ("peer.service", "db.name", "db.system", "db.system.name")
    database_name_attributes: tuple[str, ...] = ("db.namespace", "db.name", "db.system", "db.system.name")
    enable_virtual_node_label: bool = False
    enable_messaging_system_latency_histogram: bool = False
    workers: int | None = Field(
        default=None,
        description=(
            "Tempo's service-graph worker count. Accepted so that a Tempo configuration loads, and "
            "ignored: here the work is spread over the Kafka consumer group's workers (one per "
            "input partition at most), not over goroutines of one process. (In Tempo too it adds "
            "no parallelism: every worker waits on one shared 2 s expiry ticker.)"
        ),
    )
    #: Tempo's sub-processor names (its ``processors`` list): which metric families are written.
    subprocessors: tuple[ServiceGraphsSubprocessor, ...] = (
        "service-graphs-request",
        "service-graphs-latency",
    )
    #: Tempo's per-tenant override: explicit-bucket (``classic``), exponential (``native``) or both.
    generate_native_histograms: Literal["classic", "native", "both"] = "classic"
    #: Tempo's ``filter_policies`` (#6453): edge spans they reject pair with nothing, and their
    #: counterpart is dropped rather than left to expire.
    filter_policies: tuple[FilterPolicy, ...] = ()
    #: Tempo's span multiplier: 1 / the span attribute (then resource attribute) of this name.
    span_multiplier_key: str = ""
    #: Tempo's tracestate multiplier (``ot=th:``), ahead of ``span_multiplier_key``.
    enable_tracestate_span_multiplier: bool = False

    @field_validator("subprocessors", mode="before")
    @classmethod
    def _subprocessor_names(cls, value: Any) -> Any:
        # Tempo compares sub-processor names case-insensitively (strings.EqualFold).
        if isinstance(value, str):
            value = [value]
        if isinstance(value, Sequence) and not isinstance(value, str):
            return tuple(item.lower() if isinstance(item, str) else item for item in value)
        return value

    @field_validator("subprocessors")
    @classmethod
    def _some_subprocessor(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(
                "needs at least one of service-graphs-request, service-graphs-latency, "
                "service-graphs-connection-info"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("generate_native_histograms", mode="before")
    @classmethod
    def _histogram_mode(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def warnings(self) -> tuple[tuple[str, str, object], ...]:
        """``(option, why, value)`` for each value accepted with no effect (logged once at start)."""
        if self.workers is None:
            return ()
        return (
            (
                "servicegraphs.workers",
                "Tempo's expiry goroutines; ignored here, where the consumer group's workers share the work",
                self.workers,
            ),
        )

    @field_validator("histogram_buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or any(b <= 0 for b in buckets):
            raise ValueError("needs positive bucket boundaries in seconds")
        if any(later <= earlier for earlier, later in pairwise(buckets)):
            raise ValueError("bucket boundaries must be strictly increasing")
        return buckets


# ---------------------------------------------------------------------------------- Tempo mode

#: Tempo's span-metrics latency buckets, ``prometheus.ExponentialBuckets(0.002, 2, 14)``, in seconds.
TEMPO_SPAN_METRICS_BUCKETS: tuple[float, ...] = tuple(0.002 * 2**i for i in range(14))

#: Tempo's processor names (``validation.SupportedProcessors``), sub-processors included.
TEMPO_PROCESSORS: tuple[str, ...] = (
    "service-graphs",
    "service-graphs-request",
    "service-graphs-latency",
    "service-graphs-connection-info",
    "span-metrics",
    "span-metrics-count",
    "span-metrics-latency",
    "span-metrics-size",
    "host-info",
)

#: Tempo's span-metrics intrinsic label names: a dimension or mapping sanitized to one of them
#: gets a ``__`` prefix (``validation.SupportedIntrinsicDimensions``).
TEMPO_INTRINSIC_LABELS: tuple[str, ...] = (
    "service",
    "span_name",
    "span_kind",
    "status_code",
    "status_message",
)

_TEMPO_INVALID_LABEL_CHARACTER = re.compile(r"[^a-zA-Z0-9_]")


def tempo_label_name(name: str, intrinsics: Collection[str] = TEMPO_INTRINSIC_LABELS) -> str:
    """Tempo's ``SanitizeLabelNameWithCollisions``: ``foo.bar`` -> ``foo_bar``, and a name that
    sanitizes to one of ``intrinsics`` gets a ``__`` prefix (``span.kind`` -> ``__span_kind``)."""
    sanitized = _TEMPO_INVALID_LABEL_CHARACTER.sub("_", name)
    return "__" + sanitized if sanitized in intrinsics else sanitized


def _metrics_generator_refused(section: str, refused: Mapping[str, str]) -> Any:
    """A before-validator refusing Tempo keys that cannot apply here, each with its reason."""

    def check(value: object) -> object:
        if isinstance(value, Mapping):
            found = [key for key in value if key in refused]
            if found:
                raise ValueError(
                    "; ".join(f"{section}.{key} cannot apply here: {refused[key]}" for key in found)
                )
        return value

    return check


class HistogramMode(StrEnum):
    """Tempo's ``generate_native_histograms``: classic buckets, native (OTLP exponential), or both."""

    CLASSIC = "classic"
    NATIVE = "native"
    BOTH = "both"


class IntrinsicDimensions(_Frozen):
    service: bool = True
    span_name: bool = True
    span_kind: bool = True
    status_code: bool = True
    status_message: bool = False


class DimensionMapping(_Frozen):
    """Tempo's ``dimension_mappings`` entry: one label joining the non-empty values of several attributes."""

    name: str = Field(min_length=1)
    source_labels: tuple[str, ...] = Field(min_length=1)
    join: str = ""


def _tempo_buckets(buckets: tuple[float, ...]) -> tuple[float, ...]:
    if any(not math.isfinite(b) for b in buckets):
        raise ValueError("bucket boundaries must be finite numbers of seconds")
    if any(later <= earlier for earlier, later in pairwise(buckets)):
        raise ValueError("bucket boundaries must be strictly increasing")
    return buckets


class TempoSpanMetricsConfig(_Frozen):
    """Tempo's ``processor.span_metrics`` block (modules/generator/processor/spanmetrics/config.go)."""

    histogram_buckets: tuple[float, ...] = TEMPO_SPAN_METRICS_BUCKETS
    intrinsic_dimensions: IntrinsicDimensions = IntrinsicDimensions()
    dimensions: tuple[str, ...] = ()
    dimension_mappings: tuple[DimensionMapping, ...] = ()
    enable_target_info: bool = False
    target_info_excluded_dimensions: tuple[str, ...] = ()
    enable_instance_label: bool = True
    span_multiplier_key: str = ""
    enable_tracestate_span_multiplier: bool = False
    filter_policies: tuple[FilterPolicy, ...] = ()

    @field_validator("histogram_buckets")
    @classmethod
    def _buckets(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        return _tempo_buckets(buckets)

    @model_validator(mode="after")
    def _mapping_collisions(self) -> TempoSpanMetricsConfig:
        # validation.ValidateDimensions: a mapping's label may not collide with an enabled
        # intrinsic, a dimension or another mapping (two dimensions may: the last one wins).
        intrinsics = self.intrinsic_dimensions
        seen: dict[str, str] = {
            name: f"intrinsic dimension {name!r}"
            for name in TEMPO_INTRINSIC_LABELS
            if getattr(intrinsics, name)
        }
        for dimension in self.dimensions:
            seen[tempo_label_name(dimension)] = f"dimension {dimension!r}"
        for mapping in self.dimension_mappings:
            label = tempo_label_name(mapping.name)
            if label in seen:
                raise ValueError(
                    f"dimension_mappings: {mapping.name!r} produces label {label!r} which collides "
                    f"with {seen[label]}"
                )
            seen[label] = f"dimension_mapping {mapping.name!r}"
        return self


class HostInfoConfig(_Frozen):
    """Tempo's ``processor.host_info`` block (the ``host-info`` processor)."""

    host_identifiers: tuple[str, ...] = Field(default=("k8s.node.name", "host.id"), min_length=1)
    metric_name: str = Field(default="traces_host_info", min_length=1)


_TEMPO_STORAGE = (
    "Tempo's own WAL and Prometheus remote write; this worker publishes OTLP metrics to "
    "kafka.output_topic, and the Collector's prometheusremotewrite exporter writes them to "
    "Prometheus (examples/tempo-mode.yaml), or it writes to Prometheus itself: configure the "
    "top-level remote_write section (url, headers, tenant_header)"
)
_TEMPO_RING = (
    "Tempo's cluster membership; workers share the input through the Kafka consumer group "
    "(kafka.group_id, and kafka.group_instance_id for static membership)"
)

_REFUSED_PROCESSOR: dict[str, str] = {
    "local_blocks": "TraceQL metrics read Tempo's own blocks; this worker keeps no trace blocks",
}

_REFUSED_SERVICE_GRAPHS: dict[str, str] = {
    "enabled": "in metrics_generator mode the service graphs run when metrics_generator.processors "
    "lists service-graphs (or a service-graphs-* sub-processor)",
    "subprocessors": "in metrics_generator mode list service-graphs-request, service-graphs-latency "
    "or service-graphs-connection-info in metrics_generator.processors, as in Tempo",
    "generate_native_histograms": "in metrics_generator mode write "
    "metrics_generator.generate_native_histograms, as in Tempo (it applies to both processors)",
}

_REFUSED_METRICS_GENERATOR: dict[str, str] = {
    "ring": _TEMPO_RING,
    "ring_mode": _TEMPO_RING,
    "override_ring_key": _TEMPO_RING,
    "instance_id": _TEMPO_RING,
    "storage": _TEMPO_STORAGE,
    "traces_storage": _TEMPO_STORAGE,
    "remote_write_headers": _TEMPO_STORAGE,
    "remote_write_add_org_id_header": _TEMPO_STORAGE,
    "codec": "input records are OTLP ExportTraceServiceRequest (the Collector's Kafka exporter, "
    "otlp_proto or otlp_json); Tempo's push-bytes records are not read",
    "ingest_concurrency": "records are decoded on each worker's event loop; scale out with more "
    "workers (up to one per input partition)",
    "leave_consumer_group_on_shutdown": "the worker always flushes, commits and leaves the group on "
    "SIGTERM (worker.shutdown_grace)",
    "skip_stale_backlog_on_startup": "every span in the input is counted exactly once; skipping "
    "backlog would lose spans (set the input topic's retention instead)",
    "max_active_series": "use worker.max_active_series_per_tenant (per tenant across all workers, "
    "with an overflow series; Tempo's limit is per generator instance)",
    "max_active_entities": "the entity limiter is not implemented; use "
    "worker.max_active_series_per_tenant (a series limit with an overflow series)",
    "span_name_sanitization": "DRAIN span-name sanitization is not implemented; span names are "
    "kept as they are",
    "max_cardinality_per_label": "the per-label cardinality limiter is not implemented; "
    "worker.max_active_series_per_tenant bounds the series",
    "trace_id_label_name": "exemplars are OTLP exemplars with the trace id in their trace_id "
    "field; the label name is chosen by the exporter that writes them to Prometheus",
    "native_histogram_min_reset_duration": "native histograms are cumulative OTLP exponential "
    "histograms that never reset; their resolution drops to stay within "
    "native_histogram_max_bucket_number instead",
    "disable_collection": "remove the metrics_generator block, or the processors, to emit nothing",
    "ingestion_time_range_slack": "that is the per-tenant override's name; write "
    "metrics_generator.metrics_ingestion_time_range_slack",
    "collection_interval": "that is the per-tenant override's name; write "
    "metrics_generator.registry.collection_interval",
}


class RegistryConfig(_Frozen):
    """Tempo's ``registry`` block (modules/generator/registry/config.go)."""

    collection_interval: Duration = Field(default=15.0, gt=0)
    stale_duration: Duration = Field(default=900.0, gt=0)
    external_labels: dict[str, str] = Field(default_factory=dict)
    inject_tenant_id_as: str = ""
    max_label_name_length: int = Field(default=1024, ge=0)
    max_label_value_length: int = Field(default=2048, ge=0)


class TempoProcessorConfig(_Frozen):
    span_metrics: TempoSpanMetricsConfig = TempoSpanMetricsConfig()
    service_graphs: Annotated[
        ServiceGraphsConfig,
        BeforeValidator(
            _metrics_generator_refused("metrics_generator.processor.service_graphs", _REFUSED_SERVICE_GRAPHS)
        ),
    ] = ServiceGraphsConfig()
    host_info: HostInfoConfig = HostInfoConfig()


class MetricsGeneratorConfig(_Frozen):
    """Tempo's ``metrics_generator`` block, plus the per-tenant overrides that shape its output
    (``processors``, ``generate_native_histograms``, the native-histogram options)."""

    processors: tuple[str, ...] = Field(default=(), validate_default=True)
    registry: RegistryConfig = RegistryConfig()
    processor: Annotated[
        TempoProcessorConfig,
        BeforeValidator(_metrics_generator_refused("metrics_generator.processor", _REFUSED_PROCESSOR)),
    ] = TempoProcessorConfig()
    generate_native_histograms: HistogramMode = HistogramMode.CLASSIC
    native_histogram_bucket_factor: float = Field(default=1.1, gt=1)
    native_histogram_max_bucket_number: int = Field(default=100, ge=2, le=16384)
    #: None (the default here): no span is discarded for its end time. Set: a span is counted only
    #: if it ended within this much of the time its Kafka record was written (see docs/internals.md).
    metrics_ingestion_time_range_slack: Duration | None = None
    limiter_type: Literal["series"] = "series"

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: object) -> object:
        _metrics_generator_refused("metrics_generator", _REFUSED_METRICS_GENERATOR)(data)
        if isinstance(data, Mapping) and data.get("limiter_type") == "entity":
            raise ValueError(
                "metrics_generator.limiter_type 'entity' cannot apply here: the entity limiter is not "
                "implemented; 'series' is worker.max_active_series_per_tenant"
            )
        return data

    @field_validator("processors")
    @classmethod
    def _known_processors(cls, processors: tuple[str, ...]) -> tuple[str, ...]:
        for name in processors:
            if name == "local-blocks":
                raise ValueError(f"'{name}' cannot apply here: {_REFUSED_PROCESSOR['local_blocks']}")
            if name not in TEMPO_PROCESSORS:
                raise ValueError(
                    f"'{name}' is not a known processor (allowed: {', '.join(TEMPO_PROCESSORS)})"
                )
        if not processors:
            raise ValueError(
                "list at least one processor (in Tempo this is the per-tenant override "
                f"metrics_generator.processors; allowed: {', '.join(TEMPO_PROCESSORS)})"
            )
        return processors

    @property
    def span_metrics_subprocessors(self) -> frozenset[str]:
        """``count``, ``latency``, ``size``: which span-metrics series run (instance.go
        updateSpanMetricsSubprocessors); empty when span metrics are off."""
        listed = set(self.processors)
        if "span-metrics" in listed:
            return frozenset({"count", "latency", "size"})
        return frozenset(part for part in ("count", "latency", "size") if f"span-metrics-{part}" in listed)

    @property
    def span_metrics(self) -> TempoSpanMetricsConfig:
        """``processor.span_metrics`` as Tempo runs it: listing only sub-processors resets
        ``histogram_buckets`` to the default buckets (a quirk of instance.go kept on purpose)."""
        config = self.processor.span_metrics
        listed = set(self.processors)
        if "span-metrics" not in listed and "span-metrics-latency" in listed:
            return config.model_copy(update={"histogram_buckets": TEMPO_SPAN_METRICS_BUCKETS})
        return config

    @property
    def service_graph_subprocessors(self) -> frozenset[str]:
        """``request``, ``latency``, ``connection-info`` (instance.go updateServiceGraphsSubprocessors)."""
        listed = set(self.processors)
        parts = ("request", "latency", "connection-info")
        chosen = {part for part in parts if f"service-graphs-{part}" in listed}
        if "service-graphs" in listed:
            chosen |= {"request", "latency"}
        return frozenset(chosen)

    @property
    def native_initial_scale(self) -> int:
        """The exponential histogram scale for ``native_histogram_bucket_factor``, as client_golang's
        ``pickSchema`` picks it: factor 1.1 gives scale 3 (buckets grow by 2^(1/8) = 1.09)."""
        floor = math.floor(math.log2(math.log2(self.native_histogram_bucket_factor)))
        return 8 if floor <= -8 else -4 if floor >= 4 else -floor


class KafkaConfig(_Frozen):
    """Where spans come from and metrics go; the aiokafka options users need in production."""

    bootstrap_servers: str = "localhost:9092"
    input_topic: str = "otlp_spans"
    output_topic: str = "otlp_metrics"
    dlq_topic: str = "otlp_spans_dlq"
    group_id: str = "spanmetrics"
    group_instance_id: str | None = None
    client_id: str = "spanmetrics-worker"
    tenant_header: str = "X-Scope-OrgID"
    default_tenant: str = "single-tenant"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    session_timeout: Duration = Field(default=10.0, gt=0)
    heartbeat_interval: Duration = Field(default=3.0, gt=0)
    max_poll_interval: Duration = Field(default=300.0, gt=0)
    request_timeout: Duration = Field(default=40.0, gt=0)
    #: Bytes one fetch response may carry (aiokafka's default is 50 MiB). Smaller answers cost the
    #: consumer less per record: asyncio's stream reader grows one buffer to a whole response
    #: (bench/fetch.py, 8 partitions of 2.7 kB records: 9.3 us CPU/record with 50 MiB, 4.3 with 4).
    fetch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(default=1048576, ge=1024)
    max_poll_records: int = Field(default=500, ge=1)
    #: CRC32C of every fetched record batch checked on the client (aiokafka's ``check_crcs``; the
    #: compiled record parser of worker.stream.fetch checks it with the CPU's CRC32C instruction).
    check_crcs: bool = True
    #: How long the broker may hold a fetch until ``fetch_min_bytes`` are there (``fetch_max_wait_ms``).
    fetch_max_wait: Duration = Field(default=0.5, ge=0)
    fetch_min_bytes: int = Field(default=1, ge=1)
    max_input_record_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    output_max_record_bytes: int = Field(default=1024 * 1024, ge=4096)
    #: Compression of the records the worker produces (metrics, dead letters). zstd by default:
    #: a flush's OTLP is very repetitive (every histogram point repeats its bounds), and the
    #: producer checksums what it sends, so compressing costs the worker less CPU than sending
    #: it plain (60 MB of requests: 0.11 s of producer CPU instead of 0.17-0.24 s) and the broker
    #: and network a fraction of the bytes. ``none`` for brokers before Kafka 2.1 (no zstd).
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), sasl_username and sasl_password"
            )
        return self

    @model_validator(mode="after")
    def _fetch(self) -> KafkaConfig:
        if self.fetch_max_wait >= self.request_timeout:
            raise ValueError(
                f"fetch_max_wait ({self.fetch_max_wait:g}s) must be below request_timeout "
                f"({self.request_timeout:g}s): a fetch the broker holds that long times out"
            )
        if self.fetch_min_bytes > self.fetch_max_bytes:
            raise ValueError(
                f"fetch_min_bytes ({self.fetch_min_bytes}) must not exceed fetch_max_bytes "
                f"({self.fetch_max_bytes})"
            )
        return self


class RedisConfig(_Frozen):
    """The state store: ``redis://`` or ``rediss://`` (TLS); a password may be in the URL or separate."""

    url: SecretStr = SecretStr("redis://localhost:6379/0")
    password: SecretStr | None = None
    key_prefix: str = Field(default="spanmetrics", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    socket_timeout: Duration = Field(default=5.0, gt=0)
    connect_timeout: Duration = Field(default=5.0, gt=0)
    ssl_ca_certs: str | None = None

    #: A Redis Cluster (redis.asyncio.cluster.RedisCluster): ``url`` names any node.
    cluster: bool = False
    #: More cluster nodes to start from (``host:port``), so losing the one in ``url`` does not
    #: stop a restart; only with ``cluster: true``.
    startup_nodes: Annotated[tuple[str, ...], NoDecode] = ()
    #: Cluster only: after a merge, wait up to this long for a replica to acknowledge it before the
    #: offsets go to Kafka (WAIT 1); 0 = do not wait.
    replica_wait: Duration = Field(default=1.0, ge=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: SecretStr) -> SecretStr:
        value = url.get_secret_value()
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @field_validator("startup_nodes", mode="before")
    @classmethod
    def _nodes_list(cls, value: Any) -> Any:
        """``a:7000,b:7000`` (an environment variable) is a list too."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("startup_nodes")
    @classmethod
    def _nodes(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"{node!r} is not host:port (env SPANMETRICS_REDIS__STARTUP_NODES, "
                    "comma-separated host:port entries)"
                )
        return nodes

    @model_validator(mode="after")
    def _cluster(self) -> RedisConfig:
        if self.startup_nodes and not self.cluster:
            raise ValueError(
                "startup_nodes needs cluster: true (env SPANMETRICS_REDIS__CLUSTER; allowed: true, false)"
            )
        if self.cluster:
            url = self.url.get_secret_value()
            if url.startswith("unix://"):
                raise ValueError("cluster: true needs a redis:// or rediss:// url (any cluster node)")
            database = url.split("://", 1)[1].partition("/")[2].partition("?")[0]
            if database not in ("", "0"):
                raise ValueError(
                    f"cluster: true allows database 0 only (a cluster has no other), not /{database}"
                )
        return self


#: Headers the remote-write protocol or HTTP sets itself (Prometheus' ``reservedHeaders``):
#: ``remote_write.headers`` may not set them.
REMOTE_WRITE_RESERVED_HEADERS: tuple[str, ...] = (
    "host",
    "content-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "www-authenticate",
    "accept-encoding",
    "x-prometheus-remote-write-version",
    "x-prometheus-scrape-timeout-seconds",
)

_HEADER_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _expand_header(value: object) -> object:
    """``${env:NAME}`` and ``${file:/path}`` in a header value, replaced by the variable's value or
    the file's content (without its final newline): secrets stay out of the configuration file."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        source, ref = match.group(1), match.group(2).strip()
        if source == "env":
            if ref not in os.environ:
                raise ValueError(f"environment variable {ref} is not set")
            return os.environ[ref]
        try:
            return Path(ref).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read header file {ref}: {exc.strerror or exc}") from None

    expanded = _HEADER_REFERENCE.sub(replace, value)
    if "\n" in expanded or "\r" in expanded:
        raise ValueError("a header value cannot contain a line break")
    return expanded


HeaderValue = Annotated[SecretStr, BeforeValidator(_expand_header)]


class RemoteWriteConfig(_Frozen):
    """Prometheus remote write 1.0 (``remote_write:``): every flush also goes to ``url``."""

    url: str
    #: Extra request headers (e.g. Authorization); values may be ``${env:NAME}`` or
    #: ``${file:/path}`` (also inside a longer value); never logged.
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    #: Each tenant's requests carry this header set to the tenant; "" = none.
    tenant_header: str = "X-Scope-OrgID"
    timeout: Duration = Field(default=10.0, gt=0)
    #: Samples (and native histograms) per request, as Prometheus' ``max_samples_per_send``.
    max_samples_per_send: int = Field(default=2000, ge=1)
    #: Samples held while the endpoint is slow or down; past this the oldest are dropped (counted).
    max_buffered_samples: int = Field(default=1_000_000, ge=1)
    min_backoff: Duration = Field(default=0.03, gt=0)
    max_backoff: Duration = Field(default=5.0, gt=0)
    #: https: a CA bundle to verify the endpoint with (default: the system's), a client
    #: certificate and key (mutual TLS), or no verification at all (tests only).
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure_skip_verify: bool = False

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"cannot read {path}")
        return path

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http:// or https:// URL, e.g. http://prometheus:9090/api/v1/write")
        return url

    @model_validator(mode="after")
    def _headers(self) -> RemoteWriteConfig:
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers: {name!r} is not a valid HTTP header name")
            if name.lower() in REMOTE_WRITE_RESERVED_HEADERS:
                raise ValueError(
                    f"headers: {name} is set by the remote-write protocol and cannot be overridden "
                    f"(reserved: {', '.join(REMOTE_WRITE_RESERVED_HEADERS)})"
                )
            if self.tenant_header and name.lower() == self.tenant_header.lower():
                raise ValueError(
                    f"headers: {name} is the tenant_header, set per tenant; for one fixed value set "
                    'tenant_header: "" and keep it in headers'
                )
        if self.tenant_header and not _HEADER_NAME.match(self.tenant_header):
            raise ValueError(f"tenant_header: {self.tenant_header!r} is not a valid HTTP header name")
        if self.tenant_header.lower() in REMOTE_WRITE_RESERVED_HEADERS:
            raise ValueError(f"tenant_header: {self.tenant_header} is reserved by the remote-write protocol")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (mutual TLS)")
        if self.min_backoff > self.max_backoff:
            raise ValueError(
                f"min_backoff ({self.min_backoff:g}s) must not exceed max_backoff ({self.max_backoff:g}s)"
            )
        return self


class WorkerConfig(_Frozen):
    """How the stream worker paces itself and stays within its memory bounds."""

    shutdown_grace: Duration = Field(default=25.0, gt=0)
    revoke_deadline: Duration = Field(default=10.0, gt=0)
    max_active_series_per_tenant: int = Field(default=100_000, ge=0)
    max_buffered_spans: int = Field(default=200_000, ge=1000)
    #: Label sets (a calls + duration pair is one) of its own slots whose folded state the slot
    #: owner keeps in memory between flushes, so a fold reads and decodes only what changed
    #: (about 0.5 KiB of RSS each; the rest is read from Redis at every fold). 0: none kept.
    max_kept_series: int = Field(default=100_000, ge=0)


class HttpConfig(_Frozen):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)


class LogConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Everything the worker needs, loaded once and logged once (secrets masked)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="SPANMETRICS_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    spanmetrics: SpanMetricsConfig = SpanMetricsConfig()
    servicegraphs: ServiceGraphsConfig = ServiceGraphsConfig()
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    #: Prometheus remote write, in addition to (or, with ``kafka.output_topic: ""``, instead of)
    #: the Kafka output.
    remote_write: RemoteWriteConfig | None = None
    #: Tempo's metrics-generator block: when set, the worker emits Tempo's series instead of the
    #: connector's (``spanmetrics``/``servicegraphs`` may then not be set).
    metrics_generator: MetricsGeneratorConfig | None = None

    @model_validator(mode="after")
    def _one_style(self) -> Settings:
        if self.metrics_generator is not None:
            others = [name for name in ("spanmetrics", "servicegraphs") if name in self.model_fields_set]
            if others:
                raise ValueError(
                    f"metrics_generator and {' and '.join(others)} are both configured: choose one style "
                    "(metrics_generator: Tempo's metrics-generator series; spanmetrics and servicegraphs: "
                    "the Collector connector's series with Tempo's service graphs)"
                )
        return self

    @model_validator(mode="after")
    def _outputs(self) -> Settings:
        if not self.kafka.output_topic and self.remote_write is None:
            raise ValueError(
                'kafka.output_topic is "" (Kafka output off) and remote_write is not configured: '
                "configure at least one output"
            )
        return self

    @property
    def tempo_mode(self) -> bool:
        """Whether the ``metrics_generator`` block (Tempo's series) is configured."""
        return self.metrics_generator is not None

    @property
    def flush_interval(self) -> float:
        """Seconds between checkpoints and emissions: Tempo's ``registry.collection_interval`` or
        the connector's ``metrics_flush_interval``."""
        if self.metrics_generator is not None:
            return self.metrics_generator.registry.collection_interval
        return self.spanmetrics.metrics_flush_interval

    @property
    def temporality(self) -> Temporality:
        """The output temporality: always cumulative in Tempo mode (Tempo's registry is)."""
        if self.metrics_generator is not None:
            return Temporality.CUMULATIVE
        return self.spanmetrics.aggregation_temporality

    @property
    def series_expiration(self) -> float:
        """Seconds a series may go without data before it stops being emitted (0: never):
        Tempo's ``registry.stale_duration`` or the connector's ``series_expiration``."""
        if self.metrics_generator is not None:
            return self.metrics_generator.registry.stale_duration
        return self.spanmetrics.series_expiration

    @property
    def resource_expiration(self) -> float:
        """Seconds a resource may go without spans before all its series are dropped (0: never):
        the connector's ``metrics_expiration``; Tempo has no such expiry."""
        if self.metrics_generator is not None:
            return 0.0
        return self.spanmetrics.metrics_expiration

    @property
    def overflow_attributes(self) -> Attributes:
        """The attributes of the series a tenant's new series fold into past
        ``worker.max_active_series_per_tenant``: Tempo's ``metric_overflow="true"`` in Tempo mode,
        else the connector's ``otel.metric.overflow=true``."""
        return TEMPO_OVERFLOW if self.metrics_generator is not None else CONNECTOR_OVERFLOW

    @property
    def exponential_max_size(self) -> int:
        """Buckets an exponential histogram keeps before it loses resolution."""
        if self.metrics_generator is not None:
            return self.metrics_generator.native_histogram_max_bucket_number
        exponential = self.spanmetrics.histogram.exponential
        return exponential.max_size if exponential else 160

    @property
    def service_graphs(self) -> ServiceGraphsConfig:
        """The service-graph options in effect: ``servicegraphs``, or in Tempo mode
        ``processor.service_graphs`` enabled by ``processors``."""
        generator = self.metrics_generator
        if generator is None:
            return self.servicegraphs
        config = generator.processor.service_graphs
        parts = generator.service_graph_subprocessors
        update: dict[str, Any] = {
            "enabled": bool(parts),
            "generate_native_histograms": generator.generate_native_histograms.value,
        }
        if parts:
            order = ("request", "latency", "connection-info")
            update["subprocessors"] = tuple(f"service-graphs-{part}" for part in order if part in parts)
        return config.model_copy(update=update)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the YAML file, which arrives as init arguments.
        return env_settings, init_settings

    @property
    def warnings(self) -> tuple[tuple[str, str, object], ...]:
        """``(option, why, value)`` for each configured value that is accepted with no effect."""
        return self.spanmetrics.warnings + self.service_graphs.warnings


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _known_options(location: Sequence[object]) -> list[str]:
    """The option names allowed next to an unknown one at ``location`` (empty when unsure)."""
    model: type[BaseModel] = Settings
    for part in location[:-1]:
        if isinstance(part, int):  # an item of a list option: its type was taken below
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if get_origin(annotation) is tuple:  # tuple[Dimension, ...]
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):  # MetricsGeneratorConfig | None
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _format_error(error: ValidationError) -> str:
    """One line per problem: ``spanmetrics.histogram.unit: Input should be 'ms' or 's' (got 'us')``."""
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict | list | tuple) or given is None else f" (got {given!r})"
        if item["type"] == "extra_forbidden":
            known = _known_options(item["loc"])
            message = f"unknown option (allowed: {', '.join(known)})" if known else "unknown option"
        parts.append(f"{location}: {message}{shown}" if location else f"{message}{shown}")
    return "invalid configuration: " + "; ".join(parts)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message squeezed into one line: the problem and where it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_config(path: str | Path | None = None) -> Settings:
    """Read the YAML file (optional), apply environment overrides, validate, and freeze.

    Raises ConfigError with a one-line message naming every offending option.
    """
    environ = os.environ
    document: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
        document = loaded
    overrides: dict[str, Any] = {}
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        overrides["kafka"] = {"bootstrap_servers": environ["KAFKA_BOOTSTRAP_SERVERS"]}
    if environ.get("REDIS_URL"):
        overrides["redis"] = {"url": environ["REDIS_URL"]}
    document = _deep_merge(document, overrides)
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except ValueError as exc:  # a nested env value that is not valid JSON, for example
        raise ConfigError(f"invalid configuration: {exc}") from None
