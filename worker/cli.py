"""The ``spanmetrics`` commands: run, process, and dev, top, loadgen (devtools, imported by those alone).

Every expected failure ends with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker import __version__
from worker.config import Settings, load_config
from worker.model.errors import SpanmetricsError

__all__ = ["main"]


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"spanmetrics: error: {message}", err=True)
    sys.exit(code)


def _settings(config: str | None) -> Settings:
    try:
        return load_config(config)
    except SpanmetricsError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spanmetrics")
def cli() -> None:
    """Turn OpenTelemetry traces into RED and service-graph metrics."""


@cli.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML configuration file.")
@click.option(
    "--input-format",
    type=click.Choice(["otlp_json", "otlp_proto"]),
    default=None,
    help="Encoding of the input (default: detected per file).",
)
@click.option("--tenant", default="", help="Tenant to process as (default: the default tenant).")
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True, dir_okay=False))
def process(config: str | None, input_format: str | None, tenant: str, files: tuple[str, ...]) -> None:
    """Run the processors over trace FILES (JSON, JSON lines or protobuf; '-' or none: stdin)
    as one flush interval and print the ExportMetricsServiceRequest as OTLP/JSON."""
    from worker.offline import process_documents, read_documents
    from worker.otlp.json_codec import metrics_to_json

    settings = _settings(config)
    for option, why, value in settings.warnings:
        click.echo(f"spanmetrics: warning: {option}: {value!r} {why}", err=True)
    names = files or ("-",)

    def documents() -> Iterator[ExportTraceServiceRequest]:
        for name in names:
            if name == "-":
                data = sys.stdin.buffer.read()
                label = "<stdin>"
            else:
                try:
                    data = Path(name).read_bytes()
                except OSError as exc:
                    fail(f"{name}: cannot read: {exc.strerror or exc}")
                label = name
            yield from read_documents(label, data, input_format)  # type: ignore[arg-type]

    try:
        result = process_documents(settings, documents(), tenant=tenant)
    except SpanmetricsError as exc:
        fail(str(exc), code=1)
    click.echo(metrics_to_json(result.request, indent=2))
    if result.skipped_no_service:
        click.echo(
            f"spanmetrics: skipped {result.skipped_no_service} span(s) whose resource has no service.name",
            err=True,
        )


@cli.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML configuration file.")
def run(config: str | None) -> None:
    """Run one stream worker: consume spans, keep state in Redis, publish metrics."""
    import asyncio

    from worker.service import run_service

    settings = _settings(config)
    try:
        asyncio.run(run_service(settings))
    except SpanmetricsError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


def _duration_seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: a duration option ("25", "25s", "1m30s") in seconds."""
    from worker.model.durations import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes.")
@click.option(
    "--duration",
    callback=_duration_seconds,
    help="Stop after this long, e.g. 60 or 5m; 0 or none: run until Ctrl-C.",
)
@click.option(
    "--rate", type=click.FloatRange(min=0), default=50.0, show_default=True, help="Traces per second."
)
@click.option(
    "--services", type=click.IntRange(2, 50), default=6, show_default=True, help="Services in the model."
)
@click.option(
    "--flush-interval",
    default="2s",
    show_default=True,
    callback=_duration_seconds,
    help="Worker flush interval.",
)
@click.option(
    "--service-graphs/--no-service-graphs", default=True, show_default=True, help="Enable service graphs."
)
@click.option("--keep-logs", is_flag=True, help="Keep the temp dir with config and worker logs.")
def dev(
    workers: int,
    duration: float | None,
    rate: float,
    services: int,
    flush_interval: float,
    service_graphs: bool,
    keep_logs: bool,
) -> None:
    """Run broker, Redis, workers and load generator locally and show the live RED table."""
    from devtools.devstack import DevOptions, run_dev

    until = duration if duration else None  # 0 (or none): until Ctrl-C
    options = DevOptions(workers, until, rate, services, flush_interval, service_graphs, keep_logs)
    try:
        sys.exit(run_dev(options))
    except SpanmetricsError as exc:
        fail(str(exc), code=1)


@cli.command()
@click.option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default="localhost:9092", show_default=True
)
@click.option("--topic", default="otlp_spans", show_default=True)
@click.option(
    "--rate", type=click.FloatRange(min=0), default=100.0, show_default=True, help="Traces/s, 0: max."
)
@click.option(
    "--traces", type=click.IntRange(min=0), default=0, show_default=True, help="Traces to send, 0: forever."
)
@click.option("--services", type=click.IntRange(2, 50), default=6, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--tenant", default=None, help="Send this X-Scope-OrgID header.")
@click.option("--error-rate", type=click.FloatRange(0, 0.5), default=0.02, show_default=True)
def loadgen(
    bootstrap_servers: str,
    topic: str,
    rate: float,
    traces: int,
    services: int,
    seed: int,
    tenant: str | None,
    error_rate: float,
) -> None:
    """Produce realistic OTLP traces (one record per trace) to a Kafka topic."""
    from devtools.loadgen.producer import loadgen_command

    try:
        loadgen_command(
            bootstrap_servers,
            topic,
            rate=rate,
            traces=traces,
            services=services,
            seed=seed,
            tenant=tenant,
            error_rate=error_rate,
        )
    except SpanmetricsError as exc:
        fail(str(exc), code=1)


@cli.command()
@click.option(
    "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", default="localhost:9092", show_default=True
)
@click.option("--topic", default="otlp_metrics", show_default=True)
@click.option(
    "--refresh", default="2s", show_default=True, callback=_duration_seconds, help="Redraw interval."
)
@click.option("--duration", callback=_duration_seconds, help="Stop after this long (default: Ctrl-C).")
def top(bootstrap_servers: str, topic: str, refresh: float, duration: float | None) -> None:
    """Show a live RED table (and service-graph edges) from the worker's output topic."""
    from devtools.top import top_command

    if refresh <= 0:
        fail("--refresh must be positive")
    try:
        top_command(bootstrap_servers, topic, refresh=refresh, duration=duration)
    except SpanmetricsError as exc:
        fail(str(exc), code=1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="spanmetrics")


if __name__ == "__main__":
    main()
