"""Loads the optional compiled modules (ingest, record parser, metrics encoder, the fold's walk over
held records; each the twin of a pure-Python reference); ``SPANMETRICS_NO_EXTENSIONS=1`` forces
the pure paths."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["NO_EXTENSIONS_ENV", "load"]

NO_EXTENSIONS_ENV = "SPANMETRICS_NO_EXTENSIONS"


def load(module: str = "worker.processors._native") -> ModuleType | None:
    """The compiled ``module``, or None: not built (no compiler at install), or disabled by the
    environment."""
    if os.environ.get(NO_EXTENSIONS_ENV, "").strip() not in ("", "0"):
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
