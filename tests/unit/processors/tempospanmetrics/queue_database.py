"""The spans of Tempo's service-graph fixture ``trace-with-queue-database.json``, rebuilt here.

Mirrors grafana/tempo modules/generator/processor/servicegraphs/testdata/trace-with-queue-database.json
(the file itself is AGPL-3.0 and not copied): same services, span names, kinds, parents, times,
status codes and the attributes that matter (``beast``, ``god``, database and messaging ones).
mythical-requester calls mythical-server (CLIENT -> SERVER), which queries postgres (a DB CLIENT
span); the requester publishes to rabbitmq (PRODUCER) and mythical-recorder consumes (CONSUMER);
HTTP POST, two log_to_loki and dns.lookup CLIENT spans have no server side.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.unit.processors.spanmetrics.helpers import key_values, make_request, make_resource_spans

TRACE_ID = bytes.fromhex("a0f3d5e8c2b14d6f9e8d7c6b5a493827")

_SDK = [
    ("telemetry.sdk.language", "nodejs"),
    ("telemetry.sdk.name", "opentelemetry"),
    ("telemetry.sdk.version", "1.4.0"),
]
REQUESTER = [("service.name", "mythical-requester"), *_SDK, ("ip", "1.2.3.4")]
SERVER = [("service.name", "mythical-server"), *_SDK, ("ip", "1.2.3.5")]
RECORDER = [("service.name", "mythical-recorder"), *_SDK, ("ip", "1.2.3.5")]

K = Span.SpanKind
OK = Status.STATUS_CODE_OK

#: (resource, name, kind, span id, parent id, start ns, end ns, status, attributes), file order.
SPANS: list[tuple[list[tuple[str, str]], str, int, str, str, int, int, int, dict[str, Any]]] = [
    (REQUESTER, "requester", K.SPAN_KIND_CLIENT, "d606579e57787587", "",
     1658320854877522688, 1658320854923357184, OK, {"beast": "manticore", "god": "ares"}),
    (REQUESTER, "tcp.connect", K.SPAN_KIND_INTERNAL, "53f3329b863da95d", "d606579e57787587",
     1658320854877839616, 1658320854878545408, 0, {"net.peer.name": "mythical-server"}),
    (SERVER, "GET /:endpoint", K.SPAN_KIND_SERVER, "9992968897f3c846", "d606579e57787587",
     1658320854878927360, 1658320854908913408, OK, {"god": "zeus", "beast": "manticore"}),
    (SERVER, "middleware - query", K.SPAN_KIND_INTERNAL, "037f041a37a7cb46", "9992968897f3c846",
     1658320854879122688, 1658320854879143680, 0, {}),
    (SERVER, "middleware - expressInit", K.SPAN_KIND_INTERNAL, "ede2f3b2403d1b34", "9992968897f3c846",
     1658320854879322624, 1658320854879355136, 0, {}),
    (SERVER, "middleware - jsonParser", K.SPAN_KIND_INTERNAL, "23e12b1c2596cc8c", "9992968897f3c846",
     1658320854879422208, 1658320854879444480, 0, {}),
    (SERVER, "request handler - /:endpoint", K.SPAN_KIND_INTERNAL, "c38fcd8b716ae12e", "9992968897f3c846",
     1658320854879524608, 1658320854879526400, 0, {}),
    (SERVER, "pg.query:SELECT", K.SPAN_KIND_CLIENT, "253e212fe234216c", "9992968897f3c846",
     1658320854879610624, 1658320854903392000, 0,
     {"db.name": "postgres", "db.system": "postgresql", "net.peer.name": "mythical-database"}),
    (SERVER, "HTTP POST", K.SPAN_KIND_CLIENT, "22af07cb208631c0", "9992968897f3c846",
     1658320854909347584, 1658320854913202688, OK, {"net.peer.name": "loki"}),
    (SERVER, "tcp.connect", K.SPAN_KIND_INTERNAL, "e717a7cad6161823", "22af07cb208631c0",
     1658320854909465856, 1658320854911322112, 0, {"net.peer.name": "loki"}),
    (SERVER, "dns.lookup", K.SPAN_KIND_CLIENT, "1b594e54f50b2870", "22af07cb208631c0",
     1658320854909490688, 1658320854910292992, 0, {}),
    (REQUESTER, "publish_to_queue", K.SPAN_KIND_INTERNAL, "a0c838ea9a83f726", "d606579e57787587",
     1658320854915519232, 1658320854916681216, OK, {}),
    (REQUESTER, "<default> -> messages send", K.SPAN_KIND_PRODUCER, "09bc8187c967f4b4", "a0c838ea9a83f726",
     1658320854915559936, 1658320854915628800, 0,
     {"net.peer.name": "mythical-queue", "messaging.system": "rabbitmq"}),
    (REQUESTER, "log_to_loki", K.SPAN_KIND_CLIENT, "1d9e37ba0b9bdbbe", "d606579e57787587",
     1658320854916730624, 1658320854930536704, OK, {}),
    (REQUESTER, "log_to_loki", K.SPAN_KIND_CLIENT, "0720494d7c5ed9a2", "d606579e57787587",
     1658320854923263232, 1658320854929491200, OK, {}),
    (REQUESTER, "tcp.connect", K.SPAN_KIND_INTERNAL, "8afae1e3882594fd", "d606579e57787587",
     1658320854923789312, 1658320854925569280, 0, {"net.peer.name": "loki"}),
    (REQUESTER, "tcp.connect", K.SPAN_KIND_INTERNAL, "a3f98942db1d0de1", "d606579e57787587",
     1658320854924354560, 1658320854925760768, 0, {"net.peer.name": "loki"}),
    (RECORDER, "messages process", K.SPAN_KIND_CONSUMER, "a8c3fb56334620af", "09bc8187c967f4b4",
     1658320854925510400, 1658320854926209792, 0,
     {"net.peer.name": "mythical-queue", "messaging.system": "rabbitmq"}),
    (RECORDER, "process_message", K.SPAN_KIND_INTERNAL, "8fd5a2281e4f18ac", "a8c3fb56334620af",
     1658320854925532928, 1658320854963292160, 0, {}),
]  # fmt: skip


def queue_database_trace() -> ExportTraceServiceRequest:
    """One ResourceSpans per span, as in the fixture."""
    resource_spans = []
    for resource, name, kind, span_id, parent, start, end, status, attributes in SPANS:
        span = Span(
            trace_id=TRACE_ID,
            span_id=bytes.fromhex(span_id),
            parent_span_id=bytes.fromhex(parent),
            name=name,
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=start,
            end_time_unix_nano=end,
            attributes=key_values(attributes),
            status=Status(code=status),  # type: ignore[arg-type]
        )
        resource_spans.append(make_resource_spans(resource, [span]))
    return make_request(*resource_spans)
