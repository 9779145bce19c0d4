"""What the built-in models share: recipe hashes, thread counts, the optimizer, the
``recipe.json`` a training run ends with, and building into the cache.

A built-in model is made by a recipe (a JSON-able dict) and cached under a directory named
by the recipe's hash, so a cached model always matches the recipe that names it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

__all__ = [
    "RecipeModel",
    "adamw",
    "build_once",
    "log_progress",
    "recipe_hash",
    "torch_threads",
    "warmup_cosine",
    "write_recipe_json",
    "write_trained",
]


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


def adamw(
    model: torch.nn.Module, recipe: Mapping[str, Any], factor: Callable[[int], float]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW at ``recipe["lr"]`` with the recipe's ``optimizer`` betas and weight decay, and
    the learning rate scaled by ``factor(step)``."""
    import torch

    opt = recipe["optimizer"]
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe["lr"],
        betas=tuple(opt["betas"]),
        weight_decay=opt["weight_decay"],
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine(step: int, recipe: Mapping[str, Any]) -> float:
    """The learning-rate factor of ``step``: linear warmup over the recipe's
    ``schedule.warmup_steps``, then cosine decay to ``schedule.final_lr_ratio`` of the peak at
    the last of ``recipe["steps"]``."""
    schedule = recipe["schedule"]
    warmup = schedule["warmup_steps"]
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe["steps"] - warmup)
    final = schedule["final_lr_ratio"]
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def log_progress(line: str) -> None:
    """A timestamped training-progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def write_recipe_json(
    out_dir: Path,
    recipe: Mapping[str, Any],
    losses: Sequence[float],
    *,
    hashed: bool = True,
    **results: Any,
) -> dict[str, Any]:
    """End a training run: write ``out_dir/recipe.json`` and return what it holds.

    That is the recipe, its hash (left out when not ``hashed``), ``final_train_loss`` (the mean
    of the last tenth of ``losses``, at least one) and then ``results`` in the order given
    (held-out quality, ``train_seconds``, ...). The file is sorted, indented JSON.
    """
    tail = losses[-max(1, len(losses) // 10) :]
    info: dict[str, Any] = {"recipe": recipe}
    if hashed:
        info["recipe_hash"] = recipe_hash(recipe)
    info["final_train_loss"] = sum(tail) / len(tail)
    info.update(results)
    (out_dir / "recipe.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def write_trained(out: Path, build: Callable[[Path], T], *, replace: bool = False) -> T:
    """``build(tmp_dir)``, then move the result to ``out`` (which must not exist unless
    ``replace``), readable by all as package data must be; nothing is left on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        result = build(tmp)
        # mkdtemp makes the directory private.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if replace and out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


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
    ``train(recipe, out_dir)``; the model lives under ``<cache_dir>/models/<name>-<hash>/``,
    or in ``shipped_dir`` (package data) when that was made by the same recipe.
    """

    name: str
    default_recipe: Mapping[str, Any]
    #: Where weights shipped as package data live, with the ``recipe.json`` that made them.
    shipped_dir: Path | None = None

    def __init__(self, recipe: Mapping[str, Any] | None = None) -> None:
        self.recipe = copy.deepcopy(dict(recipe if recipe is not None else self.default_recipe))

    @property
    def version(self) -> str:
        """The recipe's hash: part of every run key, so a retrained model is measured anew."""
        return recipe_hash(self.recipe)

    def path(self, cache_dir: str) -> Path:
        """Where the model trained by this recipe lives under ``cache_dir``."""
        return Path(cache_dir) / "models" / f"{self.name}-{self.version}"

    def shipped(self) -> Path | None:
        """The shipped package-data directory when it was made by this recipe."""
        if self.shipped_dir is None:
            return None
        info = self.shipped_dir / "recipe.json"
        if info.is_file() and json.loads(info.read_text())["recipe"] == self.recipe:
            return self.shipped_dir
        return None

    def prepare(self, cache_dir: str) -> str:
        """The shipped model when it matches the recipe, else train and cache it once.

        Safe across processes and against a killed trainer (:func:`build_once`).
        """
        shipped = self.shipped()
        if shipped is not None:
            return str(shipped)
        return str(build_once(self.path(cache_dir), lambda tmp: self.train(self.recipe, tmp)))

    def train(self, recipe: Mapping[str, Any], out_dir: Path) -> Any:
        """Make the model by ``recipe`` into ``out_dir``."""
        raise NotImplementedError
