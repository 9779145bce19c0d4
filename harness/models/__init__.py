"""Built-in models and the loaders behind model references (``hf:``, ``hf-config:``, ``builtin:``).

Built-in models are trained on the fly from offline data and cached under :func:`cache_dir`,
keyed by a hash of their recipe, so a new user's first run needs no download.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "cache_dir"]

CACHE_DIR_ENV = "HARNESS_CACHE_DIR"


def cache_dir() -> str:
    """``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "harness")
