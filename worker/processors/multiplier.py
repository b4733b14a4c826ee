"""Tempo's span multiplier (processor/util GetSpanMultiplier): how many spans one sampled span stands for."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.otlp.batch import BatchSpan
from worker.processors.sampling import multiplier_from_tracestate

__all__ = ["SpanMultiplier"]


class SpanMultiplier:
    """``span_multiplier_key`` and ``enable_tracestate_span_multiplier``, read as Tempo reads them.

    The tracestate's ``ot=th:`` first (when enabled and usable), then the key's ratio among the
    span's attributes, then the resource's: 1 / ratio for a double ratio above 0; else 1.0.
    """

    __slots__ = ("_key", "_tracestate")

    def __init__(self, key: str, tracestate: bool) -> None:
        self._key = key
        self._tracestate = tracestate

    @property
    def active(self) -> bool:
        """False when every span counts 1.0: callers may skip the call."""
        return bool(self._key) or self._tracestate

    def __call__(self, resource: Mapping[str, AnyValue], span: BatchSpan) -> float:
        if self._tracestate:
            multiplier = multiplier_from_tracestate(span.trace_state)
            if multiplier > 0:
                return multiplier
        key = self._key
        if key:
            # Only a double counts (kv.Value.GetDoubleValue() reads 0 for any other type); 1 / ratio
            # is taken as Go takes it: a ratio of +Inf gives 0, a subnormal one +Inf.
            for found in (span.attributes.get(key), resource.get(key)):
                if found is not None and found.double_value > 0:
                    return 1.0 / found.double_value
        return 1.0
