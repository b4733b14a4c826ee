"""The ``servicegraphs`` options and their Tempo defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import ServiceGraphsConfig, load_config
from worker.model.errors import ConfigError
from worker.processors.servicegraphs import ServiceGraphsProcessor

from .helpers import CLIENT_SECONDS, MESSAGING_SECONDS, SERVER_SECONDS


def test_defaults_are_tempos() -> None:
    config = ServiceGraphsConfig()
    assert config.enabled is False
    assert config.wait == 10.0
    assert config.max_items == 10_000
    # prometheus.ExponentialBuckets(0.1, 2, 8)
    assert config.histogram_buckets == (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
    assert config.dimensions == ()
    assert config.enable_client_server_prefix is False
    assert config.peer_attributes == ("peer.service", "db.name", "db.system", "db.system.name")
    assert config.database_name_attributes == ("db.namespace", "db.name", "db.system", "db.system.name")
    assert config.enable_virtual_node_label is False
    assert config.enable_messaging_system_latency_histogram is False


def test_histograms_use_the_configured_buckets_in_seconds() -> None:
    processor = ServiceGraphsProcessor(ServiceGraphsConfig(histogram_buckets=(0.05, 0.5, 5.0)))
    by_name = {d.name: d for d in processor.descriptors()}
    assert by_name[SERVER_SECONDS].bounds == (0.05, 0.5, 5.0)
    assert by_name[CLIENT_SECONDS].bounds == (0.05, 0.5, 5.0)
    assert by_name[SERVER_SECONDS].unit == "s"
    assert MESSAGING_SECONDS not in by_name


def test_wait_accepts_durations() -> None:
    assert ServiceGraphsConfig.model_validate({"wait": "1500ms"}).wait == 1.5


def test_workers_is_accepted_with_one_warning() -> None:
    # upstream: servicegraphs/config.go Workers (default 10): goroutines sharing one 2 s expiry
    # ticker (servicegraphs.go New); here the consumer group's workers share the work.
    assert ServiceGraphsConfig().warnings == ()
    ((option, why, value),) = ServiceGraphsConfig(workers=10).warnings
    assert (option, value) == ("servicegraphs.workers", 10)
    assert "ignored" in why


def test_subprocessors_default_to_a_bare_service_graphs() -> None:
    # upstream: servicegraphs/config.go RegisterFlagsAndApplyDefaults: Request and Latency on,
    # ConnectionInfo opt-in; subprocessors.go ParseSubprocessor compares with strings.EqualFold.
    assert ServiceGraphsConfig().subprocessors == ("service-graphs-request", "service-graphs-latency")
    config = ServiceGraphsConfig(subprocessors=["Service-Graphs-Connection-Info", "service-graphs-request"])
    assert config.subprocessors == ("service-graphs-connection-info", "service-graphs-request")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "servicegraphs: {subprocessors: [service-graphs]}",
            "'service-graphs-request', 'service-graphs-latency' or 'service-graphs-connection-info'",
        ),
        ("servicegraphs: {subprocessors: []}", "service-graphs-request, service-graphs-latency"),
        ("servicegraphs: {generate_native_histograms: exponential}", "'classic', 'native' or 'both'"),
    ],
)
def test_invalid_subprocessors_or_histogram_mode_name_the_allowed_values(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "servicegraphs" in str(info.value) and expected in str(info.value)


def test_histogram_mode_defaults_to_classic() -> None:
    # upstream: servicegraphs/config.go HistogramOverride = registry.HistogramModeClassic.
    assert ServiceGraphsConfig().generate_native_histograms == "classic"
    assert ServiceGraphsConfig(generate_native_histograms="Both").generate_native_histograms == "both"
