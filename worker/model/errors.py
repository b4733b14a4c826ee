"""One rooted exception hierarchy, so callers can catch "anything we raise on purpose"."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "OtlpDecodeError",
    "SpanmetricsError",
    "StateError",
]


class SpanmetricsError(Exception):
    """Root of every error this project raises deliberately."""


class ConfigError(SpanmetricsError):
    """The configuration is invalid; the message names the option and what is allowed."""


class OtlpDecodeError(SpanmetricsError):
    """A record or file is not valid OTLP; the message says what is wrong with it."""


class StateError(SpanmetricsError):
    """The Redis state store refused or failed an operation."""
