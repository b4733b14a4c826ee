"""How fast are a flush's OTLP requests written: protobuf objects versus direct wire encoding?

Builds a realistic flush (by default 100,000 cumulative series: half ``calls`` SUM, half
``duration`` HISTOGRAM with the 16 default bounds, each span series' two metrics sharing one
attributes tuple of 6 string attributes, ~50 resources) and measures, interleaved over several
rounds (alternating which runs first):

(a) old: ``split_by_size`` + ``SerializeToString()`` + the Kafka key, as the emitter did;
(b) new: ``encode_requests``, pure Python (warm caches: the series recur every flush, as
    cumulative ones do);
(c) new, cold: the same after ``clear_caches()``, i.e. the first flush after start-up;
(d) native: ``encode_requests`` through the compiled encoder (``worker.otlp._encode``), warm;
(e) native, cold: the same after ``clear_caches()`` (skipped when the extension is not built).

``--parts`` hands the series over as the Redis store does: one ``duration`` series per span
series carrying its ``calls`` counter as companion, attributes as pre-encoded parts.

Every round gets freshly decoded series (attributes through msgpack, as the Redis store hands
them over), so no string hash or tuple identity is reused from the previous round. It checks
that every side wrote identical bytes, then prints medians in series/s and us/series (a series
is one data point: ``calls`` and ``duration`` of a span series count two).

    python bench/encode.py [--series 100000] [--resources 50] [--rounds 7] [--max-bytes 1048576]
                           [--exemplars 0] [--parts] [--no-protobuf] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from worker.config import DEFAULT_HISTOGRAM_BUCKETS
from worker.model.extensions import load
from worker.model.series import (
    Attributes,
    Exemplar,
    MetricDescriptor,
    MetricKind,
    Series,
    Temporality,
    with_companions,
)
from worker.model.values import attribute_parts
from worker.otlp import metrics_encoder
from worker.otlp.metrics_encoder import encode_requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the protobuf reference lives in tests/
from tests.reference.metrics_builder import split_by_size

DESCRIPTORS = {
    "traces.span.metrics.calls": MetricDescriptor("traces.span.metrics.calls", MetricKind.SUM, order=0),
    "traces.span.metrics.duration": MetricDescriptor(
        "traces.span.metrics.duration",
        MetricKind.HISTOGRAM,
        unit="ms",
        bounds=DEFAULT_HISTOGRAM_BUCKETS,
        order=1,
    ),
}
CALLS, DURATION = DESCRIPTORS
KINDS = ("SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_INTERNAL", "SPAN_KIND_PRODUCER")
METHODS = ("GET", "POST", "PUT", "DELETE")
STATUS = ("STATUS_CODE_UNSET", "STATUS_CODE_ERROR")
CODES = ("200", "201", "204", "400", "404", "500", "503")


def make_flush(n_series: int, n_resources: int, exemplars: int, seed: int = 7) -> tuple[Any, ...]:
    """(resources, packed series): the series as the store keeps them, decoded per round."""
    rng = random.Random(seed)
    resources = {
        f"res{r:03d}": (
            ("service.name", f"service-{r:03d}"),
            ("service.namespace", "shop"),
            ("deployment.environment", "production"),
            ("host.name", f"node-{r % 7}"),
            ("telemetry.sdk.language", rng.choice(("go", "java", "python", "nodejs"))),
        )
        for r in range(n_resources)
    }
    now = time.time_ns()
    packed = []
    for index in range(n_series // 2):
        r = index % n_resources
        attributes = [
            ["service.name", f"service-{r:03d}"],
            ["span.name", f"GET /api/v1/items/{index // n_resources % 400}/op{index % 5}"],
            ["span.kind", rng.choice(KINDS)],
            ["status.code", rng.choice(STATUS)],
            ["http.request.method", rng.choice(METHODS)],
            ["http.response.status_code", rng.choice(CODES)],
        ]
        start = now - rng.randrange(10**9, 3600 * 10**9)
        count = rng.randrange(1, 100_000)
        buckets = [rng.randrange(0, count // 4 + 1) for _ in range(len(DEFAULT_HISTOGRAM_BUCKETS) + 1)]
        sampled: list[Exemplar] = [
            (rng.randbytes(16), rng.randbytes(8), rng.random() * 100, now - rng.randrange(10**9))
            for _ in range(exemplars)
        ]
        packed.append(
            msgpack.packb([f"res{r:03d}", attributes, start, count, count * 12.5, buckets, sampled])
        )
    return resources, packed, now


class Decoder:
    """Series as the store hands them over each flush: fresh Series objects and value lists.

    ``persistent`` (the default) models the store's meta cache (state/fold.py ``MetaCache``): each
    series' attributes tuple is decoded once and the same tuple object comes back every flush,
    one per series (``calls`` and ``duration`` of a span series hold equal, distinct tuples).
    Otherwise every flush decodes fresh tuples and strings (the worst case for the caches).
    """

    def __init__(self, packed: list[bytes], persistent: bool, parts: bool = False) -> None:
        self.packed = packed
        self.persistent = persistent
        self.parts = parts
        self.metas: dict[tuple[int, str], Attributes] = {}

    def attributes(self, index: int, metric: str, raw: list[list[str]]) -> Attributes:
        if not self.persistent:
            return tuple(map(tuple, raw))  # type: ignore[arg-type]
        found = self.metas.get((index, metric))
        if found is None:
            found = self.metas[(index, metric)] = tuple(map(tuple, raw))  # type: ignore[arg-type]
        return found

    def decode(self) -> list[Series]:
        if self.parts:
            return self.decode_parts()
        out = []
        for index, blob in enumerate(self.packed):
            resource_id, raw, start, count, total, buckets, sampled = msgpack.unpackb(blob)
            exemplars = [tuple(e) for e in sampled]
            calls = self.attributes(index, CALLS, raw)
            duration = self.attributes(index, DURATION, msgpack.unpackb(msgpack.packb(raw)))
            out.append(Series("", CALLS, resource_id, calls, start, start, count=count, exemplars=exemplars))
            out.append(
                Series(
                    "",
                    DURATION,
                    resource_id,
                    duration,
                    start,
                    start,
                    count=count,
                    sum=total,
                    buckets=buckets,
                    exemplars=list(exemplars),
                )
            )
        return out

    def decode_parts(self) -> list[Series]:
        """One ``duration`` series per span series, its ``calls`` as companion, attributes as
        the store's pre-encoded parts (fresh bytes every flush, as the store decodes them).
        The attributes tuple is kept too, for the protobuf reference (the encoder reads the parts)."""
        out = []
        for blob in self.packed:
            resource_id, raw, start, count, total, buckets, sampled = msgpack.unpackb(blob)
            attributes: Attributes = tuple(map(tuple, raw))  # type: ignore[arg-type]
            one = Series(
                "",
                DURATION,
                resource_id,
                attributes,
                start,
                start,
                count=count,
                sum=total,
                buckets=buckets,
                exemplars=[tuple(e) for e in sampled],
                attribute_parts=attribute_parts(attributes),
                companion=CALLS,
            )
            out.append(one)
        return out


#: The compiled encoder, or None (not built, or SPANMETRICS_NO_EXTENSIONS=1).
COMPILED = load("worker.otlp._encode")


def run_old(resources: Any, series: list[Series], now: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
    out = []
    expanded = with_companions(series)  # the reference knows no companions
    for request in split_by_size(resources, expanded, DESCRIPTORS, Temporality.CUMULATIVE, now, max_bytes):
        data = request.SerializeToString()
        key = request.resource_metrics[0].resource.SerializeToString()[:64]
        out.append((data, key))
    return out


def run_new(resources: Any, series: list[Series], now: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
    metrics_encoder._native = None  # the pure encoder
    try:
        return [
            (r.data, r.key or b"")
            for r in encode_requests(resources, series, DESCRIPTORS, Temporality.CUMULATIVE, now, max_bytes)
        ]
    finally:
        metrics_encoder._native = COMPILED


def run_cold(resources: Any, series: list[Series], now: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
    metrics_encoder.clear_caches()
    return run_new(resources, series, now, max_bytes)


def run_native(resources: Any, series: list[Series], now: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
    metrics_encoder._native = COMPILED
    return [
        (r.data, r.key or b"")
        for r in encode_requests(resources, series, DESCRIPTORS, Temporality.CUMULATIVE, now, max_bytes)
    ]


def run_native_cold(
    resources: Any, series: list[Series], now: int, max_bytes: int
) -> list[tuple[bytes, bytes]]:
    metrics_encoder.clear_caches()
    return run_native(resources, series, now, max_bytes)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Run with the collector paused, as the worker's flush runs (worker/stream/worker.py)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn(*args)
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def cache_memory(resources: Any, packed: list[bytes], now: int, max_bytes: int) -> int:
    """Bytes the encoder's caches keep after one cold flush whose series are then dropped."""
    metrics_encoder.clear_caches()
    series = Decoder(packed, persistent=False).decode()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run_new(resources, series, now, max_bytes)
    del series
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--exemplars", type=int, default=0, help="exemplars per series")
    parser.add_argument(
        "--fresh-attributes",
        action="store_true",
        help="decode new attribute tuples and strings every round (default: the store's meta cache)",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="series as the Redis store hands them over: duration + calls companion, attribute parts",
    )
    parser.add_argument(
        "--no-protobuf",
        action="store_true",
        help="leave out (a), the slow protobuf side (large flushes); sides are checked against (b)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    resources, packed, now = make_flush(args.series, args.resources, args.exemplars)
    n = len(packed) * 2
    sides: dict[str, Callable[..., Any]] = {"old": run_old, "new": run_new, "new_cold": run_cold}
    if args.no_protobuf:
        del sides["old"]
    if COMPILED is not None:
        sides.update(native=run_native, native_cold=run_native_cold)
    times: dict[str, list[float]] = {name: [] for name in sides}
    requests = 0
    decoder = Decoder(packed, persistent=not args.fresh_attributes, parts=args.parts)
    run_new(resources, decoder.decode(), now, args.max_bytes)  # warm the caches once
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        outputs = {}
        for name in order:
            series = decoder.decode()
            elapsed, outputs[name] = timed(sides[name], resources, series, now, args.max_bytes)
            times[name].append(elapsed)
        reference = outputs["old" if "old" in outputs else "new"]
        if any(output != reference for output in outputs.values()):
            raise SystemExit("encode_requests wrote different bytes from split_by_size + SerializeToString")
        requests = len(outputs["new"])
    memory = cache_memory(resources, packed, now, args.max_bytes)

    result: dict[str, Any] = {
        "series": n,
        "resources": args.resources,
        "requests": requests,
        "rounds": args.rounds,
    }
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {"median_s": median, "series_per_s": n / median, "us_per_series": median / n * 1e6}
    if "old" in result:
        result["speedup"] = result["old"]["median_s"] / result["new"]["median_s"]
    if COMPILED is not None:
        result["native_speedup"] = result["new"]["median_s"] / result["native"]["median_s"]
        result["native_cold_speedup"] = result["new_cold"]["median_s"] / result["native_cold"]["median_s"]
    result["cache_bytes_after_cold_flush"] = memory
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{n:,} series, {args.resources} resources, {requests} requests of <= {args.max_bytes:,} bytes, "
        f"{args.exemplars} exemplars/series, {'store parts' if args.parts else 'attribute tuples'}, "
        f"medians of {args.rounds} interleaved rounds"
    )
    for name, label in (
        ("old", "split_by_size + SerializeToString"),
        ("new", "encode_requests (warm caches)"),
        ("new_cold", "encode_requests (cold caches)"),
        ("native", "native encode (warm caches)"),
        ("native_cold", "native encode (cold caches)"),
    ):
        if name not in result:
            continue
        row = result[name]
        print(
            f"  {label:36s} {row['median_s'] * 1000:8.1f} ms  {row['series_per_s']:12,.0f} series/s  "
            f"{row['us_per_series']:6.2f} us/series"
        )
    speedup = f"speedup (warm): {result['speedup']:.1f}x; " if "speedup" in result else ""
    print(f"  {speedup}caches hold ~{memory / 2**20:.1f} MiB after a cold flush")
    if COMPILED is not None:
        print(
            f"  native over pure: {result['native_speedup']:.2f}x warm, "
            f"{result['native_cold_speedup']:.2f}x cold"
        )
    else:
        print("  native: not built (or SPANMETRICS_NO_EXTENSIONS=1)")


if __name__ == "__main__":
    main()
