"""What the built-in models share: recipe hashes, thread counts, and building into the cache.

A built-in model is made by a recipe (a JSON-able dict) and cached under a directory named
by the recipe's hash, so a cached model always matches the recipe that names it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RecipeModel", "build_once", "recipe_hash", "torch_threads"]


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the recipe's canonical JSON."""
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (training is deterministic per thread count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_once(final: Path, build: Callable[[Path], Any]) -> Path:
    """``final``, made by ``build(tmp_dir)`` unless it exists; safe across processes.

    An exclusive file lock makes one builder, the others wait and find the result. The
    builder writes into a temporary directory renamed into place at the end, so a killed
    builder never leaves a half-written model where loaders look.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not final.is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
                try:
                    build(tmp)
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


class RecipeModel:
    """A built-in model entry (:class:`harness.api.ModelEntry`) made by a recipe.

    Subclasses set ``name``, ``description``, ``kinds`` and ``default_recipe`` and implement
    ``train(recipe, out_dir)``; the model lives under ``<cache_dir>/models/<name>-<hash>/``.
    """

    name: str
    default_recipe: Mapping[str, Any]

    def __init__(self, recipe: Mapping[str, Any] | None = None) -> None:
        self.recipe = copy.deepcopy(dict(recipe if recipe is not None else self.default_recipe))

    @property
    def version(self) -> str:
        """The recipe's hash: part of every run key, so a retrained model is measured anew."""
        return recipe_hash(self.recipe)

    def path(self, cache_dir: str) -> Path:
        """Where the model trained by this recipe lives under ``cache_dir``."""
        return Path(cache_dir) / "models" / f"{self.name}-{self.version}"

    def prepare(self, cache_dir: str) -> str:
        """Train and cache the model unless it is cached; return its directory.

        Safe across processes and against a killed trainer (:func:`build_once`).
        """
        return str(build_once(self.path(cache_dir), lambda tmp: self.train(self.recipe, tmp)))

    def train(self, recipe: Mapping[str, Any], out_dir: Path) -> Any:
        """Make the model by ``recipe`` into ``out_dir``."""
        raise NotImplementedError
