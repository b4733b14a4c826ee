"""How much does span aggregation cost next to protobuf decoding?

Builds realistic OTLP batches (by default 1,000 spans from 5 services, 6 span attributes each,
2 configured dimensions), serializes them, and then in one process measures, interleaved over
several rounds:

(a) decode only: ``ExportTraceServiceRequest.FromString`` on every batch;
(b) decode + aggregate: the worker's decode (``decode_batch``: the batch schema of
    ``worker.otlp.batch``), then ``SpanMetricsProcessor.consume`` on the result, with
    ``take_deltas`` at the end of each round (one flush interval per round).

(c) decode + aggregate through the compiled span-metrics ingest (``Pipeline.decode`` and
    ``consume_decoded``, as the worker's record handler), when it is built and serves the
    configuration (with ``--pipeline``, the service graphs' compiled path beside it).
(d) with ``--pipeline``: the service graphs alone on their compiled path (``scan`` and
    ``consume_scanned`` of the same runs, then ``expire`` and ``take_deltas``), the figure to
    compare when working on that path (its spans/s and microseconds per span).
(e) with ``--pipeline``: the compiled check that protobuf parses a run (``_native.valid``, what
    ``Pipeline.decode`` does instead of a protobuf parse when it accepts) beside protobuf's
    parse of the same runs in the batch schema (``parse_batch``): microseconds per span each.

It prints the median spans/s of each and the ratios (b)/(a) and (c)/(a): the fraction of the decode-only
throughput the worker keeps once it aggregates. Interleaving (alternating which runs first) keeps
CPU frequency drift and cache effects from favouring one side.

    python bench/aggregate.py [--spans 1000] [--batches 8] [--rounds 15] [--json]
    python bench/aggregate.py --profile        # pyinstrument profile of (b), printed after the figures

``--traces N`` replaces the batches by the end-to-end benchmark's load: N records of one trace
each (about 5.5 spans, from ``devtools.loadgen``, dimensions ``http.request.method`` and
``http.response.status_code``). ``--pipeline`` aggregates with ``worker.processors.pipeline.Pipeline``, span
metrics plus service graphs, as the worker does. ``--join N`` decodes N consecutive records in
one ``FromString`` call in (b) (protobuf concatenation merges the requests), as the worker's
record handler does (``decode_batch_proto``); (a) always decodes record by record.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import google.protobuf
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from worker.config import Settings, SpanMetricsConfig
from worker.otlp.batch import parse_batch
from worker.otlp.decode import decode_batch, decode_batch_proto, is_plain_request
from worker.processors.pipeline import Pipeline, check_parses
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

TARGET_RATIO = 0.25
SERVICES = ("frontend", "cart", "checkout", "payment", "shipping")
ROUTES = (
    "/",
    "/api/cart",
    "/api/cart/{id}",
    "/api/checkout",
    "/api/products",
    "/api/products/{id}",
    "/api/recommendations",
    "/api/shipping/quote",
    "/api/payment/charge",
    "/health",
)
METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
KINDS = (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL)
#: Mostly successes, the odd client and server error: what a healthy service reports.
STATUS_CODES = (200,) * 90 + (201,) * 3 + (404,) * 4 + (500,) * 2 + (503,)
OPERATIONS_PER_SERVICE = 8
BASE_NS = 1_700_000_000_000_000_000


def operations(service_index: int) -> list[tuple[str, str, int]]:
    """A service's fixed endpoints: (method, route, kind), the same in every batch."""
    rng = random.Random(1000 + service_index)
    return [
        (rng.choice(METHODS), rng.choice(ROUTES), rng.choice(KINDS)) for _ in range(OPERATIONS_PER_SERVICE)
    ]


def _kv(key: str, value: str | int | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_batch(spans: int, seed: int) -> bytes:
    """One serialized ExportTraceServiceRequest: ``spans`` spans spread over the services."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    per_service = [spans // len(SERVICES)] * len(SERVICES)
    for index in range(spans % len(SERVICES)):
        per_service[index] += 1
    for service_index, (service, count) in enumerate(zip(SERVICES, per_service, strict=True)):
        endpoints = operations(service_index)
        resource = Resource(
            attributes=[
                _kv("service.name", service),
                _kv("service.version", f"1.{service_index}.0"),
                _kv("service.namespace", "shop"),
                _kv("deployment.environment", "production"),
                _kv("host.name", f"node-{service_index % 3}"),
                _kv("k8s.pod.name", f"{service}-{seed % 4}-7f9c"),
                _kv("telemetry.sdk.language", "python"),
            ]
        )
        scope_spans = []
        # Two instrumentation scopes per resource, as an HTTP server plus a client library would.
        for scope_name, share in (
            ("opentelemetry.instrumentation.http", 0.6),
            ("opentelemetry.instrumentation.db", 0.4),
        ):
            scope = InstrumentationScope(name=scope_name, version="0.45b0")
            items = []
            for _ in range(round(count * share)):
                start = BASE_NS + rng.randrange(0, 15_000_000_000)
                duration = int(rng.lognormvariate(16.0, 1.4))  # median ~9 ms, long tail
                method, route, kind = rng.choice(endpoints)
                code = rng.choice(STATUS_CODES)
                items.append(
                    Span(
                        trace_id=rng.randbytes(16),
                        span_id=rng.randbytes(8),
                        parent_span_id=rng.randbytes(8),
                        name=f"{method} {route}",
                        kind=kind,
                        start_time_unix_nano=start,
                        end_time_unix_nano=start + duration,
                        attributes=[
                            _kv("http.method", method),
                            _kv("http.route", route),
                            _kv("http.status_code", code),
                            _kv("net.peer.name", f"10.0.{rng.randrange(4)}.{rng.randrange(255)}"),
                            _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"),
                            _kv("http.request_content_length", rng.randrange(0, 4096)),
                        ],
                        status=Status(
                            code=Status.STATUS_CODE_ERROR if code >= 500 else Status.STATUS_CODE_UNSET
                        ),
                    )
                )
            scope_spans.append(ScopeSpans(scope=scope, spans=items))
        request.resource_spans.append(ResourceSpans(resource=resource, scope_spans=scope_spans))
    return request.SerializeToString()


def count_spans(payload: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(payload)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def make_config() -> SpanMetricsConfig:
    return SpanMetricsConfig.model_validate(
        {"dimensions": [{"name": "http.method", "default": "GET"}, {"name": "http.status_code"}]}
    )


TRACE_DIMENSIONS = [{"name": "http.request.method"}, {"name": "http.response.status_code"}]


def build_traces(traces: int, seed: int = 7) -> list[bytes]:
    """The end-to-end benchmark's records: one serialized trace each."""
    from devtools.loadgen.model import TraceGenerator, build_model

    generator = TraceGenerator(build_model(services=6, seed=seed), seed=seed)
    now = BASE_NS
    return [generator.trace_request(now)[1].SerializeToString() for _ in range(traces)]


def make_settings(traces: bool) -> Settings:
    dimensions = TRACE_DIMENSIONS if traces else make_config().model_dump()["dimensions"]
    return Settings.model_validate(
        {"spanmetrics": {"dimensions": dimensions}, "servicegraphs": {"enabled": True}}
    )


def make_pipeline_run(
    pipeline: Pipeline, join: int, series_seen: list[int] | None = None
) -> Callable[[list[bytes]], None]:
    """Decode (``join`` records per call) and consume with the whole pipeline."""

    def decode_and_aggregate(payloads: list[bytes]) -> None:
        consume = pipeline.consume
        if join > 1:
            # As the worker's record handler: each record checked, then joined.
            for start in range(0, len(payloads), join):
                run = payloads[start : start + join]
                if all([is_plain_request(payload) for payload in run]):
                    consume(decode_batch_proto(b"".join(run)), "tenant", 0)
        else:
            for payload in payloads:
                consume(decode_batch(payload), "tenant", 0)
        pipeline.expire(BASE_NS * 2)
        if series_seen is not None:
            series_seen.append(pipeline.spanmetrics.pending_series())
        pipeline.take_deltas()

    return decode_and_aggregate


def make_native_run(pipeline: Pipeline, join: int) -> Callable[[list[bytes]], None] | None:
    """(c): the worker's native ingest, ``join`` records per call; None when it does not run."""
    if pipeline.ingest_path != "native":
        return None

    def native_aggregate(payloads: list[bytes]) -> None:
        decode, consume = pipeline.decode, pipeline.consume_decoded
        for start in range(0, len(payloads), join):
            run = payloads[start : start + join]
            if join == 1 or all([is_plain_request(payload) for payload in run]):
                consume(decode(b"".join(run) if len(run) > 1 else run[0]), "tenant", 0)
        pipeline.expire(BASE_NS * 2)
        pipeline.take_deltas()

    return native_aggregate


def make_edges_run(pipeline: Pipeline, join: int) -> Callable[[list[bytes]], None] | None:
    """(d): the service graphs' compiled path alone, ``join`` records per call; None when it does not run."""
    servicegraphs = pipeline.servicegraphs
    if pipeline.edges_path != "native" or servicegraphs is None:
        return None

    def edges_aggregate(payloads: list[bytes]) -> None:
        scan, consume = servicegraphs.scan, servicegraphs.consume_scanned
        for start in range(0, len(payloads), join):
            run = payloads[start : start + join]
            scanned = scan(b"".join(run) if len(run) > 1 else run[0])
            if scanned is not None:
                consume(scanned, "tenant", 0)
        servicegraphs.expire(BASE_NS * 2)
        servicegraphs.take_deltas()

    return edges_aggregate


def make_check_runs(
    payloads: list[bytes], join: int
) -> tuple[Callable[[list[bytes]], None], Callable[[list[bytes]], None]] | None:
    """(e): the compiled parse check and protobuf's parse of the same runs (joined once, here);
    None when the extension is not built."""
    if not check_parses(b""):
        return None  # the extension is not built or disabled: protobuf answered
    runs = [b"".join(payloads[start : start + join]) for start in range(0, len(payloads), join)]

    def check(_: list[bytes]) -> None:
        for data in runs:
            if not check_parses(data):
                raise AssertionError("the compiled check declined a well-formed run")

    def parse(_: list[bytes]) -> None:
        for data in runs:
            parse_batch(data)

    return check, parse


def decode_only(payloads: list[bytes]) -> None:
    from_string = ExportTraceServiceRequest.FromString
    for payload in payloads:
        from_string(payload)


def make_decode_and_aggregate(
    processor: SpanMetricsProcessor, series_seen: list[int] | None = None
) -> Callable[[list[bytes]], None]:
    def decode_and_aggregate(payloads: list[bytes]) -> None:
        consume = processor.consume
        for payload in payloads:
            consume(decode_batch(payload), "tenant")
        if series_seen is not None:
            series_seen.append(processor.pending_series())
        processor.take_deltas()

    return decode_and_aggregate


def timed(function: Callable[[list[bytes]], None], payloads: list[bytes]) -> float:
    start = time.perf_counter()
    function(payloads)
    return time.perf_counter() - start


def run(
    spans: int,
    batches: int,
    rounds: int,
    warmup: int,
    *,
    traces: int = 0,
    pipeline: bool = False,
    join: int = 1,
) -> dict[str, Any]:
    if traces:
        payloads = build_traces(traces)
        batches = len(payloads)
    else:
        payloads = [build_batch(spans, seed) for seed in range(batches)]
    total_spans = sum(count_spans(p) for p in payloads)
    series_seen: list[int] = []
    if pipeline or traces or join > 1:
        settings = make_settings(bool(traces))
        if not pipeline:
            settings = settings.model_copy(
                update={"servicegraphs": settings.servicegraphs.model_copy(update={"enabled": False})}
            )
        aggregate = make_pipeline_run(Pipeline(settings), join, series_seen)
    else:
        aggregate = make_decode_and_aggregate(SpanMetricsProcessor(make_config()), series_seen)
    native_settings = make_settings(bool(traces))
    if not pipeline:
        native_settings = native_settings.model_copy(
            update={"servicegraphs": native_settings.servicegraphs.model_copy(update={"enabled": False})}
        )
    native = make_native_run(Pipeline(native_settings), join)
    edges = make_edges_run(Pipeline(native_settings), join) if pipeline else None
    checks = make_check_runs(payloads, join) if pipeline else None

    for _ in range(warmup):
        decode_only(payloads)
        aggregate(payloads)
        if native is not None:
            native(payloads)
        if edges is not None:
            edges(payloads)

    decode_rates: list[float] = []
    aggregate_rates: list[float] = []
    native_rates: list[float] = []
    edges_rates: list[float] = []
    check_rates: list[float] = []
    parse_rates: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection landing in one side's timing would be noise, not cost
    try:
        for round_index in range(rounds):
            order = [(decode_only, decode_rates), (aggregate, aggregate_rates)]
            if native is not None:
                order.append((native, native_rates))
            if edges is not None:
                order.append((edges, edges_rates))
            if checks is not None:
                order += [(checks[0], check_rates), (checks[1], parse_rates)]
            # Rotated: each side runs first, second and last equally often.
            shift = round_index % len(order)
            order = order[shift:] + order[:shift]
            for function, rates in order:
                rates.append(total_spans / timed(function, payloads))
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()

    decode_median = statistics.median(decode_rates)
    aggregate_median = statistics.median(aggregate_rates)
    native_median = statistics.median(native_rates) if native_rates else None
    edges_median = statistics.median(edges_rates) if edges_rates else None
    return {
        "spans_per_batch": total_spans // batches,
        "batches": batches,
        "batch_bytes": round(statistics.mean(len(p) for p in payloads)),
        "rounds": rounds,
        "series_per_round": max(series_seen),
        "load": f"{traces} trace records" if traces else f"{batches} batches",
        "servicegraphs": pipeline,
        "join": join,
        "decode_spans_per_s": round(decode_median),
        "decode_aggregate_spans_per_s": round(aggregate_median),
        "ratio": round(aggregate_median / decode_median, 4),
        "target_ratio": TARGET_RATIO,
        "meets_target": aggregate_median / decode_median >= TARGET_RATIO,
        "native_spans_per_s": round(native_median) if native_median else None,
        "native_ratio": round(native_median / decode_median, 4) if native_median else None,
        "native_over_pure": round(native_median / aggregate_median, 2) if native_median else None,
        "native_spans_per_s_all": [round(r) for r in native_rates],
        "edges_native_spans_per_s": round(edges_median) if edges_median else None,
        "edges_native_us_per_span": round(1e6 / edges_median, 3) if edges_median else None,
        "parse_check_us_per_span": round(1e6 / statistics.median(check_rates), 3) if check_rates else None,
        "protobuf_parse_us_per_span": round(1e6 / statistics.median(parse_rates), 3) if parse_rates else None,
        "decode_spans_per_s_all": [round(r) for r in decode_rates],
        "decode_aggregate_spans_per_s_all": [round(r) for r in aggregate_rates],
        "python": platform.python_version(),
        "protobuf": f"{google.protobuf.__version__} ({_protobuf_backend()})",
    }


def _protobuf_backend() -> str:
    try:
        from google.protobuf.internal import api_implementation

        return str(api_implementation.Type())
    except ImportError:  # pragma: no cover - very old protobuf
        return "unknown"


def profile(
    spans: int, batches: int, rounds: int, traces: int = 0, pipeline: bool = False, join: int = 1
) -> str:
    from pyinstrument import Profiler

    if traces or pipeline or join > 1:
        payloads = build_traces(traces) if traces else [build_batch(spans, seed) for seed in range(batches)]
        settings = make_settings(bool(traces))
        if not pipeline:
            settings = settings.model_copy(
                update={"servicegraphs": settings.servicegraphs.model_copy(update={"enabled": False})}
            )
        aggregate = make_pipeline_run(Pipeline(settings), join)
    else:
        payloads = [build_batch(spans, seed) for seed in range(batches)]
        aggregate = make_decode_and_aggregate(SpanMetricsProcessor(make_config()))
    aggregate(payloads)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(rounds):
        aggregate(payloads)
    profiler.stop()
    return str(profiler.output_text(unicode=False, color=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1000, help="spans per batch (default 1000)")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches per round (default 8)")
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    parser.add_argument(
        "--traces", type=int, default=0, help="use N one-trace records (the e2e load) instead of batches"
    )
    parser.add_argument(
        "--pipeline", action="store_true", help="aggregate with Pipeline: span metrics + service graphs"
    )
    parser.add_argument("--join", type=int, default=1, help="records decoded per FromString call in (b)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument(
        "--profile", action="store_true", help="also profile decode+aggregate with pyinstrument"
    )
    args = parser.parse_args(argv)
    if args.spans < len(SERVICES) or args.batches < 1 or args.rounds < 1:
        parser.error(f"--spans must be at least {len(SERVICES)}; --batches and --rounds at least 1")

    result = run(
        args.spans,
        args.batches,
        args.rounds,
        args.warmup,
        traces=args.traces,
        pipeline=args.pipeline,
        join=max(1, args.join),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['batches']} batches x {result['spans_per_batch']} spans "
            f"({result['batch_bytes']} bytes each), {result['series_per_round']} series per round, "
            f"{result['rounds']} rounds, servicegraphs={result['servicegraphs']}, join={result['join']}, "
            f"Python {result['python']}, protobuf {result['protobuf']}"
        )
        print(f"(a) decode only:        {result['decode_spans_per_s']:>12,} spans/s (median)")
        print(f"(b) decode + aggregate: {result['decode_aggregate_spans_per_s']:>12,} spans/s (median)")
        verdict = "meets" if result["meets_target"] else "BELOW"
        print(f"ratio (b)/(a):          {result['ratio']:>12.3f}   ({verdict} target {TARGET_RATIO})")
        if result["native_spans_per_s"] is None:
            print("(c) native ingest:      not built, disabled, or not serving this configuration")
        else:
            print(f"(c) native ingest:      {result['native_spans_per_s']:>12,} spans/s (median)")
            print(
                f"ratio (c)/(a):          {result['native_ratio']:>12.3f}   "
                f"({result['native_over_pure']}x the pure path)"
            )
        if result["edges_native_spans_per_s"] is not None:
            print(
                f"(d) service graphs alone (compiled): {result['edges_native_spans_per_s']:>12,} spans/s "
                f"(median, {result['edges_native_us_per_span']} us per span)"
            )
        if result["parse_check_us_per_span"] is not None:
            print(
                f"(e) parse check (compiled): {result['parse_check_us_per_span']} us per span, "
                f"protobuf's parse of the same runs: {result['protobuf_parse_us_per_span']} us per span"
            )
    if args.profile:
        print(
            profile(
                args.spans,
                args.batches,
                max(1, args.rounds // 3),
                args.traces,
                args.pipeline,
                max(1, args.join),
            ),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
