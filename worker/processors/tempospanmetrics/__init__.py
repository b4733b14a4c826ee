"""Tempo's metrics-generator span metrics (``metrics_generator`` mode): Tempo's series names and labels."""

from worker.processors.tempospanmetrics.processor import (
    CALLS_TOTAL,
    LATENCY,
    RESOURCE_ID,
    SCOPE_NAME,
    SIZE_TOTAL,
    TARGET_INFO,
    TempoConsumeStats,
    TempoSpanMetricsProcessor,
)

__all__ = [
    "CALLS_TOTAL",
    "LATENCY",
    "RESOURCE_ID",
    "SCOPE_NAME",
    "SIZE_TOTAL",
    "TARGET_INFO",
    "TempoConsumeStats",
    "TempoSpanMetricsProcessor",
]
