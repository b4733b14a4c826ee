"""aiokafka clients built from :class:`~worker.config.KafkaConfig`, security options included.

Auto-commit is always off: Kafka commits follow the Redis step, whose offsets are authoritative.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from worker.config import KafkaConfig

__all__ = ["common_options", "make_consumer", "make_producer"]


def common_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security options shared by consumer, producer and admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": int(config.request_timeout * 1000),
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=config.ssl_cafile, certfile=config.ssl_certfile, keyfile=config.ssl_keyfile
        )
        context.check_hostname = config.ssl_check_hostname
        options["ssl_context"] = context
    if config.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = (
            config.sasl_password.get_secret_value() if config.sasl_password else None
        )
    return options


def make_consumer(config: KafkaConfig) -> AIOKafkaConsumer:
    options = common_options(config)
    options.pop("request_timeout_ms")
    return AIOKafkaConsumer(
        group_id=config.group_id,
        group_instance_id=config.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(config.session_timeout * 1000),
        heartbeat_interval_ms=int(config.heartbeat_interval * 1000),
        max_poll_interval_ms=int(config.max_poll_interval * 1000),
        fetch_max_bytes=config.fetch_max_bytes,
        max_partition_fetch_bytes=config.max_partition_fetch_bytes,
        max_poll_records=config.max_poll_records,
        request_timeout_ms=int(config.request_timeout * 1000),
        **options,
    )


def make_producer(config: KafkaConfig) -> AIOKafkaProducer:
    compression = None if config.compression_type == "none" else config.compression_type
    return AIOKafkaProducer(
        acks="all",
        compression_type=compression,
        max_request_size=max(config.output_max_record_bytes * 2, 1048576),
        linger_ms=5,
        **common_options(config),
    )
