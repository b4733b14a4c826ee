"""The ``servicegraphs`` options and their Tempo defaults."""

from __future__ import annotations

from worker.config import ServiceGraphsConfig
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
