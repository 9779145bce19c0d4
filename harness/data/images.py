"""Offline VTAB-1k-style image classification data for the ``adapt`` scenario.

VTAB-1k adapts a backbone on 800 training and 200 validation images per task and tests on a
held-out set. The hub datasets it uses are out of reach offline, so this module builds tasks
from a seed and from data shipped with scikit-learn (docs/architecture.md, "Offline by
default"):

- :func:`digits_shift` — scikit-learn's 8x8 digits, each rescaled and pasted at a random
  position on a noisy canvas. Plain upsampled digits are saturated (raw-pixel logistic
  regression gets 96 %), so they cannot tell a pretrained backbone from a random one.
- :func:`shapes_count`, :func:`shapes_position`, :func:`shapes_orientation` — procedural
  tasks in the spirit of VTAB's structured group (CLEVR count, dSprites location and
  orientation).
- :func:`image_folder` and :func:`hf_image_dataset` — any local folder of images (one
  sub-folder per class) or Hugging Face image dataset, split the same way.

Every builder returns an :class:`ImageSplits` of float32 tensors ``[N, C, H, W]`` in ``[0, 1]``
(black background, no mean/std normalisation, like the ``builtin:tiny-vit`` pretraining data)
and int64 labels. The procedural builders render 1-channel ``size`` x ``size`` images; their
lengths are given for a 32-pixel canvas and scale with ``size``. A builder is deterministic
given its ``seed``, and its train, val and test images come from separate random streams, so a
different test size never changes the training images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSplits",
    "add_pixel_noise",
    "digits_shift",
    "hf_image_dataset",
    "image_folder",
    "resized",
    "shapes_count",
    "shapes_orientation",
    "shapes_position",
    "stratified_split",
]

#: File endings :func:`image_folder` reads (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

#: Mixed into each procedural task's seed, so tasks built with the same seed are unrelated.
_TASK_STREAMS = {"digits_shift": 0, "count": 1, "position": 2, "orientation": 3}


@dataclass(frozen=True)
class ImageSplits:
    """A task's three splits: images ``[N, C, H, W]`` float32 in [0, 1], labels ``[N]`` int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    #: Class names; label ``i`` is ``classes[i]``.
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """The classifier head's width."""
        return len(self.classes)


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    train: int,
    val: int,
    test: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of a seeded, class-balanced train/val/test split of ``labels``.

    Each class is shuffled, then the classes are dealt round-robin (the first example of every
    class, then the second, ...), so each split is as class-balanced as the class sizes allow:
    with 1,797 digits, 800/200 gives exactly 80/20 per class. ``test=None`` takes every
    remaining example.
    """
    labels = np.asarray(labels)
    if test is None:
        test = len(labels) - train - val
    if min(train, val, test) < 0 or train + val + test > len(labels) or train + val + test == 0:
        raise ValueError(
            f"cannot split {len(labels)} examples into train={train}, val={val}, test={test}"
        )
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rank[members] = rng.permutation(len(members))
    # Ties within a rank are broken at random, so no class is always dealt first.
    order = np.lexsort((rng.permutation(len(labels)), rank))
    return order[:train], order[train : train + val], order[train + val : train + val + test]


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[N, C, H, W]`` and int64 ``[N]`` tensors; a 3-D batch gets one channel."""
    if images.ndim == 3:
        images = images[:, None]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _rng(task: str, seed: int, part: int) -> np.random.Generator:
    """The random stream of one split of one procedural task."""
    return np.random.default_rng([seed, _TASK_STREAMS[task], part])


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in random order whose class counts differ by at most one."""
    return rng.permutation(np.arange(n) % num_classes)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the pixel centres, in pixels, y pointing down."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres, indexing="xy")


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased fill from a signed distance in pixels (negative inside, one-pixel ramp)."""
    return np.clip(0.5 - distance, 0.0, 1.0)


#: Shapes of the count and position tasks: signed distance from (dx, dy, r), and the radius of
#: the circle that bounds the shape, as a multiple of r (used to keep objects apart).
_SHAPES: dict[str, tuple[Callable[[np.ndarray, np.ndarray, float], np.ndarray], float]] = {
    "disk": (lambda dx, dy, r: np.hypot(dx, dy) - r, 1.0),
    "square": (lambda dx, dy, r: np.maximum(np.abs(dx), np.abs(dy)) - 0.9 * r, 0.9 * math.sqrt(2)),
    "diamond": (lambda dx, dy, r: (np.abs(dx) + np.abs(dy) - 1.3 * r) / math.sqrt(2), 1.3),
}


def _place(
    rng: np.random.Generator,
    radii: Sequence[float],
    low: float,
    high: float,
    gap: float,
    fixed: Sequence[tuple[float, float, float]] = (),
) -> list[tuple[float, float]] | None:
    """Centres for circles of ``radii`` inside the canvas, ``gap`` pixels clear of each other
    and of ``fixed`` (x, y, radius) circles; ``None`` when 100 tries per circle do not fit."""
    placed = list(fixed)
    centres = []
    for radius in radii:
        for _ in range(100):
            x, y = rng.uniform(low + radius, high - radius, size=2)
            if all(math.hypot(x - px, y - py) >= radius + pr + gap for px, py, pr in placed):
                break
        else:
            return None
        placed.append((x, y, radius))
        centres.append((x, y))
    return centres


def resized(image: np.ndarray, side: int) -> np.ndarray:
    """A 2-D ``image`` resized bilinearly to ``side`` x ``side`` (a digit glyph to paste)."""
    return torch.nn.functional.interpolate(
        torch.from_numpy(image)[None, None], size=(side, side), mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()  # fmt: skip


def add_pixel_noise(canvas: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian pixel noise and clip to [0, 1]."""
    if noise:
        canvas = canvas + rng.normal(0.0, noise, size=canvas.shape)
    return np.clip(canvas, 0.0, 1.0)


def _procedural(
    task: str,
    seed: int,
    size: int,
    sizes: tuple[int, int, int],
    num_classes: int,
    render: Callable[[int, np.random.Generator], np.ndarray],
    classes: tuple[str, ...],
) -> ImageSplits:
    """Render balanced labels for each split from that split's own random stream."""
    tensors = []
    for part, n in enumerate(sizes):
        rng = _rng(task, seed, part)
        labels = _balanced_labels(n, num_classes, rng)
        images = np.zeros((n, size, size))
        for image, label in zip(images, labels, strict=True):
            image[:] = render(int(label), rng)
        tensors.extend(_to_tensors(images, labels))
    return ImageSplits(*tensors, classes=classes)


def digits_shift(
    seed: int = 0,
    size: int = 32,
    *,
    train: int = 800,
    val: int = 200,
    test: int | None = None,
    scale: tuple[float, float] = (12, 20),
    noise: float = 0.1,
) -> ImageSplits:
    """scikit-learn's digits (10 classes), each rescaled and pasted on a noisy canvas.

    The 1,797 source digits are split first (:func:`stratified_split`; ``test=None`` keeps the
    797 left over), so no handwritten digit appears in two splits. Each digit is resized
    bilinearly from 8x8 to a random side in ``scale`` pixels, given a random intensity in
    [0.6, 1], pasted at a uniformly random position and covered with Gaussian noise of std
    ``noise``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    sources = digits.images / 16.0
    splits = stratified_split(digits.target, train, val, test, seed)
    factor = size / 32
    low, high = (max(2, round(s * factor)) for s in scale)
    if high > size:
        raise ValueError(f"digits of up to {high} px do not fit a {size} px canvas")
    tensors = []
    for part, indices in enumerate(splits):
        rng = _rng("digits_shift", seed, part)
        images = np.zeros((len(indices), size, size))
        for image, index in zip(images, indices, strict=True):
            side = int(rng.integers(low, high + 1))
            digit = resized(sources[index], side)
            top, left = rng.integers(0, size - side + 1, size=2)
            image[top : top + side, left : left + side] = digit * rng.uniform(0.6, 1.0)
            image[:] = add_pixel_noise(image, noise, rng)
        tensors.extend(_to_tensors(images, digits.target[indices]))
    return ImageSplits(*tensors, classes=tuple(str(d) for d in range(10)))


def shapes_count(
    seed: int = 0,
    size: int = 32,
    *,
    train: int = 800,
    val: int = 200,
    test: int = 1000,
    max_count: int = 6,
    radius: tuple[float, float] = (1.5, 3.0),
    noise: float = 0.05,
) -> ImageSplits:
    """How many objects (CLEVR-count-like): label ``k`` means ``k + 1`` objects.

    Each image holds 1 to ``max_count`` disks, squares and diamonds of random radius in
    ``radius`` pixels and random intensity in [0.4, 1], at least 2 pixels apart so they never
    touch, under Gaussian noise of std ``noise``.
    """
    factor = size / 32
    x, y = _pixel_grid(size)
    names = list(_SHAPES)

    def render(label: int, rng: np.random.Generator) -> np.ndarray:
        for _ in range(100):
            kinds = [names[i] for i in rng.integers(0, len(names), size=label + 1)]
            radii = rng.uniform(*radius, size=label + 1) * factor
            bounds = [r * _SHAPES[kind][1] for kind, r in zip(kinds, radii, strict=True)]
            centres = _place(rng, bounds, 0.5, size - 0.5, 2.0 * factor)
            if centres is not None:
                break
        else:
            raise ValueError(f"{label + 1} objects of radius up to {radius[1]} do not fit")
        canvas = np.zeros((size, size))
        for kind, r, (cx, cy) in zip(kinds, radii, centres, strict=True):
            distance = _SHAPES[kind][0](x - cx, y - cy, r)
            canvas = np.maximum(canvas, rng.uniform(0.4, 1.0) * _coverage(distance))
        return add_pixel_noise(canvas, noise, rng)

    classes = tuple(str(k) for k in range(1, max_count + 1))
    return _procedural("count", seed, size, (train, val, test), max_count, render, classes)


def shapes_position(
    seed: int = 0,
    size: int = 32,
    *,
    train: int = 800,
    val: int = 200,
    test: int = 1000,
    grid: int = 3,
    distractors: int = 2,
    radius: tuple[float, float] = (2.0, 3.5),
    noise: float = 0.05,
) -> ImageSplits:
    """Where the disk is (dSprites-location-like): which cell of a ``grid`` x ``grid`` layout.

    The disk's centre is uniform within its cell (label ``row * grid + col``, row 0 at the
    top); ``distractors`` squares and diamonds of the same size range are scattered anywhere
    else, so the task needs the disk's shape, not only where pixels are lit. Radii in
    ``radius`` pixels, intensities in [0.4, 1], Gaussian noise of std ``noise``.
    """
    factor = size / 32
    x, y = _pixel_grid(size)
    cell = size / grid
    others = [name for name in _SHAPES if name != "disk"]

    def render(label: int, rng: np.random.Generator) -> np.ndarray:
        row, col = divmod(label, grid)
        r = rng.uniform(*radius) * factor
        # The centre stays inside its cell and far enough from the border to keep the disk whole.
        cx = rng.uniform(max(col * cell, r + 0.5), min((col + 1) * cell, size - r - 0.5))
        cy = rng.uniform(max(row * cell, r + 0.5), min((row + 1) * cell, size - r - 0.5))
        for _ in range(100):
            kinds = [others[i] for i in rng.integers(0, len(others), size=distractors)]
            radii = rng.uniform(*radius, size=distractors) * factor
            bounds = [q * _SHAPES[kind][1] for kind, q in zip(kinds, radii, strict=True)]
            centres = _place(rng, bounds, 0.5, size - 0.5, 2.0 * factor, [(cx, cy, r)])
            if centres is not None:
                break
        else:
            raise ValueError(f"{distractors} distractors do not fit beside the disk")
        canvas = rng.uniform(0.4, 1.0) * _coverage(np.hypot(x - cx, y - cy) - r)
        for kind, q, (dx, dy) in zip(kinds, radii, centres, strict=True):
            distance = _SHAPES[kind][0](x - dx, y - dy, q)
            canvas = np.maximum(canvas, rng.uniform(0.4, 1.0) * _coverage(distance))
        return add_pixel_noise(canvas, noise, rng)

    classes = tuple(f"row{row}-col{col}" for row in range(grid) for col in range(grid))
    return _procedural("position", seed, size, (train, val, test), grid * grid, render, classes)


def shapes_orientation(
    seed: int = 0,
    size: int = 32,
    *,
    train: int = 800,
    val: int = 200,
    test: int = 1000,
    bins: int = 8,
    length: tuple[float, float] = (10.0, 18.0),
    noise: float = 0.05,
) -> ImageSplits:
    """Which way an arrow points (dSprites-orientation-like), in ``bins`` angle bins.

    One isosceles triangle of random length in ``length`` pixels (half-base 0.25–0.35 of the
    length), random position and intensity in [0.4, 1], under Gaussian noise of std ``noise``.
    Angles are counter-clockwise from pointing right, and bin ``k`` covers
    ``[(k - 1/2), (k + 1/2)) * 360° / bins``, so bin 0 points right and bin ``bins / 4`` up.
    """
    factor = size / 32
    x, y = _pixel_grid(size)
    width = 2 * math.pi / bins

    def render(label: int, rng: np.random.Generator) -> np.ndarray:
        angle = (label + rng.uniform(-0.5, 0.5)) * width
        tall = rng.uniform(*length) * factor
        half_base = tall * rng.uniform(0.25, 0.35)
        # Around the centroid: apex 2/3 of the length ahead, base 1/3 behind; y points down.
        ux, uy = math.cos(angle), -math.sin(angle)
        reach = max(2 * tall / 3, math.hypot(tall / 3, half_base)) + 0.5
        cx, cy = rng.uniform(reach, size - reach, size=2)
        corners = [
            (cx + 2 * tall / 3 * ux, cy + 2 * tall / 3 * uy),
            (cx - tall / 3 * ux - half_base * uy, cy - tall / 3 * uy + half_base * ux),
            (cx - tall / 3 * ux + half_base * uy, cy - tall / 3 * uy - half_base * ux),
        ]
        # A convex polygon's signed distance, up to its corners: the largest edge distance.
        distance = np.full((size, size), -np.inf)
        for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True):
            nx, ny = by - ay, ax - bx
            norm = math.hypot(nx, ny)
            # Orient the normal away from the centroid.
            sign = 1.0 if nx * (ax - cx) + ny * (ay - cy) > 0 else -1.0
            edge = sign * (nx * (x - ax) + ny * (y - ay)) / norm
            distance = np.maximum(distance, edge)
        return add_pixel_noise(rng.uniform(0.4, 1.0) * _coverage(distance), noise, rng)

    classes = tuple(f"{round(k * 360 / bins)}deg" for k in range(bins))
    return _procedural("orientation", seed, size, (train, val, test), bins, render, classes)


def _load_pil(images: Sequence[Any], size: int, grayscale: bool) -> np.ndarray:
    """PIL images (or paths to them) as ``[N, C, size, size]`` floats in [0, 1]."""
    from PIL import Image

    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    out = np.zeros((len(images), channels, size, size), dtype=np.float32)
    for i, item in enumerate(images):
        image = Image.open(item) if isinstance(item, (str, Path)) else item
        with image:
            # Grayscale is ITU-R 601 luma; the aspect ratio is not kept (VTAB resizes the same way).
            array = np.asarray(
                image.convert(mode).resize((size, size), Image.Resampling.BILINEAR),
                dtype=np.float32,
            )
        out[i] = (array[None] if grayscale else array.transpose(2, 0, 1)) / 255.0
    return out


def _split_images(
    load: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    classes: tuple[str, ...],
    sizes: tuple[int, int, int | None],
    seed: int,
) -> ImageSplits:
    """Split by :func:`stratified_split`, then decode only the images that were chosen."""
    tensors = []
    for indices in stratified_split(labels, *sizes, seed):
        tensors.extend(_to_tensors(load(indices), labels[indices]))
    return ImageSplits(*tensors, classes=classes)


def image_folder(
    path: str | Path,
    size: int = 32,
    *,
    grayscale: bool = True,
    train: int = 800,
    val: int = 200,
    test: int | None = None,
    seed: int = 0,
) -> ImageSplits:
    """A local folder with one sub-folder of images per class, split VTAB-1k style.

    Classes are the sub-folder names in sorted order; files ending in :data:`IMAGE_SUFFIXES`
    are read with Pillow, converted to grayscale (or RGB with ``grayscale=False``: 3 channels)
    and resized to ``size`` x ``size`` bilinearly without keeping the aspect ratio. The split
    is :func:`stratified_split` with ``seed``; ``test=None`` keeps every image left over.
    """
    root = Path(path)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise FileNotFoundError(f"no images in class sub-folders of {root}")
    classes = tuple(folder.name for folder in folders)
    return _split_images(
        lambda indices: _load_pil([files[i] for i in indices], size, grayscale),
        np.asarray(labels),
        classes,
        (train, val, test),
        seed,
    )


def hf_image_dataset(
    name: str,
    split: str = "train",
    *,
    image_column: str = "image",
    label_column: str = "label",
    size: int = 32,
    grayscale: bool = True,
    train: int = 800,
    val: int = 200,
    test: int | None = None,
    test_split: str | None = None,
    seed: int = 0,
    **load_kwargs: Any,
) -> ImageSplits:
    """A Hugging Face image classification dataset, split VTAB-1k style.

    ``name`` is anything :func:`datasets.load_dataset` takes (a hub id, or a builder such as
    ``"imagefolder"`` with ``data_dir=...`` in ``load_kwargs``) or a directory written by
    ``save_to_disk``. Train and val are drawn from ``split`` by :func:`stratified_split`;
    the test set is the rest of ``split``, or, with ``test_split`` (VTAB's protocol: the
    official test set), ``test`` examples of that split (all with ``test=None``). Class names
    come from a ``ClassLabel`` label column, else from the sorted distinct labels. Images are
    preprocessed as in :func:`image_folder`, and only the chosen ones are decoded.
    """
    import datasets

    def load(part: str) -> Any:
        if (Path(name) / "state.json").is_file() or (Path(name) / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(name)
            return loaded[part] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(name, split=part, **load_kwargs)

    def encode(dataset: Any, known: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple]:
        raw = dataset[label_column]
        feature = dataset.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            return np.asarray(raw), tuple(feature.names)
        names = known or tuple(str(value) for value in sorted(set(raw)))
        index = {name: i for i, name in enumerate(names)}
        unknown = {str(value) for value in raw} - index.keys()
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} of {test_split!r} are not in {split!r}")
        return np.asarray([index[str(value)] for value in raw]), names

    def loader(dataset: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda indices: _load_pil(
            list(dataset.select(indices.tolist())[image_column]), size, grayscale
        )

    source = load(split)
    labels, classes = encode(source)
    if test_split is None:
        return _split_images(loader(source), labels, classes, (train, val, test), seed)
    tune = _split_images(loader(source), labels, classes, (train, val, 0), seed)
    held_out = load(test_split)
    test_labels, test_classes = encode(held_out, classes)
    if test_classes != classes:
        raise ValueError(f"split {test_split!r} has classes {test_classes}, {split!r} {classes}")
    picked = _split_images(loader(held_out), test_labels, classes, (0, 0, test), seed)
    return ImageSplits(
        tune.train_x, tune.train_y, tune.val_x, tune.val_y, picked.test_x, picked.test_y, classes
    )
