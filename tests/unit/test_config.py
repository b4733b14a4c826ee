"""Configuration: upstream defaults, Go durations, one-line errors, environment overrides, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from structlog.testing import capture_logs

from worker.cli import cli
from worker.config import DEFAULT_HISTOGRAM_BUCKETS, HistogramUnit, Settings, SpanMetricsConfig, load_config
from worker.model.durations import format_duration, parse_duration
from worker.model.errors import ConfigError
from worker.model.series import Temporality
from worker.service import log_configuration

pytestmark = pytest.mark.usefixtures("clean_env")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_config(write_config(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message, "a configuration error is one line"
    return message


# ---------------------------------------------------------------------------------------- defaults


def test_defaults_match_the_connector() -> None:
    settings = load_config(None)
    spanmetrics = settings.spanmetrics
    assert spanmetrics.histogram.unit is HistogramUnit.MILLISECONDS
    assert spanmetrics.histogram.bounds == (
        2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0,
        1000.0, 1400.0, 2000.0, 5000.0, 10000.0, 15000.0,
    )  # fmt: skip
    assert spanmetrics.histogram.disable is False
    assert spanmetrics.histogram.exponential is None
    assert spanmetrics.aggregation_temporality is Temporality.CUMULATIVE
    assert spanmetrics.metrics_flush_interval == 15.0
    assert spanmetrics.namespace == ""
    assert spanmetrics.resource_metrics_cache_size == 1000
    assert spanmetrics.exemplars.enabled is False
    assert spanmetrics.exemplars.max_per_data_point == 5
    assert spanmetrics.events.enabled is False
    assert spanmetrics.dimensions == ()
    assert spanmetrics.exclude_dimensions == ()
    assert spanmetrics.aggregation_cardinality_limit == 0


def test_default_buckets_in_seconds_when_unit_is_s() -> None:
    config = SpanMetricsConfig.model_validate({"histogram": {"unit": "s"}})
    assert config.histogram.bounds == DEFAULT_HISTOGRAM_BUCKETS
    assert config.histogram.unit.divisor_ns == 1e9


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == load_config(None)


# ---------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2ms", 0.002),
        ("1s", 1.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1400ms", 1.4),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("100ns", 1e-7),
        ("0", 0.0),
        (15, 15.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "5", "5 s", "1d", "1s2", "-1s", True, None, [1]])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.0005, "500us"), (0.25, "250ms"), (90, "90s")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_durations_in_the_config(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
spanmetrics:
  metrics_flush_interval: 1m30s
  metrics_expiration: 1h
  series_expiration: 5m
  histogram:
    explicit:
      buckets: ["2ms", "1s", "1m30s"]
""",
    )
    assert settings.spanmetrics.metrics_flush_interval == 90.0
    assert settings.spanmetrics.metrics_expiration == 3600.0
    assert settings.spanmetrics.series_expiration == 300.0
    # upstream config.go: both default to 0 (never); series_expiration is PR #48270's option.
    assert (Settings().spanmetrics.metrics_expiration, Settings().spanmetrics.series_expiration) == (0, 0)
    assert settings.spanmetrics.histogram.bounds == (2.0, 1000.0, 90000.0)


@pytest.mark.parametrize(
    "value", ["AGGREGATION_TEMPORALITY_DELTA", "DELTA", "delta", "aggregation_temporality_delta"]
)
def test_delta_temporality_spellings(tmp_path: Path, value: str) -> None:
    settings = load_text(tmp_path, f"spanmetrics: {{aggregation_temporality: {value}}}")
    assert settings.spanmetrics.aggregation_temporality is Temporality.DELTA


def test_cumulative_with_the_proto_prefix(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, "spanmetrics: {aggregation_temporality: AGGREGATION_TEMPORALITY_CUMULATIVE}"
    )
    assert settings.spanmetrics.aggregation_temporality is Temporality.CUMULATIVE


# ---------------------------------------------------------------------------------------- upstream parity
# Values the connector accepts (issue 16, "The connector"); each test names the upstream source.


@pytest.mark.parametrize("value", ['""', "''"])
def test_empty_temporality_is_cumulative(tmp_path: Path, value: str) -> None:
    # Upstream: config_test.go TestGetAggregationTemporality: an empty aggregation_temporality
    # gives cumulative (GetAggregationTemporality returns delta only for ..._DELTA), no error.
    settings = load_text(tmp_path, f"spanmetrics: {{aggregation_temporality: {value}}}")
    assert settings.spanmetrics.aggregation_temporality is Temporality.CUMULATIVE
    assert settings.warnings == ()


def test_unknown_temporality_is_cumulative_with_one_warning(tmp_path: Path) -> None:
    # Upstream: config.go GetAggregationTemporality, "Returns cumulative, unless delta is correctly
    # specified" (reference notes §1: any other string is cumulative without error). We also warn.
    settings = load_text(tmp_path, "spanmetrics: {aggregation_temporality: WEEKLY}")
    assert settings.spanmetrics.aggregation_temporality is Temporality.CUMULATIVE
    [(option, why, value)] = settings.warnings
    assert (option, value) == ("spanmetrics.aggregation_temporality", "WEEKLY")
    assert "cumulative" in why


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("ms", HistogramUnit.MILLISECONDS),
        ("Ms", HistogramUnit.MILLISECONDS),
        ("MS", HistogramUnit.MILLISECONDS),
        ("s", HistogramUnit.SECONDS),
        ("S", HistogramUnit.SECONDS),
    ],
)
def test_histogram_unit_is_case_insensitive(tmp_path: Path, text: str, unit: HistogramUnit) -> None:
    # Upstream: internal/metrics/unit_test.go: Unit.UnmarshalText takes ms/s in any case; an
    # unknown unit is an error (config_test.go: unit "h"), refused here naming the allowed values.
    settings = load_text(tmp_path, f"spanmetrics: {{histogram: {{unit: {text}}}}}")
    assert settings.spanmetrics.histogram.unit is unit


def test_exclude_dimensions_naming_a_non_default_is_ignored_with_one_warning(tmp_path: Path) -> None:
    # Upstream: connector_test.go, the exclude_dimensions case [span.kind, span.name, totallyWrong]:
    # unknown names are no error and change nothing (reference notes §1 and §3 case 5).
    settings = load_text(
        tmp_path, "spanmetrics: {exclude_dimensions: [span.kind, totallyWrong, http.method]}"
    )
    assert settings.spanmetrics.exclude_dimensions == ("span.kind", "totallyWrong", "http.method")
    [(option, why, value)] = settings.warnings
    assert option == "spanmetrics.exclude_dimensions"
    assert value == ["totallyWrong", "http.method"]
    assert "not a default dimension" in why


def test_only_real_defaults_excluded_give_no_warning(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "spanmetrics: {exclude_dimensions: [span.kind, status.code]}")
    assert settings.warnings == ()


def test_ignored_values_are_logged_once_at_start(tmp_path: Path) -> None:
    # The warnings are found at config load and logged once by log_configuration, at start.
    settings = load_text(
        tmp_path, "spanmetrics: {exclude_dimensions: [totallyWrong], aggregation_temporality: weekly}"
    )
    with capture_logs() as logs:
        log_configuration(structlog.get_logger("spanmetrics"), settings)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["option"], e["value"]) for e in warnings] == [
        ("spanmetrics.exclude_dimensions", ["totallyWrong"]),
        ("spanmetrics.aggregation_temporality", "weekly"),
    ]


def test_cli_process_prints_ignored_values_on_stderr(tmp_path: Path) -> None:
    path = write_config(tmp_path, "spanmetrics: {exclude_dimensions: [totallyWrong]}")
    result = CliRunner().invoke(cli, ["process", "--config", str(path), "-"], input='{"resourceSpans": []}')
    assert result.exit_code == 0, result.output
    assert "warning: spanmetrics.exclude_dimensions: ['totallyWrong']" in result.stderr


def test_zero_exemplars_per_data_point_is_accepted(tmp_path: Path) -> None:
    # Upstream: config.go Validate refuses only max_per_data_point < 0 (reference notes §1);
    # 0 means no exemplars (see ExemplarsConfig and test_max_per_data_point_zero_means_no_exemplars).
    settings = load_text(tmp_path, "spanmetrics: {exemplars: {enabled: true, max_per_data_point: 0}}")
    assert settings.spanmetrics.exemplars.max_per_data_point == 0


@pytest.mark.parametrize("workers", [1, 10, 0])
def test_servicegraphs_workers_is_accepted_and_ignored(tmp_path: Path, workers: int) -> None:
    # Tempo: modules/generator/processor/servicegraphs/config.go has workers (default 10), the
    # expiry goroutines of store/store.go (tempo reference notes §2.5). Accepted so that a pasted
    # Tempo config loads; the worker count here is the consumer group's, so nothing reads it.
    settings = load_text(tmp_path, f"servicegraphs: {{enabled: true, workers: {workers}}}")
    assert settings.servicegraphs.workers == workers
    description = type(settings.servicegraphs).model_fields["workers"].description or ""
    assert "ignored" in description and "consumer group" in description


def test_dimensions_cache_size_is_accepted(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "spanmetrics: {dimensions_cache_size: 500}")
    assert settings.spanmetrics.dimensions_cache_size == 500
    assert [option for option, _, _ in settings.warnings] == ["spanmetrics.dimensions_cache_size"]


def test_dimensions_as_names_or_mappings(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
spanmetrics:
  dimensions:
    - http.method
    - {name: http.status_code, default: "200"}
""",
    )
    dims = settings.spanmetrics.dimensions
    assert [(d.name, d.default) for d in dims] == [("http.method", None), ("http.status_code", "200")]


# ---------------------------------------------------------------------------------------- connector options


def test_connector_option_defaults(tmp_path: Path) -> None:
    # upstream: config.schema.yaml@36ee7b2b / config.go: add_resource_attributes false,
    # enable_metrics_sampling_method false, metric_timestamp_cache_size 1000 (defaultDeltaTimestampCacheSize).
    spanmetrics = load_text(tmp_path, "spanmetrics: {}").spanmetrics
    assert spanmetrics.add_resource_attributes is False
    assert spanmetrics.enable_metrics_sampling_method is False
    assert spanmetrics.metric_timestamp_cache_size == 1000
    assert spanmetrics.dimensions_cache_size == 0
    assert spanmetrics.metrics_expiration == 0.0


def test_glob_dimensions_load(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
spanmetrics:
  dimensions: [{glob: "http.*"}, {name: region, default: eu}]
  calls_dimensions: [{glob: "c.**"}]
  histogram: {dimensions: [{glob: "{a,b}.?"}]}
  events: {enabled: true, dimensions: [{glob: "exception.*"}]}
""",
    )
    spanmetrics = settings.spanmetrics
    assert [(d.name, d.glob, d.default) for d in spanmetrics.dimensions] == [
        ("", "http.*", None),
        ("region", "", "eu"),
    ]
    assert spanmetrics.calls_dimensions[0].glob == "c.**"
    assert spanmetrics.histogram.dimensions[0].glob == "{a,b}.?"
    assert spanmetrics.events.dimensions[0].glob == "exception.*"
    assert settings.warnings == ()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # upstream: config.go validateDimensions (PR #48312) and its config_test.go cases.
        pytest.param(
            "spanmetrics: {dimensions: [{name: a, glob: 'b.*'}]}",
            ["spanmetrics.dimensions.0", "set only one of 'name' or 'glob'", "name='a' glob='b.*'"],
            id="name-and-glob",
        ),
        pytest.param(
            "spanmetrics: {calls_dimensions: [{default: x}]}",
            ["spanmetrics.calls_dimensions.0", "set one of 'name' or 'glob'"],
            id="neither-name-nor-glob",
        ),
        pytest.param(
            "spanmetrics: {histogram: {dimensions: [{glob: 'a.*', default: x}]}}",
            ["spanmetrics.histogram.dimensions.0", "'default' is not supported on glob dimension 'a.*'"],
            id="default-on-glob",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [{glob: '[ab'}]}",
            ["spanmetrics.dimensions.0", "invalid dimension glob '[ab'", "unclosed '['"],
            id="invalid-glob",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [{glob: 'service.*'}]}",
            ["dimensions", "duplicate dimension name 'service.name' conflicting with glob 'service.*'"],
            id="glob-matches-a-default",
        ),
        pytest.param(
            "spanmetrics: {events: {enabled: true,"
            " dimensions: [{name: exception.type}, {glob: 'exception.*'}]}}",
            [
                "events.dimensions",
                "duplicate dimension name 'exception.type' conflicting with glob 'exception.*'",
            ],
            id="glob-matches-a-name-of-its-list",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [{glob: '**'}]}",
            ["duplicate dimension name 'service.name' conflicting with glob '**'"],
            id="glob-matching-everything",
        ),
        # upstream: config_test.go TestConfigValidate / TestLoadConfig "invalid delta timestamp
        # cache size": delta with metric_timestamp_cache_size <= 0.
        pytest.param(
            "spanmetrics: {aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA,"
            " metric_timestamp_cache_size: 0}",
            [
                "metric_timestamp_cache_size",
                "invalid delta timestamp cache size: 0, the maximum number of the items in the cache "
                "should be positive",
            ],
            id="delta-timestamp-cache-zero",
        ),
        pytest.param(
            "spanmetrics: {aggregation_temporality: DELTA, metric_timestamp_cache_size: -5}",
            ["metric_timestamp_cache_size", "invalid delta timestamp cache size: -5"],
            id="delta-timestamp-cache-negative",
        ),
        # upstream: config_test.go TestConfigValidate "invalid metrics_expiration" (negative).
        pytest.param(
            "spanmetrics: {metrics_expiration: -1s}",
            ["spanmetrics.metrics_expiration", "must not be negative", "'-1s'"],
            id="negative-metrics-expiration",
        ),
        pytest.param(
            "spanmetrics: {add_resource_attributes: maybe}",
            ["spanmetrics.add_resource_attributes", "valid boolean"],
            id="add-resource-attributes-not-a-bool",
        ),
    ],
)
def test_connector_option_errors(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = config_error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_name_may_repeat_in_another_list(tmp_path: Path) -> None:
    # upstream: config.go Validate runs validateDimensions on each list on its own (dimensions,
    # calls_dimensions, histogram.dimensions, events.dimensions): a repeat across lists loads.
    settings = load_text(
        tmp_path,
        "spanmetrics: {dimensions: [a], calls_dimensions: [a], histogram: {dimensions: [a]},"
        " events: {enabled: true, dimensions: [a]}}",
    )
    assert [d.name for d in settings.spanmetrics.calls_dimensions] == ["a"]


def test_globs_may_match_names_of_another_list(tmp_path: Path) -> None:
    # upstream validates each list on its own: a glob in calls_dimensions may match a name of
    # dimensions (the attribute is then written once, test_glob_dimensions.py).
    settings = load_text(
        tmp_path, "spanmetrics: {dimensions: [http.method], calls_dimensions: [{glob: 'http.*'}]}"
    )
    assert settings.spanmetrics.calls_dimensions[0].glob == "http.*"


@pytest.mark.parametrize("size", [0, -1])
def test_timestamp_cache_size_is_only_checked_with_delta(tmp_path: Path, size: int) -> None:
    # upstream: config.go Validate checks it only when the temporality is delta.
    settings = load_text(tmp_path, f"spanmetrics: {{metric_timestamp_cache_size: {size}}}")
    assert settings.spanmetrics.metric_timestamp_cache_size == size


def test_timestamp_cache_size_is_accepted_with_a_warning(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, "spanmetrics: {aggregation_temporality: DELTA, metric_timestamp_cache_size: 10}"
    )
    assert settings.spanmetrics.metric_timestamp_cache_size == 10
    [(option, why, value)] = settings.warnings
    assert option == "spanmetrics.metric_timestamp_cache_size"
    assert value == 10
    assert "no effect" in why and "state store" in why


@pytest.mark.parametrize("value", ["true", "false"])
def test_add_resource_attributes_is_accepted_without_warning(tmp_path: Path, value: str) -> None:
    # Upstream leaves resource attributes out only with its alpha gate excludeResourceMetrics on
    # and this false; with its default gates both values copy them, as this worker always does.
    settings = load_text(tmp_path, f"spanmetrics: {{add_resource_attributes: {value}}}")
    assert settings.spanmetrics.add_resource_attributes is (value == "true")
    assert settings.warnings == ()


@pytest.mark.parametrize("size", [500, -3])
def test_dimensions_cache_size_warns_as_deprecated(tmp_path: Path, size: int) -> None:
    # upstream: connector.go newConnector logs "DimensionsCacheSize is deprecated, please use
    # AggregationCardinalityLimit instead." for any value other than 0 (deprecated v0.130.0).
    settings = load_text(tmp_path, f"spanmetrics: {{dimensions_cache_size: {size}}}")
    [(option, why, value)] = settings.warnings
    assert option == "spanmetrics.dimensions_cache_size"
    assert value == size
    assert "deprecated" in why and "aggregation_cardinality_limit" in why


def test_dimensions_cache_size_zero_is_silent(tmp_path: Path) -> None:
    assert load_text(tmp_path, "spanmetrics: {dimensions_cache_size: 0}").warnings == ()


def test_negative_exemplars_per_point_is_accepted_while_exemplars_are_off(tmp_path: Path) -> None:
    # upstream: config.go Validate: `c.Exemplars.Enabled && c.Exemplars.MaxPerDataPoint < 0`
    # (config_test.go TestConfigValidate "invalid max_per_data_point" has exemplars enabled).
    settings = load_text(tmp_path, "spanmetrics: {exemplars: {max_per_data_point: -1}}")
    assert settings.spanmetrics.exemplars.max_per_data_point == -1
    assert settings.spanmetrics.exemplars.enabled is False


def test_exponential_max_size_zero_is_the_default(tmp_path: Path) -> None:
    # upstream: connector.go initHistogramMetrics: max_size 0 -> structure.DefaultMaxSize (160).
    settings = load_text(tmp_path, "spanmetrics: {histogram: {exponential: {max_size: 0}}}")
    exponential = settings.spanmetrics.histogram.exponential
    assert exponential is not None and exponential.max_size == 160


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            "spanmetrics: {dimensions: [http.method, http.method]}",
            ["dimensions", "duplicate", "http.method"],
            id="duplicate-dimension",
        ),
        pytest.param(
            "spanmetrics: {calls_dimensions: [a, {name: a, default: x}]}",
            ["calls_dimensions", "duplicate", "'a'"],
            id="duplicate-within-calls-dimensions",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [service.name]}",
            ["dimensions", "service.name", "default dimension", "span.kind"],
            id="reserved-service.name",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [span.name]}",
            ["dimensions", "span.name", "default dimension"],
            id="reserved-span.name",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [span.kind]}",
            ["dimensions", "span.kind", "default dimension"],
            id="reserved-span.kind",
        ),
        pytest.param(
            "spanmetrics: {histogram: {dimensions: [status.code]}}",
            ["histogram.dimensions", "status.code", "default dimension"],
            id="reserved-status.code",
        ),
        pytest.param(
            "spanmetrics: {histogram: {unit: us}}",
            ["spanmetrics.histogram.unit", "'ms' or 's'", "'us'"],
            id="unknown-unit",
        ),
        pytest.param(
            "spanmetrics: {histogram: {explicit: {}, exponential: {}}}",
            ["spanmetrics.histogram", "explicit", "exponential", "not both"],
            id="explicit-and-exponential",
        ),
        pytest.param(
            "spanmetrics: {metrics_flush_interval: -1s}",
            ["spanmetrics.metrics_flush_interval", "negative", "'-1s'"],
            id="negative-flush-interval",
        ),
        pytest.param(
            "spanmetrics: {metrics_expiration: -5m}",
            ["spanmetrics.metrics_expiration", "negative"],
            id="negative-expiration",
        ),
        pytest.param(
            "spanmetrics: {series_expiration: -1s}",
            ["spanmetrics.series_expiration", "negative"],
            id="negative-series-expiration",
        ),
        pytest.param(
            "spanmetrics: {histogram: {explicit: {buckets: [2ms, -4ms]}}}",
            ["spanmetrics.histogram.explicit.buckets", "negative"],
            id="negative-bucket",
        ),
        pytest.param(
            "spanmetrics: {histogram: {explicit: {buckets: [4ms, 2ms]}}}",
            ["spanmetrics.histogram.explicit.buckets", "increasing"],
            id="decreasing-buckets",
        ),
        pytest.param(
            "spanmetrics: {metrics_flush_interval: soon}",
            ["spanmetrics.metrics_flush_interval", "'2ms'"],
            id="unparsable-duration",
        ),
        pytest.param(
            "spanmetrics: {aggregation_cardinality_limit: -1}",
            ["spanmetrics.aggregation_cardinality_limit", "greater than or equal to 0", "-1"],
            id="negative-cardinality-limit",
        ),
        pytest.param(
            "spanmetrics: {resource_metrics_cache_size: 0}",
            ["spanmetrics.resource_metrics_cache_size", "greater than or equal to 1"],
            id="zero-resource-cache",
        ),
        pytest.param(
            "spanmetrics: {exemplars: {enabled: true, max_per_data_point: -2}}",
            ["spanmetrics.exemplars.max_per_data_point", "greater than or equal to 0", "-2"],
            id="negative-exemplars",
        ),
        pytest.param(
            "spanmetrics: {events: {enabled: true}}",
            ["spanmetrics.events", "dimensions", "at least one"],
            id="events-without-dimensions",
        ),
        pytest.param(
            "spanmetrics: {dimension: [a]}",
            ["spanmetrics.dimension", "unknown option", "dimensions"],
            id="unknown-option",
        ),
        pytest.param(
            "spanmetrics: {histogram: {buckets: [1s]}}",
            ["spanmetrics.histogram.buckets", "unknown option", "explicit"],
            id="unknown-nested-option",
        ),
        pytest.param(
            "spanmetrics: {dimensions: [{name: a, defualt: x}]}",
            ["spanmetrics.dimensions.0.defualt", "unknown option", "default, glob, name"],
            id="unknown-dimension-field",
        ),
        pytest.param(
            "spanmetric: {}",
            ["spanmetric", "unknown option", "spanmetrics"],
            id="unknown-section",
        ),
        pytest.param(
            "spanmetrics: {histogram: {unit: h}}",
            ["spanmetrics.histogram.unit", "'ms' or 's'", "'h'"],
            id="unknown-unit-h",
        ),
        pytest.param(
            "spanmetrics: {histogram: {unit: MSEC}}",
            ["spanmetrics.histogram.unit", "'ms' or 's'", "'MSEC'"],
            id="unknown-unit-keeps-its-spelling",
        ),
    ],
)
def test_invalid_configuration_is_one_line_naming_the_option(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith("invalid configuration: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_several_problems_are_all_named_on_one_line(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, "spanmetrics: {histogram: {unit: us}, aggregation_cardinality_limit: -1}"
    )
    assert "histogram.unit" in message
    assert "aggregation_cardinality_limit" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("spanmetrics: [a, b", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_unreadable_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in config_error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------------------- environment


def test_env_overrides_a_nested_option_and_keeps_the_rest(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("SPANMETRICS_SPANMETRICS__NAMESPACE", "traces_spanmetrics")
    settings = load_text(tmp_path, "spanmetrics: {namespace: from_file, dimensions: [http.method]}")
    assert settings.spanmetrics.namespace == "traces_spanmetrics"
    assert [d.name for d in settings.spanmetrics.dimensions] == ["http.method"]
    assert settings.spanmetrics.metric_name("calls") == "traces_spanmetrics.calls"


def test_env_override_without_a_file(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SPANMETRICS_SPANMETRICS__AGGREGATION_TEMPORALITY", "AGGREGATION_TEMPORALITY_DELTA")
    assert load_config(None).spanmetrics.aggregation_temporality is Temporality.DELTA


def test_invalid_env_value_is_a_config_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SPANMETRICS_SPANMETRICS__AGGREGATION_CARDINALITY_LIMIT", "-1")
    with pytest.raises(ConfigError, match="aggregation_cardinality_limit"):
        load_config(None)


def test_conventional_server_variables_override_the_file(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    clean_env.setenv("REDIS_URL", "redis://redis.internal:6380/2")
    settings = load_text(
        tmp_path,
        """
kafka: {bootstrap_servers: "file:9092", group_id: from-file}
redis: {url: "redis://file:6379/0"}
""",
    )
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.group_id == "from-file"
    assert settings.redis.url.get_secret_value() == "redis://redis.internal:6380/2"


def test_redis_url_from_env_is_still_validated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "http://not-redis")
    with pytest.raises(ConfigError, match=r"redis\.url"):
        load_config(None)


def test_config_is_frozen() -> None:
    settings = load_config(None)
    with pytest.raises(ValueError):
        settings.spanmetrics.namespace = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- CLI


def test_cli_bad_config_prints_one_error_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "spanmetrics: {histogram: {unit: us}}")
    result = CliRunner().invoke(cli, ["process", "--config", str(path)], input="")
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("spanmetrics: error: ")
    assert "histogram.unit" in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_bad_config_in_a_real_process(tmp_path: Path) -> None:
    path = write_config(tmp_path, "spanmetrics: {dimensions: [service.name]}")
    completed = subprocess.run(
        [sys.executable, "-m", "worker", "process", "--config", str(path)],
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = completed.stderr.decode()
    assert completed.returncode != 0
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith("spanmetrics: error: invalid configuration: ")
    assert completed.stdout == b""


# ------------------------------------------------------------------------------ consumer knobs


def test_consumer_knobs_default_to_aiokafka_s() -> None:
    kafka = Settings().kafka
    assert (kafka.check_crcs, kafka.fetch_max_wait, kafka.fetch_min_bytes) == (True, 0.5, 1)


def test_consumer_knobs_in_the_config(tmp_path: Path) -> None:
    kafka = load_text(
        tmp_path,
        """
kafka:
  check_crcs: false
  fetch_max_wait: 100ms
  fetch_min_bytes: 65536
""",
    ).kafka
    assert (kafka.check_crcs, kafka.fetch_max_wait, kafka.fetch_min_bytes) == (False, 0.1, 65536)


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("fetch_max_wait: 40s", "fetch_max_wait (40s) must be below request_timeout (40s)"),
        ("fetch_max_wait: -1s", "fetch_max_wait"),
        ("fetch_min_bytes: 0", "fetch_min_bytes"),
        (
            "fetch_min_bytes: 2000000\n  fetch_max_bytes: 1048576",
            "fetch_min_bytes (2000000) must not exceed fetch_max_bytes (1048576)",
        ),
    ],
)
def test_consumer_knobs_refused(tmp_path: Path, text: str, wanted: str) -> None:
    assert wanted in config_error(tmp_path, f"kafka:\n  {text}\n")


# ---------------------------------------------------------------------------------------- Redis Cluster


def test_redis_cluster_with_startup_nodes(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    settings = load_text(
        tmp_path, "redis: {url: 'redis://a:7000', cluster: true, startup_nodes: ['b:7001', 'c:7002']}"
    )
    assert settings.redis.cluster
    assert settings.redis.startup_nodes == ("b:7001", "c:7002")
    clean_env.setenv("SPANMETRICS_REDIS__STARTUP_NODES", "d:7003, e:7004")
    clean_env.setenv("SPANMETRICS_REDIS__CLUSTER", "true")
    assert load_config(None).redis.startup_nodes == ("d:7003", "e:7004")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("redis: {startup_nodes: ['b:7001']}", "redis: startup_nodes needs cluster: true"),
        ("redis: {cluster: true, startup_nodes: ['b']}", "'b' is not host:port (env SPANMETRICS_REDIS__"),
        ("redis: {cluster: true, startup_nodes: ['b:99999']}", "redis.startup_nodes"),
        ("redis: {cluster: true, url: 'redis://a:7000/3'}", "database 0 only"),
        ("redis: {cluster: true, url: 'unix:///tmp/r.sock'}", "needs a redis:// or rediss:// url"),
        ("redis: {cluster: maybe}", "redis.cluster"),
    ],
)
def test_invalid_redis_cluster_options(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in config_error(tmp_path, text)


def test_cluster_client_gets_every_startup_node(tmp_path: Path) -> None:
    from redis.asyncio.cluster import RedisCluster

    from worker.stream.clients import make_redis

    settings = load_text(tmp_path, "redis: {url: 'redis://a:7000', cluster: true, startup_nodes: ['b:7001']}")
    client = make_redis(settings.redis)
    assert isinstance(client, RedisCluster)
    assert sorted(node.name for node in client.nodes_manager.startup_nodes.values()) == ["a:7000", "b:7001"]
