"""One worker's flush of ~100,000 active series, in process, against a real Redis: no broker.

``bench/e2e.py`` times the flush inside a worker process that shares two cores with the broker
and the load; its flush figures move by ±20 % from run to run on such a machine. This runs the
same code path (the processors' deltas -> ``RedisStateStore.merge`` -> ``fold_slot`` for every
slot -> ``encode_requests``) on the same series load, in one process and without Kafka, so an
optimisation of the flush can be compared side by side with a few repeated rounds:

1. round A: every span starts a new ``calls`` + ``duration`` pair (the create flush);
2. ``--rounds`` times: the same spans again, so the flush merges an update of every series and
   emits them all (the update flush, the figure the issue's "< 1 s" target is about);
3. the same number of flushes with nothing new: emission only (the idle flush).

Each flush is reported as wall time split into the Redis step (building the delta rows and the
merge script), the fold (reading, folding and committing every slot) and the encoding of the
OTLP requests, plus the process CPU time. Medians over the rounds are printed and written as
JSON. Redis: ``REDIS_URL`` if set (keys are deleted afterwards), else an embedded Valkey.

    python bench/flush.py                    # 100,000 series, 3 update and 3 idle rounds
    python bench/flush.py --series 20000 --rounds 5 --json bench/results/flush.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from e2e import (
    DIMENSIONS,
    RESULTS_DIR,
    SERIES_DIMENSION,
    TARGET_FLUSH_S,
    generate_series_load,
    machine_description,
    source_state,
)
from redis.asyncio import Redis

from devtools.servers import redis_from_env_or_embedded
from state.keys import KeySpace
from state.redis_store import RedisStateStore
from worker.config import Settings
from worker.otlp.decode import decode_batch_proto
from worker.otlp.metrics_encoder import encode_requests
from worker.processors.pipeline import Pipeline

#: As the e2e load: 8 input partitions, so 8 slots, all owned by the one worker here.
PARTITIONS = 8
#: Records decoded together, as the worker joins consecutive plain records.
JOIN = 64


def say(message: str) -> None:
    print(f"[flush {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class FlushFigures:
    seconds: float
    redis_step_seconds: float
    fold_seconds: float
    encode_seconds: float
    cpu_seconds: float
    series: int
    bytes: int


async def _flush(
    pipeline: Pipeline, store: RedisStateStore, tokens: dict[int, int], offset: int
) -> FlushFigures:
    """What a worker's flush does with its owned slots, minus Kafka: merge, fold, encode."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as the worker's flush (worker.stream.worker)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        await store.merge(pipeline.take_deltas(), {p: (token, offset) for p, token in tokens.items()})
        merged = time.perf_counter()
        fold_seconds = encode_seconds = 0.0
        series = size = 0
        resources = await store.resources("")
        descriptors = pipeline.descriptors()
        temporality = pipeline.spanmetrics.config.aggregation_temporality
        for slot in sorted(tokens):
            before_fold = time.perf_counter()
            fold = await store.fold_slot("", slot, tokens[slot])
            before_encode = time.perf_counter()
            for request in encode_requests(
                resources,
                fold.live,
                descriptors,
                temporality,
                time.time_ns(),
                1 << 20,
                reuse_attribute_tuples=False,
            ):
                size += len(request.data)
            fold_seconds += before_encode - before_fold
            encode_seconds += time.perf_counter() - before_encode
            series += fold.emitted
        return FlushFigures(
            seconds=time.perf_counter() - started,
            redis_step_seconds=merged - started,
            fold_seconds=fold_seconds,
            encode_seconds=encode_seconds,
            cpu_seconds=time.process_time() - cpu_started,
            series=series,
            bytes=size,
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _consume(pipeline: Pipeline, records: list[tuple[bytes, bytes]]) -> None:
    by_partition: dict[int, list[bytes]] = {}
    for index, (_, value) in enumerate(records):
        by_partition.setdefault(index % PARTITIONS, []).append(value)
    for partition, values in by_partition.items():
        for start in range(0, len(values), JOIN):
            pipeline.consume(decode_batch_proto(b"".join(values[start : start + JOIN])), "", partition)


def _median(flushes: list[FlushFigures]) -> dict[str, float]:
    return {
        name: round(statistics.median(getattr(f, name) for f in flushes), 3)
        for name in ("seconds", "redis_step_seconds", "fold_seconds", "encode_seconds", "cpu_seconds")
    }


def _line(label: str, figures: dict[str, float], series: int) -> str:
    return (
        f"  {label:<13} {figures['seconds']:.3f}s (Redis step {figures['redis_step_seconds']:.3f}s, "
        f"fold {figures['fold_seconds']:.3f}s, encode {figures['encode_seconds']:.3f}s; "
        f"CPU {figures['cpu_seconds']:.3f}s), {series:,} series"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = generate_series_load(args.series, services=6)
    say(f"{load.spans:,} spans with a unique {SERIES_DIMENSION} in {len(load.records):,} records")
    settings = Settings.model_validate(
        {
            "spanmetrics": {"dimensions": [*DIMENSIONS, {"name": SERIES_DIMENSION}]},
            "servicegraphs": {"enabled": True},
        }
    )
    pipeline = Pipeline(settings)
    limit = max(1_000_000, 10 * args.series)  # far above the load, yet the bookkeeping runs
    redis = redis_from_env_or_embedded()
    client = Redis.from_url(redis.url)
    prefix = f"flush-bench-{uuid.uuid4().hex[:8]}"
    store = RedisStateStore(
        client,
        KeySpace(prefix, "in"),
        slots=PARTITIONS,
        max_exemplars=pipeline.max_exemplars,
        active_series_limit=limit,
        max_kept_series=args.kept,
    )
    try:
        tokens = await store.claim(range(PARTITIONS))
        offset = 0

        async def flush(records: list[tuple[bytes, bytes]] | None) -> FlushFigures:
            nonlocal offset
            if records:
                _consume(pipeline, records)
            offset += 1
            return await _flush(pipeline, store, tokens, offset)

        create = await flush(load.records)
        say(f"create flush: {create.seconds:.3f}s, {create.series:,} series")
        updates = []
        for _ in range(args.rounds):
            updates.append(await flush(load.records))
            say(f"update flush: {updates[-1].seconds:.3f}s")
        idle = []
        for _ in range(args.rounds):
            idle.append(await flush(None))
            say(f"idle flush: {idle[-1].seconds:.3f}s")
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await client.aclose()
        redis.stop()
    return {
        "machine": machine_description(),
        "source": source_state(),
        "redis": type(redis).__name__,
        "spans_per_round": load.spans,
        "rounds": args.rounds,
        "create": asdict(create),
        "update": [asdict(f) for f in updates],
        "idle": [asdict(f) for f in idle],
        "update_median": _median(updates),
        "idle_median": _median(idle),
        "series": updates[-1].series,
        # The process also holds the load's records: compare this between versions, not with
        # a worker's RSS (bench/e2e.py measures that).
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000, help="active series (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="update and idle flushes each (default 3)")
    parser.add_argument(
        "--kept",
        type=int,
        default=100_000,
        help="max_kept_series, label sets (default 100,000, the worker's; 0: every fold reads every record)",
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the JSON (default bench/results/flush-<time>.json)"
    )
    args = parser.parse_args(argv)
    if args.series < 2 or args.rounds < 1:
        parser.error("--series must be at least 2 and --rounds at least 1")
    result = asyncio.run(run(args))
    machine = result["machine"]
    print()
    print(
        f"machine: {machine['nproc']} cores ({machine['cpu_model']}), {machine['mem_total_mib']:,} MiB RAM, "
        f"Python {machine['python']}, protobuf {machine['protobuf']}"
    )
    print(
        f"flush of {result['series']:,} active series, one process, {result['redis']}, "
        f"medians of {args.rounds}:"
    )
    print(_line("create", _median([FlushFigures(**result["create"])]), result["create"]["series"]))
    print(_line("update", result["update_median"], result["series"]))
    print(_line("idle", result["idle_median"], result["idle"][-1]["series"]))
    print(f"  peak RSS of this process (load included): {result['peak_rss_mib']} MiB")
    verdict = "ok" if result["update_median"]["seconds"] < TARGET_FLUSH_S else "MISS"
    print(f"  [{verdict}] update flush < {TARGET_FLUSH_S:g} s (Redis step + emission, without the broker)")
    path = args.json or RESULTS_DIR / f"flush-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
