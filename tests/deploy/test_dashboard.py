"""The Grafana dashboard: valid JSON whose every PromQL query uses only series the workers produce.

The Prometheus names come from the OTLP metrics the worker really emits (the span-metrics
processor's descriptors for deploy/worker-config.yaml, and the service-graph metrics) put through
the Collector's Prometheus translation, reimplemented below from prometheus/otlptranslator
(``MetricNamer.Build`` with suffixes on, no UTF-8; ``normalize_label``), which the
prometheusremotewrite exporter uses with its default settings:

* a metric name is split into tokens on every character outside ``[a-zA-Z0-9:]``;
* the unit's Prometheus word (``ms`` -> ``milliseconds``, ``s`` -> ``seconds``, ``1`` -> nothing,
  ``{annotations}`` dropped, ``a/b`` -> ``a_per_b``) is appended unless it is already a token;
* a monotonic sum gets ``total`` (moved to the end if present); a gauge with unit ``1`` gets ``ratio``;
* tokens are joined with ``_``; histograms become ``_bucket`` (label ``le``), ``_sum``, ``_count``;
* attribute names have every character outside ``[a-zA-Z0-9_]`` replaced by ``_``
  (``service.name`` -> ``service_name``), and get ``key_`` in front when they start with a digit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from devtools import top
from tests.deploy.helpers import DASHBOARD, DEPLOY, REPO, WORKER_CONFIG, load_yaml
from worker.config import RESERVED_DIMENSIONS, load_config
from worker.model.series import MetricKind
from worker.processors.pipeline import Pipeline
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

# --------------------------------------------------------------------------------------------------
# The Collector's OTLP -> Prometheus naming
# --------------------------------------------------------------------------------------------------

_UNIT_WORDS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
    "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "TBy": "terabytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
    "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
_PER_UNIT_WORDS = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


@dataclass(frozen=True)
class OtlpMetric:
    name: str
    kind: str  # "counter" (monotonic sum), "gauge", "histogram"
    unit: str = ""


def _clean_unit(word: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_]", "_", word)).strip("_")


def prometheus_name(metric: OtlpMetric) -> str:
    """otlptranslator's normalizeName (WithMetricSuffixes=true, UTF8Allowed=false), no namespace."""
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]", metric.name) if t]
    main, _, per = metric.unit.partition("/")
    main, per = main.strip(), per.strip()
    main_word = "" if not main or "{" in main or "}" in main else _UNIT_WORDS.get(main, main)
    per_word = "" if not per or "{" in per or "}" in per else "per_" + _PER_UNIT_WORDS.get(per, per)
    main_word, per_word = _clean_unit(main_word), _clean_unit(per_word)
    if main_word in tokens:
        main_word = ""
    if per_word == "per" or per_word in tokens:
        per_word = ""
    if main_word:
        tokens.append(main_word)
    if per_word:
        tokens.append(per_word)
    if metric.kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if metric.unit == "1" and metric.kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    name = "_".join(tokens)
    return "_" + name if name[:1].isdigit() else name


def prometheus_label(attribute: str) -> str:
    label = re.sub(r"[^a-zA-Z0-9_]", "_", attribute)
    return "key_" + label if label[:1].isdigit() else label


def prometheus_series(metric: OtlpMetric) -> set[str]:
    """Every series name a metric becomes in Prometheus."""
    base = prometheus_name(metric)
    if metric.kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (OtlpMetric("calls", "counter"), "calls_total"),
        (OtlpMetric("duration", "histogram", "ms"), "duration_milliseconds"),
        (OtlpMetric("duration", "histogram", "s"), "duration_seconds"),
        (OtlpMetric("x.calls", "counter"), "x_calls_total"),
        (OtlpMetric("traces_service_graph_request_total", "counter"), "traces_service_graph_request_total"),
        (
            OtlpMetric("traces_service_graph_request_server_seconds", "histogram", "s"),
            "traces_service_graph_request_server_seconds",
        ),
        (
            OtlpMetric("traces_service_graph_request_server_seconds", "histogram"),
            "traces_service_graph_request_server_seconds",
        ),
        (
            OtlpMetric("http.server.request.duration", "histogram", "s"),
            "http_server_request_duration_seconds",
        ),
        (OtlpMetric("requests.count", "counter", "1"), "requests_count_total"),
        (OtlpMetric("memory.usage", "gauge", "By"), "memory_usage_bytes"),
        (OtlpMetric("cpu.utilization", "gauge", "1"), "cpu_utilization_ratio"),
        (OtlpMetric("speed", "gauge", "m/s"), "speed_meters_per_second"),
        (OtlpMetric("requests", "counter", "{request}"), "requests_total"),
    ],
)
def test_prometheus_translation(metric: OtlpMetric, expected: str) -> None:
    """The reimplementation against the examples of otlptranslator's documentation and tests."""
    assert prometheus_name(metric) == expected


def test_label_translation() -> None:
    assert [prometheus_label(a) for a in RESERVED_DIMENSIONS] == [
        "service_name", "span_name", "span_kind", "status_code",
    ]  # fmt: skip
    assert prometheus_label("http.response.status_code") == "http_response_status_code"
    assert prometheus_label("1st") == "key_1st"


# --------------------------------------------------------------------------------------------------
# What the workers emit, as Prometheus sees it
# --------------------------------------------------------------------------------------------------

#: Tempo's service-graph metrics as the worker emits them (servicegraphs.enabled): request
#: counters and client/server latency histograms in seconds, labels client, server, connection_type.
SERVICE_GRAPH_METRICS = (
    OtlpMetric("traces_service_graph_request_total", "counter"),
    OtlpMetric("traces_service_graph_request_failed_total", "counter"),
    OtlpMetric("traces_service_graph_request_server_seconds", "histogram", "s"),
    OtlpMetric("traces_service_graph_request_client_seconds", "histogram", "s"),
)
SERVICE_GRAPH_LABELS = {"client", "server", "connection_type"}


def _emitted() -> tuple[set[str], set[str]]:
    """(series names, label names) the compose stack's workers produce in Prometheus."""
    settings = load_config(WORKER_CONFIG)
    processor = SpanMetricsProcessor(settings.spanmetrics)
    kinds = {MetricKind.SUM: "counter", MetricKind.HISTOGRAM: "histogram"}
    metrics = [OtlpMetric(d.name, kinds[d.kind], d.unit) for d in processor.descriptors()]
    assert settings.servicegraphs.enabled
    metrics += SERVICE_GRAPH_METRICS
    series = {name for metric in metrics for name in prometheus_series(metric)}
    dimensions = [*RESERVED_DIMENSIONS, *(d.name for d in settings.spanmetrics.dimensions)]
    labels = {prometheus_label(name) for name in dimensions}
    # le on buckets; job/instance from the resource's service.name/service.instance.id.
    labels |= SERVICE_GRAPH_LABELS | {"le", "job", "instance"}
    return series | {"target_info"}, labels


EMITTED_SERIES, EMITTED_LABELS = _emitted()


def test_emitted_names() -> None:
    assert {"calls_total", "duration_milliseconds_bucket", "duration_milliseconds_count"} <= EMITTED_SERIES
    assert "traces_service_graph_request_server_seconds_bucket" in EMITTED_SERIES
    # The repository's own reader of the output topic uses the same service-graph names.
    for name in (top.SG_REQUESTS, top.SG_FAILED, top.SG_SERVER_SECONDS):
        assert {name, f"{name}_bucket"} & EMITTED_SERIES


# --------------------------------------------------------------------------------------------------
# PromQL, parsed with regular expressions (enough for the queries a dashboard holds)
# --------------------------------------------------------------------------------------------------

_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp", "clamp_max", "clamp_min", "count",
    "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "max", "max_over_time", "min", "min_over_time", "quantile", "rate", "round",
    "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time", "topk", "bottomk", "vector",
}  # fmt: skip
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")


@dataclass
class Query:
    metrics: list[str]
    labels: set[str]
    grouping: set[str]
    functions: set[str]
    range_metrics: list[str]


def parse_promql(expr: str) -> Query:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals carry no names
    labels: set[str] = set()
    for inside in _MATCHERS.findall(text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", inside))
    grouping: set[str] = set()
    for _, inside in _GROUPING.findall(text):
        grouping |= {name.strip() for name in inside.split(",") if name.strip()}
    # Metrics used as range vectors: name, optional matchers, then [range].
    range_metrics = re.findall(r"([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*\[", text)
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    functions = set(re.findall(r"([a-zA-Z_]\w*)\s*\(", text))
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)", text)
    metrics = [w for w in words if w not in functions and w not in _KEYWORDS]
    return Query(metrics, labels | grouping, grouping, functions, range_metrics)


def test_parse_promql() -> None:
    query = parse_promql(
        "histogram_quantile(0.95, sum by (le, service_name) (rate(duration_milliseconds_bucket"
        '{service_name=~"$service", status_code!="x{y}"}[$__rate_interval])))\n/\nsum(rate(calls_total[5m]))'
    )
    assert query.metrics == ["duration_milliseconds_bucket", "calls_total"]
    assert query.labels == {"le", "service_name", "status_code"}
    assert query.functions == {"histogram_quantile", "sum", "rate"}
    assert query.range_metrics == ["duration_milliseconds_bucket", "calls_total"]


# --------------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _panels(dashboard) for target in panel.get("targets", [])]


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "spanmetrics-red"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']}: no query"
    types = {panel["type"] for panel in panels}
    assert {"timeseries", "table"} <= types


def test_datasource_is_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    provisioned = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == provisioned["type"]
    assert datasource["current"]["value"] == provisioned["uid"]
    for title, target in _targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title


def test_red_and_service_graph_panels(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(target["expr"] for _, target in _targets(dashboard))
    assert "calls_total" in exprs
    assert 'status_code="STATUS_CODE_ERROR"' in exprs
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, " in exprs
    assert "traces_service_graph_request_total" in exprs
    assert "traces_service_graph_request_failed_total" in exprs
    titles = {panel["title"] for panel in _panels(dashboard)}
    assert any("Service graph" in title for title in titles)


def query_problems(
    expr: str, legend: str = "", *, series: set[str] | None = None, labels: set[str] | None = None
) -> list[str]:
    """What is wrong with one dashboard query (empty when nothing is); ``series`` and ``labels``
    are the emitted names (the compose stack's connector-mode workers' by default)."""
    series = EMITTED_SERIES if series is None else series
    labels = EMITTED_LABELS if labels is None else labels
    query = parse_promql(expr)
    problems = []
    if not query.metrics:
        problems.append("no metric")
    if unknown := set(query.metrics) - series:
        problems.append(f"series not emitted: {sorted(unknown)}")
    if unknown := query.labels - labels:
        problems.append(f"labels not emitted: {sorted(unknown)}")
    if unknown := query.functions - _FUNCTIONS:
        problems.append(f"unknown functions: {sorted(unknown)}")
    # Every series is a counter (or a histogram's counters): only rate() over a range makes sense.
    if sorted(query.range_metrics) != sorted(query.metrics) or "rate" not in query.functions:
        problems.append("a counter is used without rate() over a range")
    if "histogram_quantile" in query.functions and (
        "le" not in query.grouping or not all(m.endswith("_bucket") for m in query.metrics)
    ):
        problems.append("histogram_quantile needs _bucket series aggregated by le")
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label not in query.grouping:
            problems.append(f"legend uses {label}, which the query does not keep")
    return problems


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(calls[5m]))", "series not emitted"),
        ("sum(rate(duration_bucket[5m]))", "series not emitted"),
        ("sum(rate(duration_ms_bucket[5m]))", "series not emitted"),
        ('sum(rate(calls_total{service="a"}[5m]))', "labels not emitted"),
        ("sum by (service) (rate(calls_total[5m]))", "labels not emitted"),
        ("sum(calls_total)", "without rate()"),
        ("histogram_quantile(0.9, sum by (service_name) (rate(duration_milliseconds_bucket[5m])))", "by le"),
        ("histogram_quantile(0.9, sum by (le) (rate(duration_milliseconds_sum[5m])))", "by le"),
    ],
)
def test_query_check_catches(expr: str, problem: str) -> None:
    """The check is not vacuous: names without the translation's suffixes, or OTLP spellings, fail."""
    assert any(problem in found for found in query_problems(expr))


def test_legend_check() -> None:
    expr = "sum by (service_name) (rate(calls_total[5m]))"
    assert query_problems(expr, "{{service_name}}") == []
    assert query_problems(expr, "{{span_name}}")


def test_queries_use_only_emitted_series_and_labels(dashboard: dict[str, Any]) -> None:
    problems = {
        f"{title} [{target['refId']}]": found
        for title, target in _targets(dashboard)
        if (found := query_problems(target["expr"], target.get("legendFormat", "")))
    }
    assert problems == {}


def test_template_variables_use_emitted_names(dashboard: dict[str, Any]) -> None:
    pattern = re.compile(r"^label_values\((?:([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s*,\s*)?([a-zA-Z_]\w*)\)$")
    queries = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in queries} == {"service", "span_kind", "operation"}
    prefix = _namespace_variable(dashboard)["current"]["value"]
    for variable in queries:
        match = pattern.match(variable["query"]["query"].replace("${namespace}", prefix))
        assert match, variable["query"]
        metric, matchers, label = match.groups()
        assert metric in EMITTED_SERIES
        assert label in EMITTED_LABELS
        if matchers:
            assert parse_promql(matchers).labels <= EMITTED_LABELS
        assert variable["definition"] == variable["query"]["query"]


def test_variables_are_used(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(target["expr"] for _, target in _targets(dashboard))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert f"${variable['name']}" in exprs, f"variable {variable['name']} is never used"


# --------------------------------------------------------------------------------------------------
# The Tempo-mode dashboard (metrics_generator: Tempo's series names)
# --------------------------------------------------------------------------------------------------

TEMPO_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tempo-mode.json"
TEMPO_CONFIG = REPO / "examples" / "tempo-mode.yaml"


def _tempo_emitted() -> tuple[set[str], set[str]]:
    """(series names, label names) in Prometheus for examples/tempo-mode.yaml, from the
    descriptors the worker's pipeline really uses and the same translation as above."""
    settings = load_config(TEMPO_CONFIG)
    kinds = {MetricKind.SUM: "counter", MetricKind.HISTOGRAM: "histogram", MetricKind.INFO: "gauge"}
    descriptors = Pipeline(settings).descriptors().values()
    metrics = [OtlpMetric(d.name, kinds[d.kind], d.unit) for d in descriptors if d.kind in kinds]
    series = {name for metric in metrics for name in prometheus_series(metric)}
    # Tempo's labels: intrinsics, job/instance (target info), le, the service-graph labels.
    labels = {"service", "span_name", "span_kind", "status_code", "job", "instance", "le"}
    return series, labels | SERVICE_GRAPH_LABELS


TEMPO_SERIES, TEMPO_LABELS = _tempo_emitted()


@pytest.fixture(scope="module")
def tempo_dashboard() -> dict[str, Any]:
    document = json.loads(TEMPO_DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_tempo_names_in_prometheus() -> None:
    # Exactly Tempo's Prometheus names, whatever add_metric_suffixes says (no units, *_total).
    assert {
        "traces_spanmetrics_calls_total",
        "traces_spanmetrics_latency_bucket",
        "traces_spanmetrics_latency_sum",
        "traces_spanmetrics_latency_count",
        "traces_spanmetrics_size_total",
        "traces_target_info",
        "traces_service_graph_request_total",
        "traces_service_graph_request_failed_total",
        "traces_service_graph_request_server_seconds_bucket",
        "traces_service_graph_request_client_seconds_bucket",
    } <= TEMPO_SERIES
    assert not {name for name in TEMPO_SERIES if "seconds_seconds" in name or name.endswith("total_total")}


def test_tempo_dashboard_is_the_connector_dashboard_on_tempo_names(
    dashboard: dict[str, Any], tempo_dashboard: dict[str, Any]
) -> None:
    assert tempo_dashboard["uid"] == "spanmetrics-tempo-red" != dashboard["uid"]
    assert [p["title"] for p in _panels(tempo_dashboard)] == [p["title"] for p in _panels(dashboard)]
    assert len(_targets(tempo_dashboard)) == len(_targets(dashboard))
    variables = {v["name"] for v in tempo_dashboard["templating"]["list"]}
    # Tempo's names are fixed (no namespace option in Tempo mode): no prefix variable there.
    assert variables == {v["name"] for v in dashboard["templating"]["list"]} - {"namespace"}
    # Latency panels are in seconds (Tempo's histogram), not milliseconds.
    units = {p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in _panels(tempo_dashboard)}
    assert "ms" not in units and "s" in units


def test_tempo_dashboard_queries_use_only_tempo_series_and_labels(tempo_dashboard: dict[str, Any]) -> None:
    problems = {
        f"{title} [{target['refId']}]": found
        for title, target in _targets(tempo_dashboard)
        if (
            found := query_problems(
                target["expr"], target.get("legendFormat", ""), series=TEMPO_SERIES, labels=TEMPO_LABELS
            )
        )
    }
    assert problems == {}
    # And the connector's names are not there.
    exprs = " ".join(target["expr"] for _, target in _targets(tempo_dashboard))
    assert "duration_milliseconds" not in exprs and "service_name" not in exprs
    assert query_problems("sum(rate(calls_total[5m]))", series=TEMPO_SERIES, labels=TEMPO_LABELS)


def test_tempo_dashboard_variables(tempo_dashboard: dict[str, Any]) -> None:
    pattern = re.compile(r"^label_values\((?:([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s*,\s*)?([a-zA-Z_]\w*)\)$")
    for variable in tempo_dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = pattern.match(variable["query"]["query"])
        assert match, variable["query"]
        metric, matchers, label = match.groups()
        assert metric in TEMPO_SERIES and label in TEMPO_LABELS
        if matchers:
            assert parse_promql(matchers).labels <= TEMPO_LABELS


# --------------------------------------------------------------------------------------------------
# The configured namespace: a dashboard variable, not bare names
# --------------------------------------------------------------------------------------------------


def _namespace_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
    return variable


def namespace_prefix(namespace: str) -> str:
    """The Prometheus prefix of the connector's metrics for a ``spanmetrics.namespace``."""
    return (
        prometheus_name(OtlpMetric(f"{namespace}.calls", "gauge")).removesuffix("calls") if namespace else ""
    )


def test_namespace_prefix() -> None:
    assert namespace_prefix("") == ""
    assert namespace_prefix("traces.span.metrics") == "traces_span_metrics_"


def test_the_namespace_variable_defaults_to_the_compose_workers_namespace(dashboard: dict[str, Any]) -> None:
    variable = _namespace_variable(dashboard)
    assert variable["type"] == "textbox"
    namespace = load_config(WORKER_CONFIG).spanmetrics.namespace
    assert variable["current"]["value"] == namespace_prefix(namespace)


def test_span_metric_names_always_carry_the_namespace_variable(dashboard: dict[str, Any]) -> None:
    texts = [target["expr"] for _, target in _targets(dashboard)]
    texts += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    bare = [text for text in texts if re.search(r"(?<![\w}])(calls_total|duration_(milli)?seconds_)", text)]
    assert bare == []
    assert sum("${namespace}calls_total" in text for text in texts) >= 5


def test_queries_follow_another_namespace(dashboard: dict[str, Any]) -> None:
    """With spanmetrics.namespace set, the variable's prefix makes every query name emitted series."""
    settings = load_config(WORKER_CONFIG)
    processor = SpanMetricsProcessor(
        settings.spanmetrics.model_copy(update={"namespace": "traces.span.metrics"})
    )
    kinds = {MetricKind.SUM: "counter", MetricKind.HISTOGRAM: "histogram"}
    series = {
        name
        for d in processor.descriptors()
        for name in prometheus_series(OtlpMetric(d.name, kinds[d.kind], d.unit))
    }
    series |= {name for metric in SERVICE_GRAPH_METRICS for name in prometheus_series(metric)}
    prefix = namespace_prefix("traces.span.metrics")
    problems = {
        f"{title} [{target['refId']}]": found
        for title, target in _targets(dashboard)
        if (found := query_problems(target["expr"].replace("${namespace}", prefix), series=series))
    }
    assert problems == {}
    # Not vacuous: without the prefix, the span-metric queries name series that do not exist.
    assert any(
        query_problems(target["expr"].replace("${namespace}", ""), series=series)
        for _, target in _targets(dashboard)
    )
