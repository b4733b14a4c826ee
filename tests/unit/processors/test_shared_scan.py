"""One walk for both compiled scanners (``_native.scan_both``) against each scanner's own walk
(``scan``, ``scan_edges``): the same verdicts and the same deltas, on generated requests and on
the seeded mutation corpora."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.unit.processors.servicegraphs import test_compiled_ingest as edges_native
from tests.unit.processors.spanmetrics import test_native as spanmetrics_native
from tests.unit.processors.spanmetrics.helpers import FakeClock, same_deltas
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.otlp.batch import parse_batch
from worker.otlp.decode import Decoded, decode_spans_proto
from worker.processors import native
from worker.processors.pipeline import NativeRun, Pipeline

SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))
needs_native = pytest.mark.skipif(
    native.load() is None, reason="compiled ingest not built (or SPANMETRICS_NO_EXTENSIONS set)"
)

SETTINGS = Settings(
    spanmetrics={"dimensions": ["http.method", "code", "region"], "exemplars": {"enabled": True}},
    servicegraphs={"enabled": True, "dimensions": ["http.method", "peer"], "enable_virtual_node_label": True},
)


def separate_walks(pipeline: Pipeline, data: bytes) -> Decoded | NativeRun:
    """``Pipeline.decode`` as it was before the shared walk: each scanner walks ``data``."""
    assert pipeline.spanmetrics is not None and pipeline.servicegraphs is not None
    parse_batch(data)  # protobuf decides what is undecodable
    scanned = pipeline.spanmetrics.scan(data)
    if scanned is None:
        return decode_spans_proto(data)
    edges = pipeline.servicegraphs.scan(data)
    if edges is None:
        return NativeRun(scanned, decode_spans_proto(data))
    return NativeRun(scanned, None, edges)


class Twins:
    def __init__(self) -> None:
        clock = FakeClock()
        self.shared = Pipeline(SETTINGS, clock=clock)
        self.separate = Pipeline(SETTINGS, clock=clock)
        assert (self.shared.ingest_path, self.shared.edges_path) == ("native", "native")
        self.outcomes = {"both": 0, "span metrics only": 0, "neither": 0, "undecodable": 0}

    def feed(self, data: bytes, partition: int = 0) -> None:
        try:
            expected = separate_walks(self.separate, data)
        except OtlpDecodeError:
            with pytest.raises(OtlpDecodeError):
                self.shared.decode(data)
            self.outcomes["undecodable"] += 1
            return
        decoded = self.shared.decode(data)
        # The same verdicts: who reads natively, who falls back to protobuf.
        assert type(decoded) is type(expected)
        if isinstance(decoded, NativeRun) and isinstance(expected, NativeRun):
            assert (decoded.edges is None) == (expected.edges is None)
            assert (decoded.decoded is None) == (expected.decoded is None)
            if decoded.edges is not None and expected.edges is not None:
                assert len(decoded.edges) == len(expected.edges)
                assert decoded.edges.resources() == expected.edges.resources()
            self.outcomes["span metrics only" if decoded.edges is None else "both"] += 1
        else:
            self.outcomes["neither"] += 1
        assert self.shared.consume_decoded(decoded, "t", partition) == self.separate.consume_decoded(
            expected, "t", partition
        )

    def same(self) -> None:
        assert same_deltas(self.shared.take_deltas(), self.separate.take_deltas())
        assert self.shared.servicegraphs is not None and self.separate.servicegraphs is not None
        for partition in (0, 1):
            assert self.shared.servicegraphs.export_pending(
                partition
            ) == self.separate.servicegraphs.export_pending(partition)


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=spanmetrics_native.requests)
def test_generated_requests(request: ExportTraceServiceRequest) -> None:
    twins = Twins()
    twins.feed(request.SerializeToString())
    twins.same()


@needs_native
@pytest.mark.parametrize("seed", [23 + n for n in range(SCALE)])
def test_seeded_mutation_corpora(seed: int) -> None:
    rng = random.Random(seed)
    corpora = (
        (edges_native._seed_records(rng), edges_native._mutate),
        (spanmetrics_native._seed_records(rng), lambda r, d: spanmetrics_native._mutate(r, d)),
    )
    twins = Twins()
    for round_ in range(3000):
        seeds, mutate = corpora[round_ % 2]
        run = [rng.choice(seeds) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.8:
            run[rng.randrange(len(run))] = mutate(rng, run[-1])
        twins.feed(b"".join(run), round_ % 2)
        if round_ % 100 == 0:
            twins.same()
    twins.same()
    outcomes = twins.outcomes
    assert outcomes["both"] > 500 and outcomes["neither"] > 5 and outcomes["undecodable"] > 100, outcomes


@needs_native
def test_edges_declined_alone() -> None:
    """A value only the service graphs read, that their scan leaves to protobuf (a oneof given
    twice): span metrics stay native, the service graphs decode with protobuf, as before."""
    rng = random.Random(3)
    record = spanmetrics_native._seed_records(rng)[0]
    request = ExportTraceServiceRequest.FromString(record)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.kind = span.SPAN_KIND_CLIENT
    span.attributes.add(key="peer").value.string_value = "@@@@"
    twice = b"\x0a\x01a\x0a\x01b"  # string_value "a", then "b": the last wins
    data = request.SerializeToString().replace(b"\x0a\x04@@@@", twice)
    assert len(data) == len(request.SerializeToString())
    twins = Twins()
    twins.feed(data)
    twins.feed(record)
    twins.same()
    assert twins.outcomes["span metrics only"] == 1 and twins.outcomes["both"] == 1, twins.outcomes
