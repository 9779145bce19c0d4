"""harness: measure quality and cost of efficient deep-learning methods in the same run."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from harness.hookspecs import hookimpl

try:
    __version__ = version("harness-bench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl"]
