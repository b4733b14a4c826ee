"""make_consumer hands the configured consumer knobs to AIOKafkaConsumer."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import KafkaConfig
from worker.stream import clients


class _Recorder:
    def __init__(self, **options: Any) -> None:
        self.options = options


@pytest.mark.parametrize(
    ("config", "wanted"),
    [
        (KafkaConfig(), {"check_crcs": True, "fetch_max_wait_ms": 500, "fetch_min_bytes": 1}),
        (
            KafkaConfig(check_crcs=False, fetch_max_wait=0.05, fetch_min_bytes=65536),
            {"check_crcs": False, "fetch_max_wait_ms": 50, "fetch_min_bytes": 65536},
        ),
    ],
)
def test_make_consumer_passes_the_knobs(
    monkeypatch: pytest.MonkeyPatch, config: KafkaConfig, wanted: dict[str, Any]
) -> None:
    monkeypatch.setattr(clients, "AIOKafkaConsumer", _Recorder)
    consumer: Any = clients.make_consumer(config)
    assert {key: consumer.options[key] for key in wanted} == wanted
    assert consumer.options["enable_auto_commit"] is False
