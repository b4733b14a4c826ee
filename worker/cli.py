"""The ``spanmetrics`` command: ``process`` (offline), and the stream worker's commands.

Every expected failure (bad configuration, malformed input, unreachable server) ends with one
line on stderr and a non-zero exit, never a traceback: the user needs the option or the file,
not our stack.
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
from worker.exceptions import SpanmetricsError

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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="spanmetrics")


if __name__ == "__main__":
    main()
