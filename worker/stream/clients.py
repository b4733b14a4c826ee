"""The clients built from the configuration: aiokafka (security options included) and Redis.

Auto-commit is never on: Kafka commits follow the Redis step, whose offsets are authoritative.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from worker.config import KafkaConfig, RedisConfig

__all__ = ["common_options", "kafka_start_problem", "make_consumer", "make_producer", "make_redis"]


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
        check_crcs=config.check_crcs,
        fetch_max_wait_ms=int(config.fetch_max_wait * 1000),
        fetch_min_bytes=config.fetch_min_bytes,
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


def make_redis(config: RedisConfig) -> Redis | RedisCluster:
    """The async Redis client; ``rediss://`` URLs get TLS, with a CA bundle when configured.

    ``cluster: true``: a RedisCluster started from the url's node and every ``startup_nodes``
    entry; it follows MOVED/ASK and, on connection errors (a failover), reloads the slot map and
    retries. Slots whose master is down fail alone (no full coverage required)."""
    options: dict[str, Any] = {
        "password": config.password.get_secret_value() if config.password else None,
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
    }
    if config.ssl_ca_certs:
        options["ssl_ca_certs"] = config.ssl_ca_certs
    if config.cluster:
        nodes = [
            ClusterNode(host, int(port))
            for host, _, port in (n.rpartition(":") for n in config.startup_nodes)
        ]
        return RedisCluster.from_url(
            config.url.get_secret_value(),
            startup_nodes=nodes or None,
            require_full_coverage=False,
            **options,
        )
    return Redis.from_url(config.url.get_secret_value(), **options)


def kafka_start_problem(config: KafkaConfig, exc: Exception) -> str:
    """One line for a Kafka client that did not start: which cluster, what went wrong."""
    where = f"Kafka at {config.bootstrap_servers} ({config.security_protocol})"
    if config.security_protocol.startswith("SASL") and not isinstance(exc, KafkaConnectionError):
        return (
            f"{where}: SASL {config.sasl_mechanism} login as {config.sasl_username!r} failed - check "
            f"sasl_username, sasl_password and sasl_mechanism ({type(exc).__name__}: {exc})"
        )
    text = str(exc)
    name = type(exc).__name__
    return f"{where}: {text if text.startswith(name) else f'{name}: {text}'}"
