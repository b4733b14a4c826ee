"""A processor that raises on a marked span, on the pure and on the compiled path: the poison
tests' stand-in for a record whose processing fails (README, "poison")."""

from __future__ import annotations

from typing import Any

import pytest

from worker.otlp.batch import ResourceGroup, group_request, parse_batch
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

__all__ = ["poisoned", "raise_on_poison"]


def poisoned(request: Any, groups: list[ResourceGroup] | None) -> bool:
    groups = group_request(request) if groups is None else groups
    return any(
        "poison" in span.attributes for _, _, scopes in groups for _, spans in scopes for span in spans
    )


def raise_on_poison(monkeypatch: pytest.MonkeyPatch, processor: type[Any]) -> None:
    """``processor`` aggregates the request as usual, then raises when a span is marked."""
    original = processor.consume

    def consume(self: Any, request: Any, tenant: str, partition: int = 0, *, groups: Any = None) -> Any:
        stats = original(self, request, tenant, partition, groups=groups)
        if poisoned(request, groups):
            raise RuntimeError("poisoned span")
        return stats

    monkeypatch.setattr(processor, "consume", consume)
    if processor is SpanMetricsProcessor:
        # The compiled ingest's entry point raises alike (see Pipeline.decode).
        original_scanned = SpanMetricsProcessor.consume_scanned

        def consume_scanned(self: Any, scanned: Any, tenant: str) -> Any:
            stats = original_scanned(self, scanned, tenant)
            if poisoned(parse_batch(scanned.data), None):
                raise RuntimeError("poisoned span")
            return stats

        monkeypatch.setattr(SpanMetricsProcessor, "consume_scanned", consume_scanned)
    if processor is ServiceGraphsProcessor:
        # The compiled edge scan keeps only the attributes the processor reads: the marker is
        # noted at the scan (Pipeline.decode), which precedes the run's consume_scanned.
        original_scan = ServiceGraphsProcessor.scan
        original_edges = ServiceGraphsProcessor.consume_scanned
        marked: list[bool] = []

        def scan(self: Any, data: bytes) -> Any:
            marked[:] = [poisoned(parse_batch(data), None)]
            return original_scan(self, data)

        def consume_edges(self: Any, scanned: Any, tenant: str, partition: int = 0) -> Any:
            stats = original_edges(self, scanned, tenant, partition)
            if marked == [True]:
                raise RuntimeError("poisoned span")
            return stats

        # Pipeline.decode reads the edges in the span-metrics scan's walk: noted there too.
        original_both = SpanMetricsProcessor.scan_with_edges

        def scan_with_edges(self: Any, data: bytes, keys: Any, slow: Any) -> Any:
            marked[:] = [poisoned(parse_batch(data), None)]
            return original_both(self, data, keys, slow)

        monkeypatch.setattr(ServiceGraphsProcessor, "scan", scan)
        monkeypatch.setattr(SpanMetricsProcessor, "scan_with_edges", scan_with_edges)
        monkeypatch.setattr(ServiceGraphsProcessor, "consume_scanned", consume_edges)
