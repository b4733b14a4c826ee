"""Cost of the remote-write sink's publish path on the event loop: translate, encode, compress.

    python bench/remote_write_encode.py [--series 10000]

Series as the Redis store folds them (attributes serialized, a duration histogram carrying its
calls counter, one resource per 50 series); prints seconds per phase and samples per second.
"""

from __future__ import annotations

import argparse
import time

import cramjam

from worker.config import Settings
from worker.model.series import Series
from worker.model.values import attribute_parts
from worker.processors.pipeline import Pipeline
from worker.sinks.prometheus_translate import Translator
from worker.sinks.remote_write import encode_write_request, split_requests


def make_series(count: int, now_ns: int) -> tuple[dict[str, tuple[tuple[str, object], ...]], list[Series]]:
    resources = {}
    series = []
    for index in range(count):
        resource_id = f"r{index // 50}"
        resources[resource_id] = (
            ("service.name", f"svc-{index // 50}"),
            ("service.namespace", "shop"),
            ("service.instance.id", f"i-{index // 50}"),
            ("k8s.pod.name", f"pod-{index // 50}"),
        )
        attributes = (
            ("service.name", f"svc-{index // 50}"),
            ("span.name", f"GET /items/{index % 50}"),
            ("span.kind", "SPAN_KIND_SERVER"),
            ("status.code", "STATUS_CODE_UNSET"),
            ("http.request.method", "GET"),
        )
        buckets = [index % 3, 1, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
        series.append(
            Series(
                "",
                "duration",
                resource_id,
                (),
                now_ns - 60_000_000_000,
                now_ns,
                sum(buckets),
                123.4,
                buckets,
                attribute_parts=attribute_parts(attributes),
                companion="calls",
            )
        )
    return resources, series


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    args = parser.parse_args()
    now_ns = time.time_ns()
    resources, series = make_series(args.series, now_ns)
    translator = Translator(Pipeline(Settings()).descriptors())
    translator.translate(resources, series[:100], now_ns)  # warm the caches

    started = time.perf_counter()
    translated = translator.translate(resources, series, now_ns)
    translate_s = time.perf_counter() - started
    started = time.perf_counter()
    bodies = [encode_write_request(batch) for batch in split_requests(translated, 2000)]
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    compressed = [bytes(cramjam.snappy.compress_raw(body)) for body in bodies]
    compress_s = time.perf_counter() - started

    samples = sum(one.points for one in translated)
    total = translate_s + encode_s + compress_s
    print(
        f"span series {args.series}  time series {len(translated)}  samples {samples}  requests {len(bodies)}"
    )
    print(
        f"translate {translate_s:.3f}s  encode {encode_s:.3f}s  snappy {compress_s:.3f}s  total {total:.3f}s"
    )
    print(
        f"{samples / total:,.0f} samples/s  raw {sum(map(len, bodies)) / 1e6:.1f} MB  "
        f"snappy {sum(map(len, compressed)) / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
