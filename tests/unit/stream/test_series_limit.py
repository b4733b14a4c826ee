"""max_active_series_per_tenant counts label sets (README): a calls + duration pair is one, and
what the limit refuses shows per tenant in the emission's report (the self-metric's source)."""

from __future__ import annotations

from state.codec import attributes_of_parts
from state.memory_store import MemoryStore
from worker.model.series import (
    OVERFLOW_ATTRIBUTE,
    SERIES_ID_SEPARATOR,
    MetricDescriptor,
    MetricKind,
    Series,
    Temporality,
    TenantDeltas,
)
from worker.sinks.memory import MemorySink
from worker.stream.slots import SlotEmitter

US = 1_000
DESCRIPTORS = {
    "calls": MetricDescriptor("calls", MetricKind.SUM, order=0),
    "duration": MetricDescriptor("duration", MetricKind.HISTOGRAM, bounds=(1.0,), order=1),
}


def _pair(name: str) -> Series:
    """A span series whose duration record stands for its calls counter (same dimensions)."""
    return Series(
        series_id=f"duration{SERIES_ID_SEPARATOR}r{SERIES_ID_SEPARATOR}a={name}",
        metric="duration",
        resource_id="r",
        attributes=(("a", name),),
        start_ns=100 * US,
        last_ns=100 * US,
        count=1,
        sum=0.5,
        buckets=[1, 0],
        companion="calls",
    )


def _attributes(series: Series) -> dict[str, object]:
    parts = series.attribute_parts
    return dict(series.attributes if parts is None else attributes_of_parts(parts))


def _deltas(*names: str) -> TenantDeltas:
    return TenantDeltas(resources={"r": (("service.name", "svc"),)}, series=[_pair(n) for n in names])


async def test_the_limit_counts_label_sets_and_the_overflow_shows_per_tenant() -> None:
    store = MemoryStore(slots=1, max_exemplars=0, active_series_limit=3)
    [token] = (await store.claim([0])).values()
    await store.merge({"acme": _deltas("a", "b", "c", "d", "e"), "globex": _deltas("x")}, {0: (token, 1)})
    sink = MemorySink(DESCRIPTORS, Temporality.CUMULATIVE, 1 << 20)
    emitter = SlotEmitter(store, [sink], temporality=Temporality.CUMULATIVE)

    report = await emitter.emit({0: token}, 1_000 * US)
    # 3 label sets admitted for acme (6 data points: calls and duration each), 2 refused.
    assert await store.active_series("acme") == 3
    assert await store.active_series("globex") == 1
    assert report.overflowed == 2
    assert report.overflowed_by_tenant == {"acme": 2}
    published = {p.tenant: p.series for p in sink.take()}
    assert sorted(str(_attributes(s)["a"]) for s in published["acme"]) == ["a", "b", "c"]

    # The refused pairs went to the overflow pair, which is never refused and counts once.
    report = await emitter.emit({0: token}, 2_000 * US)
    assert report.overflowed_by_tenant == {}
    assert await store.active_series("acme") == 4
    acme = {p.tenant: p.series for p in sink.take()}["acme"]
    overflow = [s for s in acme if OVERFLOW_ATTRIBUTE in _attributes(s)]
    assert [(s.metric, s.companion, s.count) for s in overflow] == [("duration", "calls", 2)]
