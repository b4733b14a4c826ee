"""Per-partition deltas (a Redis Cluster merges each input partition in a step of its own): the
split pipeline gives, partition by partition, exactly what the combined one gives in all."""

from __future__ import annotations

import time
from collections import Counter

from devtools.loadgen.model import TraceGenerator, build_model
from worker.config import Settings
from worker.model.series import TenantDeltas
from worker.processors.pipeline import Pipeline

SETTINGS = Settings(servicegraphs={"enabled": True})


def _counts(deltas: dict[str, TenantDeltas]) -> Counter[tuple[str, str]]:
    counted: Counter[tuple[str, str]] = Counter()
    for tenant, part in deltas.items():
        for series in part.series:
            counted[(tenant, series.series_id)] += series.count
    return counted


def test_partition_deltas_add_up_to_the_combined_ones_and_stay_apart() -> None:
    now = time.time_ns()

    def clock() -> int:  # one instant: pending edges' remaining waits compare equal
        return now

    combined, split = Pipeline(SETTINGS, clock=clock), Pipeline(SETTINGS, clock=clock)
    split.split_by_partition()
    assert split.per_partition and not combined.per_partition
    generator = TraceGenerator(build_model(services=5, seed=7), seed=7)
    for index in range(60):
        _, request = generator.trace_request(now)
        partition = index % 3
        for pipeline in (combined, split):
            pipeline.consume(request, "acme" if index % 2 else "beta", partition)
    by_partition = split.take_partition_deltas()
    assert set(by_partition) == {0, 1, 2}
    total: Counter[tuple[str, str]] = Counter()
    for deltas in by_partition.values():
        total += _counts(deltas)
    assert total == _counts(combined.take_deltas())
    assert split.take_partition_deltas() == {}  # taken: memory starts afresh
    # Pending half-edges and the service graphs' counters: per partition, and counted once.
    assert split.pending_edges() == combined.pending_edges()
    pending = split.export_pending([0, 1, 2])
    assert pending == combined.export_pending([0, 1, 2])
    assert split.servicegraphs is not None and combined.servicegraphs is not None
    assert split.servicegraphs.new_edges == combined.servicegraphs.new_edges
    # A partition given up takes its deltas and half-edges with it; the others keep theirs.
    for index in range(6):
        _, request = generator.trace_request(now)
        split.consume(request, "acme", index % 2)
    split.drop_partition(1)
    assert set(split.take_partition_deltas()) == {0}
    assert split.export_pending([1])[1] == combined.export_pending([99])[99]  # nothing pending
    restored = Pipeline(SETTINGS, clock=clock)
    restored.split_by_partition()
    restored.restore_pending(2, pending[2], now)
    assert restored.export_pending([2]) == {2: pending[2]}
