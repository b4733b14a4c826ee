"""The ``metrics_generator`` block: Tempo's keys and defaults, and the keys refused with their reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import TEMPO_SPAN_METRICS_BUCKETS, Settings, load_config
from worker.model.errors import ConfigError
from worker.model.series import Temporality


def _load(tmp_path: Path, document: dict[str, Any]) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_config(path)


def _error(tmp_path: Path, document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, document)
    return str(raised.value)


def test_defaults_are_tempos(tmp_path: Path) -> None:
    # upstream: spanmetrics/config.go, registry/config.go, generator/config.go RegisterFlagsAndApplyDefaults.
    settings = _load(tmp_path, {"metrics_generator": {"processors": ["span-metrics"]}})
    generator = settings.metrics_generator
    assert generator is not None
    span_metrics = generator.processor.span_metrics
    assert span_metrics.histogram_buckets == TEMPO_SPAN_METRICS_BUCKETS
    assert TEMPO_SPAN_METRICS_BUCKETS[0] == 0.002 and TEMPO_SPAN_METRICS_BUCKETS[-1] == 16.384
    assert len(TEMPO_SPAN_METRICS_BUCKETS) == 14
    intrinsic = span_metrics.intrinsic_dimensions
    assert (intrinsic.service, intrinsic.span_name, intrinsic.span_kind, intrinsic.status_code) == (True,) * 4
    assert intrinsic.status_message is False
    assert (span_metrics.enable_target_info, span_metrics.enable_instance_label) == (False, True)
    registry = generator.registry
    assert (registry.collection_interval, registry.stale_duration) == (15.0, 900.0)
    assert (registry.max_label_name_length, registry.max_label_value_length) == (1024, 2048)
    assert generator.generate_native_histograms.value == "classic"
    assert generator.native_initial_scale == 3
    assert generator.metrics_ingestion_time_range_slack is None
    # The worker's settings come from the Tempo block.
    assert (settings.flush_interval, settings.temporality, settings.series_expiration) == (
        15.0,
        Temporality.CUMULATIVE,
        900.0,
    )
    assert settings.exponential_max_size == 100
    assert settings.service_graphs.enabled is False


def test_registry_sets_the_flush_interval_and_expiry(tmp_path: Path) -> None:
    document = {
        "metrics_generator": {
            "processors": ["span-metrics"],
            "registry": {"collection_interval": "30s", "stale_duration": "5m"},
        }
    }
    settings = _load(tmp_path, document)
    assert (settings.flush_interval, settings.series_expiration) == (30.0, 300.0)


def test_both_styles_in_one_file_is_an_error(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        {"metrics_generator": {"processors": ["span-metrics"]}, "spanmetrics": {"namespace": "x"}},
    )
    assert "metrics_generator and spanmetrics are both configured" in message
    message = _error(
        tmp_path,
        {"metrics_generator": {"processors": ["service-graphs"]}, "servicegraphs": {"enabled": True}},
    )
    assert "metrics_generator and servicegraphs are both configured" in message


def test_processors_are_required_and_known(tmp_path: Path) -> None:
    # upstream: validation/fields.go ValidateProcessor (SupportedProcessors).
    assert "list at least one processor" in _error(tmp_path, {"metrics_generator": {}})
    message = _error(tmp_path, {"metrics_generator": {"processors": ["span-metric"]}})
    assert "'span-metric' is not a known processor (allowed: service-graphs," in message
    message = _error(tmp_path, {"metrics_generator": {"processors": ["local-blocks"]}})
    assert "'local-blocks' cannot apply here: TraceQL metrics read Tempo's own blocks" in message


def test_service_graph_subprocessors(tmp_path: Path) -> None:
    # upstream: instance.go updateServiceGraphsSubprocessors (bare service-graphs: request and
    # latency; connection-info opt-in).
    def parts(*processors: str) -> frozenset[str]:
        settings = _load(tmp_path, {"metrics_generator": {"processors": list(processors)}})
        assert settings.metrics_generator is not None
        return settings.metrics_generator.service_graph_subprocessors

    assert parts("service-graphs") == {"request", "latency"}
    assert parts("service-graphs", "service-graphs-connection-info") == {
        "request",
        "latency",
        "connection-info",
    }
    assert parts("service-graphs-request") == {"request"}
    assert parts("span-metrics") == frozenset()


def test_service_graphs_run_from_the_processor_list(tmp_path: Path) -> None:
    document = {
        "metrics_generator": {
            "processors": ["service-graphs"],
            "processor": {"service_graphs": {"wait": "2s", "dimensions": ["beast"]}},
        }
    }
    graphs = _load(tmp_path, document).service_graphs
    assert (graphs.enabled, graphs.wait, graphs.dimensions) == (True, 2.0, ("beast",))
    message = _error(
        tmp_path,
        {
            "metrics_generator": {
                "processors": ["service-graphs"],
                "processor": {"service_graphs": {"enabled": True}},
            }
        },
    )
    assert "metrics_generator.processor.service_graphs.enabled cannot apply here" in message


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("storage", {"path": "/var/tempo"}, "Prometheus remote write; this worker publishes OTLP metrics"),
        ("ring", {"kvstore": {"store": "memberlist"}}, "Kafka consumer group (kafka.group_id"),
        ("codec", "push-bytes", "Tempo's push-bytes records are not read"),
        ("max_active_series", 1000, "use worker.max_active_series_per_tenant"),
        ("span_name_sanitization", "enabled", "DRAIN span-name sanitization is not implemented"),
        ("skip_stale_backlog_on_startup", True, "skipping backlog would lose spans"),
        ("ingestion_time_range_slack", "30s", "write metrics_generator.metrics_ingestion_time_range_slack"),
        ("native_histogram_min_reset_duration", "15m", "never reset"),
        ("trace_id_label_name", "trace_id", "the label name is chosen by the exporter"),
        ("max_cardinality_per_label", 100, "per-label cardinality limiter is not implemented"),
        ("ingest_concurrency", 16, "scale out with more workers"),
        ("instance_id", "gen-1", "kafka.group_instance_id for static membership"),
    ],
)
def test_refused_keys_say_why(tmp_path: Path, key: str, value: Any, reason: str) -> None:
    message = _error(tmp_path, {"metrics_generator": {"processors": ["span-metrics"], key: value}})
    assert f"metrics_generator.{key} cannot apply here: " in message
    assert reason in message


def test_entity_limiter_is_refused(tmp_path: Path) -> None:
    # upstream: generator/config.go Validate (limiter_type series or entity).
    message = _error(
        tmp_path, {"metrics_generator": {"processors": ["span-metrics"], "limiter_type": "entity"}}
    )
    assert "limiter_type 'entity' cannot apply here" in message


def test_mapping_colliding_with_a_dimension_is_refused(tmp_path: Path) -> None:
    # upstream: TestValidationErrors "dimension collision after remapping" (two dimensions that
    # sanitize alike are accepted: "dimension collision ignored").
    span_metrics = {
        "dimensions": ["foo_bar"],
        "dimension_mappings": [{"name": "foo_bar", "source_labels": ["foo.bar"]}],
    }
    message = _error(
        tmp_path,
        {"metrics_generator": {"processors": ["span-metrics"], "processor": {"span_metrics": span_metrics}}},
    )
    assert (
        "dimension_mappings: 'foo_bar' produces label 'foo_bar' which collides with dimension 'foo_bar'"
        in message
    )
    fine = {"dimensions": ["deployment_environment", "deployment.environment"]}
    _load(
        tmp_path, {"metrics_generator": {"processors": ["span-metrics"], "processor": {"span_metrics": fine}}}
    )


def test_buckets_must_increase(tmp_path: Path) -> None:
    # upstream: validation/fields.go ValidateHistogramBuckets.
    span_metrics = {"histogram_buckets": [1, 0.5]}
    message = _error(
        tmp_path,
        {"metrics_generator": {"processors": ["span-metrics"], "processor": {"span_metrics": span_metrics}}},
    )
    assert "bucket boundaries must be strictly increasing" in message


def test_native_histogram_mode_values(tmp_path: Path) -> None:
    # upstream: validation/fields.go ValidateHistogramMode (classic, native, both).
    message = _error(
        tmp_path, {"metrics_generator": {"processors": ["span-metrics"], "generate_native_histograms": "exp"}}
    )
    assert "generate_native_histograms" in message and "'classic', 'native' or 'both'" in message


def test_unknown_span_metrics_key_lists_the_allowed(tmp_path: Path) -> None:
    span_metrics = {"histogram_bucket": [1]}
    message = _error(
        tmp_path,
        {"metrics_generator": {"processors": ["span-metrics"], "processor": {"span_metrics": span_metrics}}},
    )
    expected = "metrics_generator.processor.span_metrics.histogram_bucket: unknown option (allowed: "
    assert expected + "dimension_mappings, dimensions," in message


def test_tempo_service_graph_workers_warns(tmp_path: Path) -> None:
    # Tempo's processor.service_graphs.workers (default 10) is accepted and ignored, with a warning.
    document = {
        "metrics_generator": {
            "processors": ["service-graphs"],
            "processor": {"service_graphs": {"workers": 10}},
        }
    }
    settings = _load(tmp_path, document)
    assert [option for option, _, _ in settings.warnings] == ["servicegraphs.workers"]
