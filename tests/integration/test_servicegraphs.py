"""Service graphs through the worker: edges counted once, even across a handover."""

from __future__ import annotations

import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.servers import create_topics
from worker.config import Settings

from .helpers import Observed, RunningWorker, make_settings, produce, read_until, span_count, traces

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
CLIENT_SPAN = bytes.fromhex("b7ad6b7169203331")
SERVER_SPAN = bytes.fromhex("00f067aa0ba902b7")


def _one_span(service: str, span: Span) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    resource_spans.scope_spans.add().spans.append(span)
    return request.SerializeToString()


def _with_graphs(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"servicegraphs": settings.servicegraphs.model_copy(update={"enabled": True, "wait": 60.0})}
    )


def _edges(observed: Observed, metric: str) -> dict[tuple[str, str, str], int]:
    result: dict[tuple[str, str, str], int] = {}
    for (_, name, labels), (_, _, value) in observed.latest.items():
        if name == metric:
            attributes = dict(labels)
            key = (
                attributes.get("client", ""),
                attributes.get("server", ""),
                attributes.get("connection_type", ""),
            )
            result[key] = value
    return result


async def test_edge_split_by_a_handover_is_counted_once(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = _with_graphs(make_settings(kafka_bootstrap, redis_url, unique_name))
    topic, out = f"{unique_name}-in", f"{unique_name}-out"
    await create_topics(kafka_bootstrap, {topic: 2, out: 1, f"{unique_name}-dlq": 1})
    now = time.time_ns()
    client = Span(trace_id=TRACE, span_id=CLIENT_SPAN, name="GET /stock", kind=Span.SPAN_KIND_CLIENT,
                  start_time_unix_nano=now - 50_000_000, end_time_unix_nano=now)  # fmt: skip
    server = Span(trace_id=TRACE, span_id=SERVER_SPAN, parent_span_id=CLIENT_SPAN, name="GET /stock",
                  kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now - 40_000_000,
                  end_time_unix_nano=now - 10_000_000)  # fmt: skip
    key = TRACE.hex().encode()

    await produce(kafka_bootstrap, topic, [(key, _one_span("shop", client))])
    async with RunningWorker(settings, "before") as before:
        await read_until(kafka_bootstrap, out, lambda o: o.total("calls") >= 1, timeout=60)
        assert before.worker.pipeline.pending_edges() == 1  # the client side waits for its server
    # The first worker is gone (its partitions revoked, its half-edge saved with its offsets);
    # the server side arrives for a new owner, which must restore the waiting client side.
    await produce(kafka_bootstrap, topic, [(key, _one_span("stock", server))])
    async with RunningWorker(settings, "after") as after:
        observed = await read_until(
            kafka_bootstrap,
            out,
            lambda o: _edges(o, "traces_service_graph_request_total").get(("shop", "stock", "")) == 1,
            timeout=60,
        )
        assert after.worker.pipeline.pending_edges() == 0
    assert _edges(observed, "traces_service_graph_request_total") == {("shop", "stock", ""): 1}
    assert _edges(observed, "traces_service_graph_unpaired_spans_total") == {}


async def test_loadgen_traffic_lights_up_every_edge_type(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = _with_graphs(make_settings(kafka_bootstrap, redis_url, unique_name))
    settings = settings.model_copy(
        update={"servicegraphs": settings.servicegraphs.model_copy(update={"wait": 1.0})}
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 4, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(120, seed=9, services=6)  # 6: the queue's consumer (email) exists
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])
    expected = span_count(r for _, r in batch)

    def complete(o: Observed) -> bool:
        kinds = {kind for (_, _, kind) in _edges(o, "traces_service_graph_request_total")}
        return o.total("calls") >= expected and {"", "database", "messaging_system", "virtual_node"} <= kinds

    async with RunningWorker(settings, "one"):
        observed = await read_until(kafka_bootstrap, f"{unique_name}-out", complete, timeout=60)
    edges = _edges(observed, "traces_service_graph_request_total")
    assert {kind for (_, _, kind) in edges} >= {"", "database", "messaging_system", "virtual_node"}
    assert edges[("user", "frontend", "virtual_node")] == 120  # every trace enters at the frontend
    assert observed.total("calls") == expected
