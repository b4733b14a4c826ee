"""The compiled encoder (``worker.otlp._encode``) against the pure one, its reference: the same
requests byte for byte (data, key, data points), the same exception, the same fitted series."""

from __future__ import annotations

import copy
import itertools
import math
import random
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config import DEFAULT_HISTOGRAM_BUCKETS
from worker.model.exphistogram import ExpHistogram
from worker.model.extensions import NO_EXTENSIONS_ENV, load
from worker.model.series import Attributes, MetricDescriptor, MetricKind, Series, Temporality
from worker.model.values import attribute_parts
from worker.otlp import metrics_encoder
from worker.otlp.metrics_encoder import encode_requests, encode_slot

COMPILED = load("worker.otlp._encode")
pytestmark = pytest.mark.skipif(COMPILED is None, reason="compiled encoder not built")

NOW = 1_700_000_000_123_456_789
START = 1_699_999_000_000_000_000
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

CALLS = MetricDescriptor("traces.span.metrics.calls", MetricKind.SUM, order=0)
DURATION = MetricDescriptor(
    "traces.span.metrics.duration", MetricKind.HISTOGRAM, unit="ms", bounds=DEFAULT_HISTOGRAM_BUCKETS, order=1
)
GRAPH_TOTAL = MetricDescriptor(
    "traces_service_graph_request_total", MetricKind.SUM, description="Total count", scope="graphs", order=0
)
GRAPH_SECONDS = MetricDescriptor(
    "traces_service_graph_request_server_seconds",
    MetricKind.HISTOGRAM,
    unit="s",
    bounds=(0.1, -0.0, 10.0),
    scope="graphs",
    order=1,
)
NO_BOUNDS = MetricDescriptor("plain.histogram", MetricKind.HISTOGRAM, scope="ünïcode scope", order=0)
INFO = MetricDescriptor("traces_service_graph_connection_info", MetricKind.INFO, scope="graphs", order=2)
EXP = MetricDescriptor("exp", MetricKind.EXPONENTIAL_HISTOGRAM, scope="exp-scope")
DESCRIPTORS = {d.name: d for d in (CALLS, DURATION, GRAPH_TOTAL, GRAPH_SECONDS, NO_BOUNDS, INFO, EXP)}
ZERO_DESCRIPTORS = {
    name: MetricDescriptor(
        d.name, d.kind, d.unit, d.description, d.bounds, d.scope, d.order, zero_init=True, key=d.key
    )
    for name, d in DESCRIPTORS.items()
}
RESOURCES: dict[str, Attributes] = {
    "r1": (("service.name", "frontend"), ("host.name", "node-1")),
    "r2": (("service.name", "cart"), ("k8s.pod.uid", b"\x00\x01"), ("replicas", 3), ("ratio", -0.0)),
    "r3": (("service.name", "x" * 100), ("nested", {"a": [1, "ü", None]})),
    "r4": (),
}

_UINT64 = st.integers(0, UINT64_MAX)
#: Values outside every OTLP field, or of a type the fields do not expect: a few series get one.
_odd_ints = st.sampled_from([INT64_MAX + 1, -(2**63) - 1, UINT64_MAX + 1, -1, 2**70])
_odd = st.one_of(_odd_ints, st.sampled_from([True, False, 2.0, -1.5, None, "1", 2**1030]))
_floats = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, 5e-324]))
_scalars = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, INT64_MAX, -(2**63)]),
    st.booleans(),
    _floats,
    st.binary(max_size=6),
    st.none(),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
_keys = st.sampled_from(["a", "service.name", "", "ключ", "😀"]) | st.text(max_size=5)
_shared = st.sampled_from(
    [
        (("service.name", "frontend"), ("span.name", "GET /api"), ("span.kind", "SPAN_KIND_SERVER")),
        (("code", 200),),
        (("code", "200"),),
        (("flag", True),),
        (),
    ]
)
_attributes = _shared | st.lists(st.tuples(_keys, _values), max_size=4).map(tuple)
_count = st.integers(0, 1000) | st.integers(0, INT64_MAX) | st.sampled_from([0, INT64_MAX])
_time = st.one_of(st.just(START), st.just(0), _UINT64)
_exemplar = st.tuples(st.binary(max_size=16), st.binary(max_size=8), _floats, _time)
_odd_exemplar = st.tuples(
    st.binary(max_size=16) | st.just(bytearray(b"\x01")),
    st.binary(max_size=8),
    _floats | st.integers(-5, 5) | st.just(True),
    _time | _odd_ints,
)
_exemplars = st.lists(_exemplar, max_size=3)
_odd_exemplars = st.one_of(
    st.lists(_odd_exemplar, min_size=1, max_size=3),
    st.lists(_exemplar, min_size=1, max_size=2).map(lambda found: [list(one) for one in found]),
    st.just(()),
)


@st.composite
def _buckets(draw: st.DrawFn, size: int) -> Any:
    return draw(
        st.none()
        | st.just([])
        | st.lists(st.integers(0, 1000) | st.just(UINT64_MAX), min_size=size, max_size=size)
        | st.lists(st.integers(0, 50), max_size=5)
    )


@st.composite
def _odd_buckets(draw: st.DrawFn, size: int) -> Any:
    return draw(
        st.lists(st.integers(0, 5) | _odd_ints, min_size=size, max_size=size)
        | st.lists(st.integers(0, 5), min_size=size, max_size=size).map(tuple)
        | st.lists(st.just(1.0), min_size=size, max_size=size)
    )


@st.composite
def _exp(draw: st.DrawFn) -> ExpHistogram | None:
    if draw(st.booleans()):
        return None
    minimum = draw(st.none() | st.floats(0, 10))
    return ExpHistogram(
        scale=draw(st.integers(-10, 20)),
        zero_count=draw(st.integers(0, UINT64_MAX)),
        offset=draw(st.integers(-(2**31), 2**31 - 1)),
        counts=draw(st.lists(st.integers(0, UINT64_MAX), max_size=6)),
        min=minimum,
        max=None if minimum is None else minimum + 1,
    )


@st.composite
def _series(draw: st.DrawFn) -> Series:
    metric = draw(st.sampled_from([*DESCRIPTORS, "unknown"]))
    size = len(DESCRIPTORS[metric].bounds) + 1 if metric in DESCRIPTORS else 1
    attributes = draw(_attributes)
    one = Series(
        series_id="",
        metric=metric,
        resource_id=draw(st.sampled_from([*RESOURCES, "gone"])),
        attributes=attributes,
        start_ns=draw(_time),
        last_ns=START,
        count=draw(_count),
        sum=draw(_floats),
        buckets=draw(_buckets(size)),
        exp=draw(_exp()),
        exemplars=draw(_exemplars),
        companion=draw(st.sampled_from([None, None, CALLS.name, GRAPH_TOTAL.name, "unknown"])),
        zero_ns=draw(st.sampled_from([0, 0, NOW - 60 * 10**9, NOW, NOW + 1]) | _time),
    )
    odd = draw(st.integers(0, 15))  # one series in 16 or so gets one unusual value
    if odd == 1:
        one.count = draw(_odd)
    elif odd == 2:
        one.start_ns = draw(_odd)
    elif odd == 3:
        one.sum = draw(_odd | st.integers(-5, 5))
    elif odd == 4:
        one.buckets = draw(_odd_buckets(size))
    elif odd == 5:
        one.exemplars = draw(_odd_exemplars)
    elif odd == 6:
        one.zero_ns = draw(_odd | st.just(NOW - 1))
    how = draw(st.sampled_from(["tuple", "parts", "parts-tuple", "parts-odd"]))
    if how != "tuple":
        try:
            parts: Any = attribute_parts(attributes)
        except (ValueError, OverflowError):
            return one  # not representable as parts: keep the tuple
        if how == "parts-tuple":
            parts = tuple(parts)
        elif how == "parts-odd" and parts:
            parts[0] = bytearray(parts[0])
        one.attribute_parts = parts
        one.attributes = ()
    return one


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", [(r.data, r.key, r.series) for r in call()]
    except Exception as error:  # the same exception type on both paths
        return "error", type(error)


def _both(
    items: list[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
    max_bytes: int,
    slot: bool,
) -> tuple[tuple[str, Any], tuple[str, Any], list[Series], list[Series]]:
    """(pure outcome, native outcome, the series after each): each on its own copy."""
    results = []
    for native in (None, COMPILED):
        mine = copy.deepcopy(items)
        metrics_encoder._native = native
        encode = encode_slot if slot else encode_requests
        try:
            outcome = _outcome(
                lambda mine=mine, encode=encode: encode(
                    RESOURCES, mine, descriptors, temporality, now_ns, max_bytes
                )
            )
        finally:
            metrics_encoder._native = COMPILED
        results.append((outcome, mine))
    (pure, pure_items), (native_outcome, native_items) = results
    return pure, native_outcome, pure_items, native_items


def _fields(items: list[Series]) -> list[tuple[Any, ...]]:
    return [
        (
            repr(one.count),
            repr(one.buckets),
            repr(one.exemplars),
            None if one.exp is None else (one.exp.zero_count, tuple(one.exp.counts)),
        )
        for one in items
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(_series(), max_size=20),
    temporality=st.sampled_from(list(Temporality)),
    now_ns=st.sampled_from([NOW, 0, UINT64_MAX]),
    max_bytes=st.sampled_from([-5, 0, 1, 1 << 20, 1 << 70]) | st.integers(1, 3000),
    zero_init=st.booleans(),
    slot=st.booleans(),
)
def test_property_native_writes_the_pure_bytes(
    items: list[Series], temporality: Temporality, now_ns: int, max_bytes: int, zero_init: bool, slot: bool
) -> None:
    descriptors = ZERO_DESCRIPTORS if zero_init else DESCRIPTORS
    pure, native, pure_items, native_items = _both(items, descriptors, temporality, now_ns, max_bytes, slot)
    assert native == pure
    assert _fields(native_items) == _fields(pure_items)


def _span_series(count: int, resources: int = 3) -> Iterator[Series]:
    for index in range(count):
        attributes = (("service.name", f"s{index % resources}"), ("span.name", f"op{index}"), ("n", index))
        one = Series(
            "",
            DURATION.name,
            f"r{index % resources + 1}",
            (),
            START + index,
            START,
            count=index + 1,
            sum=index * 1.5,
            buckets=[index % 7] * (len(DEFAULT_HISTOGRAM_BUCKETS) + 1),
            exemplars=[(bytes(16), bytes([index % 256]) * 8, 0.25, START)] if index % 3 == 0 else [],
            attribute_parts=attribute_parts(attributes),
            companion=CALLS.name,
            zero_ns=NOW - 1 if index % 5 == 0 else 0,
        )
        yield one


@pytest.mark.parametrize("max_bytes", [1, 500, 3000, 20_000, 1 << 20])
@pytest.mark.parametrize("temporality", list(Temporality))
def test_a_flush_of_paired_series_splits_the_same(max_bytes: int, temporality: Temporality) -> None:
    """Many series per resource, so resources are split into pieces and pieces share requests."""
    items = list(_span_series(300))
    pure, native, _, _ = _both(items, ZERO_DESCRIPTORS, temporality, NOW, max_bytes, slot=True)
    assert pure[0] == "ok"
    assert native == pure
    if max_bytes < 1 << 20:
        assert len(native[1]) > 1


def test_nothing_to_encode() -> None:
    for max_bytes in (1, 1 << 20):
        assert _both([], DESCRIPTORS, Temporality.CUMULATIVE, NOW, max_bytes, slot=True)[1] == ("ok", [])


def test_the_compiled_encoder_is_the_default_and_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert metrics_encoder.encode_path() == "native"
    monkeypatch.setenv(NO_EXTENSIONS_ENV, "1")
    assert load("worker.otlp._encode") is None


def test_other_threads_run_while_a_large_slot_is_encoded() -> None:
    """The encoder runs in a thread beside the event loop: it hands the GIL over as it goes
    (a call that held it throughout would let the other thread run only after it returned)."""
    assert COMPILED is not None
    items = list(_span_series(100_000, resources=20))
    plans = metrics_encoder._plans(DESCRIPTORS, 2, NOW, False)
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.01)
        started = time.perf_counter()
        COMPILED.fit_all(items, metrics_encoder.fit_otlp)
        requests = COMPILED.encode(
            items, plans, NOW, 1 << 20, lambda _: b"", metrics_encoder._point_attributes
        )
        ended = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
        sys.setswitchinterval(interval)
    assert requests is not None
    # The other thread's longest wait during the call (its ticks around the call included):
    # about the call's length if the GIL were held throughout, a few ms when handed over.
    around = [t for t in ticks if t <= started][-1:] + [t for t in ticks if started < t < ended]
    around += [t for t in ticks if t >= ended][:1]
    longest = max(later - earlier for earlier, later in itertools.pairwise(around))
    assert longest < 0.5 * (ended - started), f"waited {longest:.3f} s of {ended - started:.3f} s"


class _LikeSeries:
    """Not a Series: the compiled encoder reads its fields by getattr."""

    def __init__(self, one: Series) -> None:
        for name in Series.__slots__:
            setattr(self, name, getattr(one, name))


def test_series_fields_are_read_at_their_slots_and_other_objects_by_getattr() -> None:
    assert COMPILED is not None
    assert COMPILED.fields_at_slots()
    items = list(_span_series(40))
    expected = _both(items, ZERO_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 2000, slot=False)[0]
    duck: list[Any] = [_LikeSeries(one) for one in items]
    assert _both(duck, ZERO_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 2000, slot=False)[1] == expected


#: Replacement values for one field of a realistic series: the edges of each OTLP field, values
#: past them, and values of other types.
_MUTATIONS: dict[str, list[Any]] = {
    "count": [0, 1, -1, INT64_MAX, INT64_MAX + 1, UINT64_MAX + 1, True, 2.5, None],
    "start_ns": [0, UINT64_MAX, UINT64_MAX + 1, -1, False, 1.0],
    "zero_ns": [0, NOW - 1, NOW, NOW + 1, -1, UINT64_MAX + 1, None, 1.5],
    "sum": [0.0, -0.0, math.nan, math.inf, -math.inf, 7, 2**1100, True, None],
    "buckets": [None, [], [1, 2], [0] * 17, [UINT64_MAX] * 17, [UINT64_MAX + 1] * 17, (1,) * 17, [1.0] * 17],
    "exemplars": [
        [],
        [(b"", b"", 0.0, 0)],
        [(bytes(16), bytes(8), math.nan, UINT64_MAX + 1)],
        [(bytes(16), bytes(8), 1, -1)],
        [[bytes(16), bytes(8), 1.0, 1]],
        [(bytearray(16), bytes(8), 1.0, 1)],
        [(bytes(16), bytes(8), 1.0)],
        (),
        None,
    ],
    "attribute_parts": [None, [], [b""], [b"\x0a\x01a"], (b"\x0a\x01a",), [bytearray(b"\x0a\x01a")], [1]],
    "companion": [None, CALLS.name, GRAPH_TOTAL.name, DURATION.name, "unknown"],
    "metric": [CALLS.name, DURATION.name, INFO.name, EXP.name, NO_BOUNDS.name, "unknown"],
    "resource_id": ["r1", "r4", "gone"],
}


@pytest.mark.parametrize("seed", range(8))
def test_mutated_series_give_the_pure_outcome(seed: int) -> None:
    """A seeded fuzz corpus: realistic flushes with one to three fields of some series replaced."""
    rng = random.Random(seed)
    for _ in range(60):
        items = list(_span_series(rng.randrange(1, 12), resources=rng.randrange(1, 4)))
        for one in rng.sample(items, rng.randrange(1, len(items) + 1)):
            for name in rng.sample(sorted(_MUTATIONS), rng.randrange(1, 4)):
                setattr(one, name, copy.copy(rng.choice(_MUTATIONS[name])))
        max_bytes = rng.choice([1, 150, 700, 5000, 1 << 20])
        descriptors = rng.choice([DESCRIPTORS, ZERO_DESCRIPTORS])
        temporality = rng.choice(list(Temporality))
        slot = rng.random() < 0.5
        pure, native, pure_items, native_items = _both(items, descriptors, temporality, NOW, max_bytes, slot)
        assert native == pure
        assert _fields(native_items) == _fields(pure_items)
