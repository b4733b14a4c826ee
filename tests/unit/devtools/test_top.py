"""The math behind ``spanmetrics top``: rates, error ratios, histogram quantiles, grouping, rendering.

No servers: the series are built by hand or from real ``ExportMetricsServiceRequest`` messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from devtools.top import (
    MetricsState,
    Point,
    SeriesHistory,
    counter_increase,
    edge_rows,
    histogram_increase,
    histogram_quantile,
    red_rows,
    render_edges,
    render_red,
    render_screen,
)

S = 1_000_000_000  # one second in nanoseconds
T0 = 1_700_000_000 * S
BOUNDS = (1.0, 2.0, 4.0)


def _calls(
    service: str,
    name: str,
    values: Sequence[tuple[int, float]],
    *,
    status: str = "STATUS_CODE_UNSET",
    kind: str = "SPAN_KIND_SERVER",
    tenant: str = "",
    pod: str = "a",
) -> SeriesHistory:
    """A calls series with the given (time_ns, cumulative value) observations."""
    attrs = {"service.name": service, "span.name": name, "span.kind": kind, "status.code": status, "pod": pod}
    history = SeriesHistory("calls", "", tenant, attrs, Point(values[0][0], T0, values[0][1]))
    for time_ns, value in values[1:]:
        history.observe(Point(time_ns, T0, value))
    return history


def _duration(
    service: str, name: str, observations: Sequence[tuple[int, Sequence[int]]], *, unit: str = "ms"
) -> SeriesHistory:
    attrs = {"service.name": service, "span.name": name, "span.kind": "SPAN_KIND_SERVER"}

    def point(time_ns: int, buckets: Sequence[int]) -> Point:
        return Point(time_ns, T0, float(sum(buckets)), BOUNDS, tuple(buckets))

    history = SeriesHistory("duration", unit, "", attrs, point(*observations[0]))
    for time_ns, buckets in observations[1:]:
        history.observe(point(time_ns, buckets))
    return history


# -- counters -----------------------------------------------------------------------------------


def test_counter_increase_is_difference_over_elapsed_time() -> None:
    assert counter_increase(Point(T0, T0, 10), Point(T0 + 2 * S, T0, 30)) == (20, 2.0)


def test_counter_increase_needs_two_observations() -> None:
    assert counter_increase(None, Point(T0, T0, 10)) is None
    assert counter_increase(Point(T0, T0, 10), Point(T0, T0, 10)) is None


def test_counter_reset_counts_the_new_value() -> None:
    assert counter_increase(Point(T0, T0, 50), Point(T0 + S, T0, 7)) == (7, 1.0)
    # A new start time is a reset too, even if the value happens to be larger.
    assert counter_increase(Point(T0, T0, 5), Point(T0 + S, T0 + S // 2, 9)) == (9, 1.0)


def test_series_ignores_older_and_duplicate_observations() -> None:
    history = _calls("a", "op", [(T0, 1), (T0 + 2 * S, 5)])
    assert not history.observe(Point(T0 + S, T0, 3))  # late record from the lookback
    assert not history.observe(Point(T0 + 2 * S, T0, 5))  # the same flush again
    assert history.previous is not None
    assert (history.previous.value, history.latest.value) == (1, 5)


# -- histograms ---------------------------------------------------------------------------------


def test_quantile_interpolates_within_the_bucket() -> None:
    # cumulative 1, 3, 4, 4: the median (rank 2) is half-way into (1, 2].
    assert histogram_quantile(0.5, BOUNDS, [1, 2, 1, 0]) == pytest.approx(1.5)
    # rank 3.96 is 96 % into (2, 4].
    assert histogram_quantile(0.99, BOUNDS, [1, 2, 1, 0]) == pytest.approx(3.92)


def test_quantile_first_bucket_starts_at_zero() -> None:
    assert histogram_quantile(0.5, BOUNDS, [4, 0, 0, 0]) == pytest.approx(0.5)
    assert histogram_quantile(0.0, BOUNDS, [4, 0, 0, 0]) == 0.0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.9, BOUNDS, [0, 0, 1, 3]) == 4.0


def test_quantile_edge_cases_follow_prometheus() -> None:
    assert math.isnan(histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0]))
    assert histogram_quantile(-0.1, BOUNDS, [1, 0, 0, 0]) == -math.inf
    assert histogram_quantile(1.1, BOUNDS, [1, 0, 0, 0]) == math.inf
    assert histogram_quantile(0.5, (-1.0, 1.0), [3, 0, 0]) == -1.0  # non-positive first bound
    assert histogram_quantile(1.0, BOUNDS, [1, 2, 1, 0]) == 4.0
    with pytest.raises(ValueError):
        histogram_quantile(0.5, BOUNDS, [1, 2])


def test_quantile_matches_a_uniform_distribution() -> None:
    bounds = tuple(float(b) for b in range(10, 101, 10))
    counts = [10] * 10 + [0]  # 100 observations spread evenly over 0..100
    for q in (0.25, 0.5, 0.95):
        assert histogram_quantile(q, bounds, counts) == pytest.approx(q * 100)


def test_histogram_increase_subtracts_buckets() -> None:
    prev = Point(T0, T0, 4, BOUNDS, (1, 2, 1, 0))
    cur = Point(T0 + S, T0, 9, BOUNDS, (1, 5, 2, 1))
    assert histogram_increase(prev, cur) == (BOUNDS, [0, 3, 1, 1])
    assert histogram_increase(None, cur) is None


def test_histogram_reset_or_new_bounds_take_the_new_buckets() -> None:
    prev = Point(T0, T0, 9, BOUNDS, (1, 5, 2, 1))
    assert histogram_increase(prev, Point(T0 + S, T0, 2, BOUNDS, (0, 2, 0, 0))) == (BOUNDS, [0, 2, 0, 0])
    other = Point(T0 + S, T0, 3, (5.0, 10.0), (1, 1, 1))
    assert histogram_increase(prev, other) == ((5.0, 10.0), [1, 1, 1])


# -- RED rows -----------------------------------------------------------------------------------


def test_red_rows_sum_rates_and_compute_error_ratio() -> None:
    series = [
        _calls("frontend", "GET /", [(T0, 100), (T0 + 2 * S, 118)]),  # 9/s
        _calls("frontend", "GET /", [(T0, 10), (T0 + 2 * S, 12)], status="STATUS_CODE_ERROR"),  # 1/s
        _calls("frontend", "GET /", [(T0, 0), (T0 + 4 * S, 20)], pod="b"),  # 5/s, another pod
        _calls("checkout", "POST /api/orders", [(T0, 3)]),  # one observation: no rate yet
    ]
    rows = {(r.service, r.span_name): r for r in red_rows(series)}
    row = rows[("frontend", "GET /")]
    assert row.rate == pytest.approx(15.0)
    assert row.error_ratio == pytest.approx(2 / 40)
    assert row.kinds == "SERVER"
    pending = rows[("checkout", "POST /api/orders")]
    assert pending.rate is None and pending.error_ratio is None


def test_red_rows_quantiles_come_from_histogram_deltas() -> None:
    # Old observations were all fast; the last interval added four in (2, 4].
    series = [
        _duration("frontend", "GET /", [(T0, (100, 0, 0, 0)), (T0 + 2 * S, (100, 0, 4, 0))]),
        _duration("frontend", "GET /", [(T0, (0, 0, 0, 0)), (T0 + 2 * S, (0, 0, 0, 0))]),
    ]
    (row,) = red_rows(series)
    assert row.p50_ms == pytest.approx(3.0)
    assert row.p99_ms == pytest.approx(3.98)
    assert row.rate is None  # no calls series


def test_red_rows_convert_seconds_to_milliseconds() -> None:
    series = [_duration("a", "op", [(T0, (0, 0, 0, 0)), (T0 + S, (4, 0, 0, 0))], unit="s")]
    (row,) = red_rows(series)
    assert row.p50_ms == pytest.approx(500.0)


def test_red_rows_accept_a_namespace_and_skip_other_metrics() -> None:
    namespaced = _calls("a", "op", [(T0, 0), (T0 + S, 3)])
    namespaced.metric = "traces.span.metrics.calls"
    other = _calls("a", "op", [(T0, 0), (T0 + S, 100)])
    other.metric = "events"
    (row,) = red_rows([namespaced, other])
    assert row.rate == pytest.approx(3.0)


def test_red_rows_sorted_by_service_then_busiest() -> None:
    series = [
        _calls("b", "slow", [(T0, 0), (T0 + S, 1)]),
        _calls("b", "busy", [(T0, 0), (T0 + S, 9)]),
        _calls("a", "x", [(T0, 0), (T0 + S, 2)]),
    ]
    assert [(r.service, r.span_name) for r in red_rows(series)] == [("a", "x"), ("b", "busy"), ("b", "slow")]


# -- service graph ------------------------------------------------------------------------------


def _edge(metric: str, values: Sequence[tuple[int, float]], **extra: str) -> SeriesHistory:
    attrs = {"client": "frontend", "server": "checkout", "connection_type": "", **extra}
    history = SeriesHistory(metric, "", "", attrs, Point(values[0][0], T0, values[0][1]))
    for time_ns, value in values[1:]:
        history.observe(Point(time_ns, T0, value))
    return history


def test_edge_rows_rate_error_ratio_and_p95() -> None:
    seconds = SeriesHistory(
        "traces_service_graph_request_server_seconds",
        "s",
        "",
        {"client": "frontend", "server": "checkout", "connection_type": ""},
        Point(T0, T0, 0, (0.1, 0.2, 0.4), (0, 0, 0, 0)),
    )
    seconds.observe(Point(T0 + 2 * S, T0, 20, (0.1, 0.2, 0.4), (0, 20, 0, 0)))
    series = [
        _edge("traces_service_graph_request_total", [(T0, 100), (T0 + 2 * S, 120)]),
        _edge("traces_service_graph_request_failed_total", [(T0, 4), (T0 + 2 * S, 9)]),
        seconds,
        _edge(
            "traces_service_graph_request_total",
            [(T0, 0), (T0 + S, 2)],
            server="postgres",
            connection_type="database",
        ),
        _calls("frontend", "GET /", [(T0, 0), (T0 + S, 100)]),  # not an edge
    ]
    rows = edge_rows(series)
    assert [(r.client, r.server, r.connection_type) for r in rows] == [
        ("frontend", "checkout", ""),
        ("frontend", "postgres", "database"),
    ]
    first, database = rows
    assert first.rate == pytest.approx(10.0)
    assert first.error_ratio == pytest.approx(5 / 20)
    assert first.p95_ms == pytest.approx(195.0)  # 95 % into (100 ms, 200 ms]
    assert database.error_ratio == 0.0  # no failed series: no failures
    assert database.p95_ms is None


# -- decoding and rendering ---------------------------------------------------------------------


def _request(time_ns: int, ok: int, errors: int, buckets: Sequence[int]) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "frontend"
    rm.resource.attributes.add(key="k8s.pod.name").value.string_value = "frontend-1"
    sm = rm.scope_metrics.add()
    sm.scope.name = "spanmetricsconnector"
    calls = sm.metrics.add(name="calls")
    calls.sum.is_monotonic = True
    for status, value in (("STATUS_CODE_UNSET", ok), ("STATUS_CODE_ERROR", errors)):
        point = calls.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=time_ns, as_int=value)
        for key, text in (("span.name", "GET /"), ("span.kind", "SPAN_KIND_SERVER"), ("status.code", status)):
            point.attributes.add(key=key).value.string_value = text
    duration = sm.metrics.add(name="duration", unit="ms")
    hp = duration.histogram.data_points.add(
        start_time_unix_nano=T0,
        time_unix_nano=time_ns,
        count=sum(buckets),
        bucket_counts=list(buckets),
        explicit_bounds=list(BOUNDS),
    )
    hp.attributes.add(key="span.name").value.string_value = "GET /"
    return request


def test_state_ingests_records_and_takes_service_name_from_the_resource() -> None:
    state = MetricsState()
    headers = [("X-Scope-OrgID", b"team-a")]
    assert state.ingest_record(_request(T0, 10, 0, (10, 0, 0, 0)).SerializeToString(), headers) == 3
    assert state.ingest_record(_request(T0 + 2 * S, 28, 2, (10, 0, 20, 0)).SerializeToString(), headers) == 3
    assert state.ingest_record(b"\xff\xff not protobuf") == 0
    assert state.bad_records == 1
    (row,) = red_rows(state.live())
    assert (row.tenant, row.service, row.span_name) == ("team-a", "frontend", "GET /")
    assert row.rate == pytest.approx(10.0)
    assert row.error_ratio == pytest.approx(0.1)
    assert row.p50_ms == pytest.approx(3.0)


def test_state_drops_stale_series() -> None:
    state = MetricsState(stale_after=30)
    state.ingest(_request(T0, 1, 0, (1, 0, 0, 0)))
    state.ingest(_request(T0 + 60 * S, 1, 0, (1, 0, 0, 0)))
    state.series[next(iter(state.series))].latest = Point(T0, T0, 1)  # one series stopped updating
    assert len(state.live()) == 2


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_render_red_is_column_aligned_and_parseable() -> None:
    series = [
        _calls("frontend", "GET /api/products/{id}", [(T0, 0), (T0 + S, 12.5)]),
        _duration("frontend", "GET /api/products/{id}", [(T0, (0, 0, 0, 0)), (T0 + S, (0, 4, 0, 0))]),
        _calls("email", "render template", [(T0, 0)], kind="SPAN_KIND_INTERNAL"),
    ]
    header, *lines = render_red(red_rows(series))
    assert _cells(header) == ["SERVICE", "SPAN NAME", "KIND", "REQ/S", "ERROR", "P50 ms", "P95 ms", "P99 ms"]
    assert _cells(lines[0]) == ["email", "render template", "INTERNAL", "-", "-", "-", "-", "-"]
    assert _cells(lines[1]) == [
        "frontend",
        "GET /api/products/{id}",
        "SERVER",
        "12.50",
        "0.0%",
        "1.50",
        "1.95",
        "1.99",
    ]
    assert len({len(line) for line in (header, *lines)}) <= 2  # right-aligned numbers: same width


def test_render_adds_a_tenant_column_only_for_several_tenants() -> None:
    one = render_red(red_rows([_calls("a", "op", [(T0, 0), (T0 + S, 1)], tenant="t1")]))
    assert not one[0].startswith("TENANT")
    two = render_red(
        red_rows(
            [
                _calls("a", "op", [(T0, 0), (T0 + S, 1)], tenant="t1"),
                _calls("a", "op", [(T0, 0), (T0 + S, 1)], tenant="t2"),
            ]
        )
    )
    assert two[0].startswith("TENANT") and len(two) == 3


def test_render_edges_and_screen() -> None:
    series = [_edge("traces_service_graph_request_total", [(T0, 0), (T0 + S, 3)])]
    header, line = render_edges(edge_rows(series))
    assert _cells(header) == ["CLIENT", "SERVER", "TYPE", "REQ/S", "ERROR", "P95 ms"]
    assert _cells(line) == ["frontend", "checkout", "-", "3.00", "0.0%", "-"]

    state = MetricsState()
    assert "(no span metrics yet)" in render_screen(state, title="t")
    state.ingest(_request(T0, 1, 0, (1, 0, 0, 0)))
    state.ingest(_request(T0 + S, 3, 0, (1, 2, 0, 0)))
    screen = render_screen(state, title="top", footer=["footer line"], max_rows=0)
    assert screen.splitlines()[0].startswith("top ")
    assert "... 1 more rows" in screen and screen.endswith("footer line")
