"""Canonical JSON: one text per value, wherever a value is hashed or stored.

Run keys hash a run's resolved config, environment ids hash a machine description, and the
store keeps configs and parameters as JSON text that reports compare. All of them need the
same value to give the same text (sorted keys, no spaces, shortest round-trip floats), so
exactly one function writes it: :func:`canonical_json`. It depends on nothing but the
standard library and pydantic, so the store can use it without importing the suite reader.

:func:`describe` names a value in an error message (``int 4``, ``string 'x'``); it lives
here because canonical JSON's own errors need it, and the suite's messages use the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["canonical_json", "config_key", "describe", "shorten"]


def canonical_json(obj: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """JSON with sorted keys, no spaces and shortest round-trip floats: one text per value.

    Non-finite floats become the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (JSON has
    none); ``-0.0`` becomes ``0.0``; text is written as is (no ``\\u`` escapes). Tuples are
    lists, paths are strings and pydantic models are their JSON-mode dump.

    A value none of those rules cover raises :class:`TypeError`, unless ``default`` is
    given: then ``default(value)`` replaces it (and is made canonical in turn), as with
    :func:`json.dumps`. Run keys never pass one, so that a value without a canonical text
    can't key a run; the store passes :class:`str` so that an odd value in a machine
    description is kept as its text rather than refused. Mapping keys must be strings
    either way.
    """
    return json.dumps(
        _canonical(obj, default), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )


def _canonical(obj: Any, default: Callable[[Any], Any] | None) -> Any:
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(obj) + 0.0  # -0.0 + 0.0 == 0.0
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, BaseModel):
        return _canonical(obj.model_dump(mode="json"), default)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, got {describe(key)}")
            out[str(key)] = _canonical(value, default)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(value, default) for value in obj]
    if default is not None:
        return _canonical(default(obj), default)
    raise TypeError(f"cannot turn {type(obj).__name__} {obj!r} into canonical JSON")


def describe(value: Any) -> str:
    """``int 4``, ``string 'x'``, ``a list``: what was found, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"int {int(value)}"
    if isinstance(value, float):
        return f"float {float(value)!r}"
    if isinstance(value, str):
        return "an empty string" if not value else f"string {shorten(repr(str(value)))}"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"{type(value).__name__} {shorten(repr(value))}"


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def config_key(config: Mapping[str, Any]) -> str:
    """The key of a config (a run's): the first 16 hex digits of the SHA-256 of its
    canonical JSON. The suite reader keys runs with it, and store migrations that change
    what a key hashes re-key stored runs with it."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:16]
