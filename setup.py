"""Builds the optional compiled ingest; without a compiler (or Cython) the install still
succeeds and the pure-Python path runs. ``SPANMETRICS_NO_EXTENSIONS=1`` skips the build."""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: Compiled module -> its Cython source: each optional, each with a pure-Python reference.
_EXTENSIONS = {
    "worker.processors._native": "worker/processors/_native.pyx",
    "worker.otlp._encode": "worker/otlp/_encode.pyx",
    "worker.stream._kafka_records": "worker/stream/_kafka_records.pyx",
    "state._fold": "state/_fold.pyx",
}


class OptionalBuildExt(build_ext):
    """A failed extension build is a warning, not an error: the package works without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skipped(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skipped(exc)

    @staticmethod
    def _skipped(exc: Exception) -> None:
        print(
            f"WARNING: compiled ingest not built ({exc}); the pure-Python path runs",
            file=sys.stderr,
        )


def _extensions() -> list[Any]:
    if os.environ.get("SPANMETRICS_NO_EXTENSIONS", "").strip() not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython missing; the pure-Python path runs", file=sys.stderr)
        return []
    from setuptools import Extension

    return list(
        cythonize(
            [Extension(module, [source]) for module, source in _EXTENSIONS.items()],
            compiler_directives={"language_level": "3"},
            quiet=True,
        )
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
