"""File names and short texts: slugs, unique page names, params as ``k=v`` items."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime

__all__ = ["UniqueNames", "first_line", "params_items", "params_text", "run_page",
           "short_hash", "slugify", "when"]

def short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def slugify(text: str) -> str:
    """Lowercase ascii ``[a-z0-9-]`` for file names; never empty (falls back to a hash)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60].strip("-")
    return slug or f"x-{short_hash(text)}"


class UniqueNames:
    """Hands out file names that stay unique: a clash gets a short hash of its key."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self._taken = set(reserved)
        self._given: dict[str, str] = {}

    def get(self, key: str, slug: str) -> str:
        if key not in self._given:
            if slug in self._taken:
                slug = f"{slug}-{short_hash(key)}"
            self._taken.add(slug)
            self._given[key] = slug
        return self._given[key]


_SAFE_RUN_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")


def run_page(run_key: str) -> str:
    """File name of a run's page: the key itself when it is file-safe (it is a hex hash)."""
    if _SAFE_RUN_KEY.fullmatch(run_key):
        return f"{run_key}.html"
    return f"run-{short_hash(run_key, 16)}.html"


@functools.lru_cache(maxsize=8192)
def params_items(params_json: str | None) -> tuple[str, ...]:
    """``{"bits": 4, "group_size": 64}`` as ``("bits=4", "group_size=64")`` (JSON values).

    Cached: a large store repeats a few hundred params objects across many runs.
    """
    try:
        params = json.loads(params_json or "{}")
    except ValueError:
        return (params_json or "",)
    if not isinstance(params, dict):
        return (json.dumps(params),)
    return tuple(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                 for k, v in sorted(params.items()))


def params_text(params_json: str | None) -> str:
    return ", ".join(params_items(params_json))


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"

