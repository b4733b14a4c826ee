"""The processors' handle on the compiled ingest (``worker.processors._native``): the loader of
worker.model.extensions, which every layer shares."""

from __future__ import annotations

from worker.model.extensions import NO_EXTENSIONS_ENV, load

__all__ = ["NO_EXTENSIONS_ENV", "load"]
