"""One Tempo-mode configuration (service graphs and span metrics) over Tempo's queue-database trace.

upstream: modules/generator/processor/servicegraphs/servicegraphs_test.go TestServiceGraphs
(testdata/trace-with-queue-database.json, buckets [0.04], dimensions [beast, god], messaging
histogram on; the reference notes' A2), and spanmetrics.go for the span series of the same spans.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.unit.processors.tempospanmetrics.helpers import TempoRun, labels, resources, scopes, series, values
from tests.unit.processors.tempospanmetrics.queue_database import SPANS, queue_database_trace
from worker.cli import cli
from worker.otlp.json_codec import metrics_from_json, traces_to_json

GENERATOR: dict[str, Any] = {
    "processors": ["service-graphs", "span-metrics"],
    "processor": {
        "service_graphs": {
            "histogram_buckets": [0.04],
            "dimensions": ["beast", "god"],
            "enable_messaging_system_latency_histogram": True,
        }
    },
}

REQUESTER_SERVER = labels(
    client="mythical-requester", server="mythical-server", beast="manticore", god="zeus"
)
DATABASE = labels(client="mythical-server", server="postgres", connection_type="database")
MESSAGING = labels(
    client="mythical-requester", server="mythical-recorder", connection_type="messaging_system"
)

KINDS = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"]
KINDS += ["SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
STATUSES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def expected_calls() -> Counter[Any]:
    """One span-metrics series per (service, span name, kind, status), counted."""
    found: Counter[Any] = Counter()
    for resource, name, kind, *_, status, _attributes in SPANS:
        service = dict(resource)["service.name"]
        found[
            labels(service=service, span_name=name, span_kind=KINDS[kind], status_code=STATUSES[status])
        ] += 1
    return found


def check(out: Any) -> None:
    assert values(out, "traces_service_graph_request_total") == {
        REQUESTER_SERVER: 1,
        DATABASE: 1,
        MESSAGING: 1,
    }
    assert not any(values(out, "traces_service_graph_request_failed_total").values())
    client = series(out, "traces_service_graph_request_client_seconds")
    server = series(out, "traces_service_graph_request_server_seconds")
    assert client[REQUESTER_SERVER].sum == pytest.approx(0.045834496)
    assert list(client[REQUESTER_SERVER].bucket_counts) == [0, 1]
    assert server[REQUESTER_SERVER].sum == pytest.approx(0.029986048)
    assert list(server[REQUESTER_SERVER].bucket_counts) == [1, 0]
    # A database edge completes on the client span: the server latency is the client's.
    assert client[DATABASE].sum == server[DATABASE].sum == pytest.approx(0.023781376)
    assert client[MESSAGING].sum == pytest.approx(0.000068864)
    assert server[MESSAGING].sum == pytest.approx(0.000699392)
    [messaging] = series(out, "traces_service_graph_request_messaging_system_seconds").values()
    assert (messaging.count, messaging.sum) == (1, pytest.approx(0.0098816))
    # Tempo never writes these (its docs list them; they come from the Grafana Agent).
    assert series(out, "traces_service_graph_unpaired_spans_total") == {}
    assert series(out, "traces_service_graph_dropped_spans_total") == {}
    # No resource attributes and no scope name: nothing for an exporter to turn into labels.
    assert resources(out) == [{}, {}] and scopes(out) == {""}
    # The span metrics of the same spans, with Tempo's names and labels.
    calls = values(out, "traces_spanmetrics_calls_total")
    assert calls == dict(expected_calls())
    assert sum(calls.values()) == 19
    assert set(values(out, "traces_spanmetrics_latency")) == set(calls)
    assert set(values(out, "traces_spanmetrics_size_total")) == set(calls)


def test_service_graph_and_span_series_through_one_tempo_config() -> None:
    check(TempoRun(GENERATOR).run(queue_database_trace()))


def test_spanmetrics_process_reads_a_tempo_config(tmp_path: Path) -> None:
    # `spanmetrics process` with the metrics_generator block: the same series as the worker's path.
    config = tmp_path / "tempo.yaml"
    config.write_text(yaml.safe_dump({"metrics_generator": GENERATOR}))
    trace = tmp_path / "trace-with-queue-database.json"
    trace.write_text(traces_to_json(queue_database_trace()))
    result = CliRunner().invoke(cli, ["process", "--config", str(config), str(trace)])
    assert result.exit_code == 0, result.output
    check(metrics_from_json(result.stdout))


def test_connection_info_and_native_histograms_from_the_tempo_block() -> None:
    # upstream: instance.go updateServiceGraphsSubprocessors (connection-info added to a bare
    # service-graphs) and config.go copyWithOverrides (generate_native_histograms for both processors).
    generator = {
        **GENERATOR,
        "processors": ["service-graphs", "service-graphs-connection-info", "span-metrics-latency"],
        "generate_native_histograms": "both",
    }
    run = TempoRun(generator)
    assert run.settings.service_graphs.subprocessors == (
        "service-graphs-request",
        "service-graphs-latency",
        "service-graphs-connection-info",
    )
    out = run.run(queue_database_trace())
    info = series(out, "traces_service_graph_connection_info")
    assert set(info) == {REQUESTER_SERVER, DATABASE, MESSAGING}
    assert values(out, "traces_service_graph_request_total") == {
        REQUESTER_SERVER: 1,
        DATABASE: 1,
        MESSAGING: 1,
    }
    native = series(out, "traces_service_graph_request_client_seconds", "exponential_histogram")
    assert native[REQUESTER_SERVER].count == 1
    spans = series(out, "traces_spanmetrics_latency", "exponential_histogram")
    assert sum(point.count for point in spans.values()) == 19
    assert series(out, "traces_spanmetrics_calls_total") == {}
    assert scopes(out) == {""}
