"""JSON Schema for the parts of an OpenTelemetry Collector configuration the compose stack uses.

No Collector binary can run here (none is published on PyPI or npm with the kafka receiver), so
the configuration is checked against the documented options of the pinned version,
``otel/opentelemetry-collector-contrib:0.150.0``, with unknown keys rejected, which is what the
Collector itself does at start ("has invalid keys").

Sources, from the contrib repository's documentation and config schemas:

* kafka receiver (``receiver/kafkareceiver``): README "Getting Started" and config.schema.yaml,
  plus the shared client/consumer options of ``pkg/kafka/configkafka``. ``<signal>::topics`` (a
  list) replaced ``<signal>::topic`` in v0.141.0 (PR #44575); the old key is still accepted,
  deprecated. Metrics encodings: ``otlp_proto`` (default) and ``otlp_json``, or an encoding
  extension's ID.
* prometheusremotewrite exporter (``exporter/prometheusremotewriteexporter``): README and
  config.schema.yaml, plus confighttp's client options, exporterhelper's timeout and
  configretry's ``retry_on_failure``. ``translation_strategy`` only arrives in v0.151.0 (PR #47714)
  and ``add_metric_suffixes`` is removed in v0.153.0, so a configuration valid for 0.150.0 and
  later sets neither and relies on the default translation (suffixes on, underscores).
"""

from __future__ import annotations

from typing import Any

#: The image tag this schema describes; test_collector checks docker-compose.yml uses it.
COLLECTOR_VERSION = "0.150.0"

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_STRING_LIST = {"type": "array", "items": {"type": "string"}}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_TLS_CLIENT = _object(
    {
        "insecure": {"type": "boolean"},
        "insecure_skip_verify": {"type": "boolean"},
        "server_name_override": {"type": "string"},
        "ca_file": {"type": "string"},
        "ca_pem": {"type": "string"},
        "cert_file": {"type": "string"},
        "cert_pem": {"type": "string"},
        "key_file": {"type": "string"},
        "key_pem": {"type": "string"},
        "include_system_ca_certs_pool": {"type": "boolean"},
        "min_version": {"type": "string"},
        "max_version": {"type": "string"},
        "cipher_suites": _STRING_LIST,
        "reload_interval": _DURATION,
        "curve_preferences": _STRING_LIST,
    }
)

_TOPIC_ENCODING = _object(
    {
        "topics": {**_STRING_LIST, "minItems": 1},
        "topic": {"type": "string"},  # deprecated since v0.141.0
        "exclude_topics": _STRING_LIST,
        "exclude_topic": {"type": "string"},  # deprecated since v0.141.0
        "encoding": {"type": "string", "minLength": 1},
    }
)

KAFKA_RECEIVER = _object(
    {
        # pkg/kafka/configkafka ClientConfig
        "brokers": {**_STRING_LIST, "minItems": 1},
        "protocol_version": {"type": "string"},
        "resolve_canonical_bootstrap_servers_only": {"type": "boolean"},
        "client_id": {"type": "string"},
        "rack_id": {"type": "string"},
        "use_leader_epoch": {"type": "boolean"},
        "conn_idle_timeout": _DURATION,
        "tls": _TLS_CLIENT,
        "auth": _object(
            {
                "sasl": _object(
                    {
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                        "mechanism": {
                            "enum": [
                                "PLAIN",
                                "SCRAM-SHA-256",
                                "SCRAM-SHA-512",
                                "AWS_MSK_IAM_OAUTHBEARER",
                                "OAUTHBEARER",
                            ]
                        },
                        "version": {"type": "integer"},
                        "aws_msk": _object({"region": {"type": "string"}}),
                        "oauthbearer_token_source": {"type": "string"},
                    }
                ),
                "plain_text": _object({"username": {"type": "string"}, "password": {"type": "string"}}),
                "tls": _TLS_CLIENT,
                "kerberos": {"type": "object"},
            }
        ),
        "metadata": _object(
            {
                "full": {"type": "boolean"},
                "refresh_interval": _DURATION,
                "retry": _object({"max": {"type": "integer"}, "backoff": _DURATION}),
            }
        ),
        # pkg/kafka/configkafka ConsumerConfig
        "group_id": {"type": "string", "minLength": 1},
        "group_instance_id": {"type": "string"},
        "group_rebalance_strategy": {"type": "string"},
        "session_timeout": _DURATION,
        "heartbeat_interval": _DURATION,
        "initial_offset": {"enum": ["latest", "earliest"]},
        "min_fetch_size": {"type": "integer", "minimum": 0},
        "default_fetch_size": {"type": "integer", "minimum": 0},
        "max_fetch_size": {"type": "integer", "minimum": 0},
        "max_fetch_wait": _DURATION,
        "max_partition_fetch_size": {"type": "integer", "minimum": 0},
        "autocommit": _object({"enable": {"type": "boolean"}, "interval": _DURATION}),
        # receiver/kafkareceiver Config
        "logs": _TOPIC_ENCODING,
        "metrics": _TOPIC_ENCODING,
        "traces": _TOPIC_ENCODING,
        "profiles": _TOPIC_ENCODING,
        "message_marking": _object(
            {
                "after": {"type": "boolean"},
                "on_error": {"type": "boolean"},
                "on_permanent_error": {"type": "boolean"},
            }
        ),
        "header_extraction": _object({"extract_headers": {"type": "boolean"}, "headers": _STRING_LIST}),
        "error_backoff": _object(
            {
                "enabled": {"type": "boolean"},
                "initial_interval": _DURATION,
                "max_interval": _DURATION,
                "multiplier": {"type": "number"},
                "randomization_factor": {"type": "number"},
                "max_elapsed_time": _DURATION,
            }
        ),
        "telemetry": _object(
            {"metrics": _object({"kafka_receiver_records_delay": _object({"enabled": {"type": "boolean"}})})}
        ),
    }
)

PROMETHEUS_REMOTE_WRITE_EXPORTER = _object(
    {
        # confighttp ClientConfig (squashed)
        "endpoint": {"type": "string", "pattern": r"^https?://[^/]+/"},
        "tls": _TLS_CLIENT,
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": _DURATION,
        "compression": {"type": "string"},
        "read_buffer_size": {"type": "integer"},
        "write_buffer_size": {"type": "integer"},
        "proxy_url": {"type": "string"},
        "auth": _object({"authenticator": {"type": "string"}}),
        "max_idle_conns": {"type": "integer"},
        "max_idle_conns_per_host": {"type": "integer"},
        "max_conns_per_host": {"type": "integer"},
        "idle_conn_timeout": _DURATION,
        "disable_keep_alives": {"type": "boolean"},
        "http2_read_idle_timeout": _DURATION,
        "http2_ping_timeout": _DURATION,
        # exporterhelper / configretry
        "retry_on_failure": _object(
            {
                "enabled": {"type": "boolean"},
                "initial_interval": _DURATION,
                "max_interval": _DURATION,
                "max_elapsed_time": _DURATION,
                "multiplier": {"type": "number"},
                "randomization_factor": {"type": "number"},
            }
        ),
        # prometheusremotewriteexporter Config
        "namespace": {"type": "string"},
        "external_labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "add_metric_suffixes": {"type": "boolean"},  # removed in v0.153.0: do not use
        "send_metadata": {"type": "boolean"},
        "disable_scope_info": {"type": "boolean"},
        "protobuf_message": {"type": "string"},
        "max_batch_size_bytes": {"type": "integer"},
        "max_batch_request_parallelism": {"type": "integer"},
        "remote_write_queue": _object(
            {
                "enabled": {"type": "boolean"},
                "queue_size": {"type": "integer"},
                "num_consumers": {"type": "integer"},
            }
        ),
        "resource_to_telemetry_conversion": _object(
            {"enabled": {"type": "boolean"}, "exclude_service_attributes": {"type": "boolean"}}
        ),
        "target_info": _object({"enabled": {"type": "boolean"}}),
        "wal": _object(
            {
                "directory": {"type": "string"},
                "buffer_size": {"type": "integer"},
                "truncate_frequency": _DURATION,
                "lag_record_frequency": _DURATION,
            }
        ),
    },
    required=("endpoint",),
)

_COMPONENT_ID = r"^[a-z][a-z0-9_]*(/[^/]+)?$"

COLLECTOR_CONFIG = _object(
    {
        "receivers": {
            "type": "object",
            "propertyNames": {"pattern": _COMPONENT_ID},
            "properties": {"kafka": KAFKA_RECEIVER},
            "patternProperties": {"^kafka/": KAFKA_RECEIVER},
            "additionalProperties": False,
        },
        "processors": {
            "type": "object",
            "propertyNames": {"pattern": _COMPONENT_ID},
            "patternProperties": {
                "^batch(/.*)?$": _object(
                    {
                        "timeout": _DURATION,
                        "send_batch_size": {"type": "integer"},
                        "send_batch_max_size": {"type": "integer"},
                        "metadata_keys": _STRING_LIST,
                        "metadata_cardinality_limit": {"type": "integer"},
                    }
                ),
            },
            "additionalProperties": False,
        },
        "exporters": {
            "type": "object",
            "propertyNames": {"pattern": _COMPONENT_ID},
            "properties": {"prometheusremotewrite": PROMETHEUS_REMOTE_WRITE_EXPORTER},
            "patternProperties": {"^prometheusremotewrite/": PROMETHEUS_REMOTE_WRITE_EXPORTER},
            "additionalProperties": False,
        },
        "extensions": {"type": "object"},
        "connectors": {"type": "object"},
        "service": _object(
            {
                "extensions": _STRING_LIST,
                "pipelines": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": r"^(traces|metrics|logs|profiles)(/.+)?$"},
                    "additionalProperties": _object(
                        {
                            "receivers": {**_STRING_LIST, "minItems": 1},
                            "processors": _STRING_LIST,
                            "exporters": {**_STRING_LIST, "minItems": 1},
                        },
                        required=("receivers", "exporters"),
                    ),
                },
                "telemetry": {"type": "object"},
            },
            required=("pipelines",),
        ),
    },
    required=("receivers", "exporters", "service"),
)
