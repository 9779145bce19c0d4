"""Session fixtures: one cache dir, and one trained ``tiny-byte-lm`` shared by every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def harness_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$HARNESS_CACHE_DIR`` when set (reuses a model trained by an earlier session), else a
    fresh per-session dir exported as ``$HARNESS_CACHE_DIR`` for the session's duration."""
    existing = os.environ.get("HARNESS_CACHE_DIR")
    if existing:
        yield existing
        return
    path = str(tmp_path_factory.mktemp("harness-cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE_DIR", path)
        yield path


@pytest.fixture(scope="session")
def tiny_byte_lm_dir(harness_cache_dir: str) -> str:
    """The directory of the built-in tiny model, trained on first use (about 30 s)."""
    from harness.models.tiny_byte_lm import TinyByteLM

    return TinyByteLM().prepare(harness_cache_dir)
