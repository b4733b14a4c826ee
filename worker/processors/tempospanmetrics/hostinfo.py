"""Tempo's ``host-info`` processor: one ``traces_host_info`` info series per host seen in the spans."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.config import MetricsGeneratorConfig
from worker.model.series import (
    SERIES_ID_SEPARATOR,
    MetricDescriptor,
    MetricKind,
    Series,
    TenantDeltas,
    make_series_id,
)
from worker.otlp.batch import ResourceGroup, SpanBatch, group_request
from worker.processors.base import PipelineStats
from worker.processors.tempospanmetrics.processor import (
    RESOURCE_ATTRIBUTES,
    RESOURCE_ID,
    SCOPE_NAME,
    build_labels,
    minute_start_ns,
)

__all__ = ["HostInfoProcessor"]

_HOST_ID_LABEL = "grafana_host_id"
_HOST_SOURCE_LABEL = "host_source"


@dataclass(slots=True)
class _Stats:
    def add_to(self, total: PipelineStats) -> None:
        """The span-metrics processor counts the spans."""


class HostInfoProcessor:
    """hostinfo/processor.go: the first of ``host_identifiers`` that a resource has as a non-empty
    string gives ``traces_host_info{grafana_host_id=<value>, host_source=<attribute>} 1``."""

    def __init__(self, generator: MetricsGeneratorConfig, *, clock: Callable[[], int] = time.time_ns) -> None:
        config = generator.processor.host_info
        self.metric = config.metric_name
        self._identifiers = config.host_identifiers
        self._registry = generator.registry
        self._clock = clock
        #: tenant -> (host id, source) seen this interval.
        self._seen: dict[str, set[tuple[str, str]]] = {}

    def descriptors(self) -> list[MetricDescriptor]:
        return [MetricDescriptor(self.metric, MetricKind.INFO, scope=SCOPE_NAME, order=5)]

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> _Stats:
        # Every resource counts, with or without spans (Tempo reads each batch's resource).
        for resource, _, _ in group_request(request) if groups is None else groups:
            values = {kv.key: kv.value for kv in reversed(resource.attributes)}
            for identifier in self._identifiers:
                value = values.get(identifier)
                if value is not None and value.WhichOneof("value") == "string_value" and value.string_value:
                    self._seen.setdefault(tenant, set()).add((value.string_value, identifier))
                    break
        return _Stats()

    def expire(self, now_ns: int) -> None:
        """Nothing waits here."""

    def expire_all(self) -> None:
        """Nothing waits here."""

    def take_deltas(self) -> dict[str, TenantDeltas]:
        seen, self._seen = self._seen, {}
        now = self._clock()
        registry = self._registry
        result: dict[str, TenantDeltas] = {}
        for tenant, hosts in seen.items():
            series = []
            for host, source in sorted(hosts):
                pairs = [
                    (_HOST_ID_LABEL, host),
                    (_HOST_SOURCE_LABEL, source),
                    *registry.external_labels.items(),
                ]
                if registry.inject_tenant_id_as:
                    pairs.append((registry.inject_tenant_id_as, tenant))
                labels = build_labels(pairs, registry.max_label_name_length, registry.max_label_value_length)
                if labels is None:
                    continue
                body = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in labels)
                series.append(
                    Series(
                        series_id=make_series_id(self.metric, RESOURCE_ID, body),
                        metric=self.metric,
                        resource_id=RESOURCE_ID,
                        attributes=labels,
                        start_ns=minute_start_ns(now),
                        last_ns=now,
                        count=1,
                    )
                )
            if series:
                result[tenant] = TenantDeltas(resources={RESOURCE_ID: RESOURCE_ATTRIBUTES}, series=series)
        return result
