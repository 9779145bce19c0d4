"""Python's own standard-library source as an offline text corpus.

Every Python installation ships a few megabytes of real, varied, human-written text (code,
docstrings, comments), so perplexity can be measured without any download. Files are split
90/10 into train and test by a hash of their relative path, which is stable across machines
and Python patch releases (a file keeps its side of the split), and never depends on the
order the file system lists them in.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

__all__ = ["SPLITS", "load_text", "stdlib_files", "stdlib_root"]

SPLITS = ("train", "test")
#: Directories left out: third-party code, the test suite (huge, repetitive, partly
#: deliberately malformed), and tools that are not library code.
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"})
#: One file in ``TEST_MODULUS`` goes to the test split.
TEST_MODULUS = 10


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Every ``.py`` file of the standard library outside ``EXCLUDED_DIRS``, sorted by path."""
    root = stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return tuple(sorted(found))


def _path_hash(relative: str) -> int:
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")


def _valid_utf8(data: bytes) -> bytes:
    """``data`` with invalid UTF-8 dropped, so a cut through a character never leaks out."""
    return data.decode("utf-8", errors="ignore").encode("utf-8")


@functools.lru_cache(maxsize=2)
def _stdlib_text(split: str, max_bytes: int) -> bytes:
    root = stdlib_root()
    keyed = [(_path_hash(p.relative_to(root).as_posix()), p) for p in stdlib_files()]
    wanted = [(h, p) for h, p in keyed if (h % TEST_MODULUS == 0) == (split == "test")]
    # Files in hash order: a max_bytes prefix is a sample of the whole library rather than
    # its alphabetically first packages.
    wanted.sort()
    parts: list[bytes] = []
    size = 0
    for _, path in wanted:
        data = _valid_utf8(path.read_bytes()) + b"\n"
        parts.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    return _valid_utf8(b"".join(parts)[:max_bytes])


def load_text(source: str, split: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of UTF-8 text from ``source``'s ``split`` (``train`` or ``test``).

    ``source`` is ``"stdlib"`` (files split 90/10 by a hash of their relative path) or the
    path of a UTF-8 text file (its first 90 % is train, the last 10 % test). The result is
    always valid UTF-8: a character cut by the limit or the split point is dropped.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if source == "stdlib":
        return _stdlib_text(split, max_bytes)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text source {source!r} is neither 'stdlib' nor a file")
    data = path.read_bytes()
    cut = len(data) * 9 // 10
    part = data[:cut] if split == "train" else data[cut:]
    return _valid_utf8(part[:max_bytes])
