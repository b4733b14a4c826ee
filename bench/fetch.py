"""The consumer alone: aiokafka's ``getmany`` against the worker's fetch drain (worker.stream.fetch),
reading the same records off a real broker, rounds alternating; records/s and CPU us per record.

    python bench/fetch.py                      # shape A: 50,000 records of ~2.7 kB
    python bench/fetch.py --records 2000 --value-bytes 318000   # shape B-like
    python bench/fetch.py --no-check-crcs
    python bench/fetch.py --fetch-max-bytes 52428800   # aiokafka's default fetch size
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.servers import create_topics, kafka_from_env_or_embedded
from worker.config import KafkaConfig
from worker.stream.fetch import COMPILED_PARSE, Reader

PARTITIONS = 8


async def produce(bootstrap: str, topic: str, records: int, value_bytes: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=1 << 24)
    await producer.start()
    try:
        body = os.urandom(value_bytes)
        futures = []
        for i in range(records):
            value = i.to_bytes(8, "big") + body[8:]
            futures.append(await producer.send(topic, value, key=os.urandom(16), partition=i % PARTITIONS))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, records: int, drain: str, check_crcs: bool, **fetch: Any
) -> tuple[float, float]:
    """Wall and CPU seconds from the first getmany to the last record."""
    defaults = KafkaConfig(**fetch)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        check_crcs=check_crcs,
        fetch_max_bytes=defaults.fetch_max_bytes,
        max_partition_fetch_bytes=defaults.max_partition_fetch_bytes,
        fetch_max_wait_ms=int(defaults.fetch_max_wait * 1000),
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        get: Any = consumer.getmany
        if drain == "fast":
            reader = Reader(consumer)
            assert reader.fast, reader.unsupported
            get = reader.getmany
        seen = size = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while seen < records:
            batch = await get(timeout_ms=1000, max_records=defaults.max_poll_records)
            for got in batch.values():
                for record in got:
                    size += len(record.value or b"")
                seen += len(got)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await consumer.stop()


async def main(args: argparse.Namespace) -> None:
    if COMPILED_PARSE is None:
        raise SystemExit("the compiled record parser is not built (pip install -e .)")
    server = kafka_from_env_or_embedded()
    try:
        topic = f"bench-fetch-{uuid.uuid4().hex[:8]}"
        await create_topics(server.bootstrap_servers, {topic: PARTITIONS})
        await produce(server.bootstrap_servers, topic, args.records, args.value_bytes)
        fetch = {
            name: value
            for name, value in (
                ("fetch_max_bytes", args.fetch_max_bytes),
                ("max_partition_fetch_bytes", args.max_partition_fetch_bytes),
            )
            if value is not None
        }
        results: dict[str, list[tuple[float, float]]] = {"getmany": [], "fast": []}
        for index in range(args.rounds):
            for drain in ("getmany", "fast") if index % 2 == 0 else ("fast", "getmany"):
                results[drain].append(
                    await read_all(
                        server.bootstrap_servers,
                        topic,
                        args.records,
                        drain,
                        not args.no_check_crcs,
                        **fetch,
                    )
                )
        print(
            f"{args.records:,} records of {args.value_bytes:,} B, {PARTITIONS} partitions, "
            f"check_crcs={not args.no_check_crcs}, {args.rounds} rounds (medians), "
            f"fetch options {fetch or 'the worker defaults'}"
        )
        medians = {}
        for drain, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            medians[drain] = (wall, cpu)
            print(
                f"  {drain:8} {args.records / wall:12,.0f} records/s   "
                f"{cpu / args.records * 1e6:7.2f} us CPU/record   (walls {[round(w, 3) for w, _ in runs]})"
            )
        base, fast = medians["getmany"], medians["fast"]
        print(f"  fast / getmany: rate x{base[0] / fast[0]:.2f}, CPU per record x{fast[1] / base[1]:.2f}")
    finally:
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--value-bytes", type=int, default=2_700)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-check-crcs", action="store_true")
    parser.add_argument("--fetch-max-bytes", type=int, help="kafka.fetch_max_bytes (default: the worker's)")
    parser.add_argument(
        "--max-partition-fetch-bytes", type=int, help="kafka.max_partition_fetch_bytes (default: worker's)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
