"""Formula-driven pretraining images: FractalDB-style IFS fractals, rendered with numpy.

A class is one random iterated function system (IFS) of 2–4 affine maps ``x ← A_i x + b_i``;
its images are chaos-game renders of that system under small per-image perturbations. Images
need no download and no labelling, yet pretraining on them gives a ViT real visual features
(Kataoka et al. 2020, "Pre-training without Natural Images"). The sampling follows Anderson &
Farrell 2022 ("Improving Fractal Pre-training"): each map is ``R(θ)·diag(σ1, σ2)·R(φ)·D``
with ``D = diag(1, ±1)``, and the singular values are rejection-sampled so that the
"σ-factor" ``Σ(σ1 + 2σ2)`` lies in ``[(5 + N)/2, (6 + N)/2]`` for ``N`` maps: smaller gives
dust, larger a filled blob. Systems whose canonical render covers too little or too much of
the canvas (degenerate lines and blobs) are rejected. Everything is seeded, so the same
arguments give the same classes and the same images. Measured recipe and pitfalls:
shared/research/exp-tiny-vit.md (no flips: they cost accuracy and orientation features).

Images are ``float32`` arrays of shape ``(n, size, size)`` in ``[0, 1]``, black background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FractalDB", "sample_ifs"]

_MAX_MAPS = 4
_PROB_FLOOR = 0.02


def _rotation(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def sample_ifs(rng: np.random.Generator, n_maps: int) -> tuple[np.ndarray, np.ndarray]:
    """One random IFS of ``n_maps`` maps: matrices ``(n, 2, 2)`` and offsets ``(n, 2)``."""
    low, high = (5 + n_maps) / 2, (6 + n_maps) / 2
    while True:
        sigma = np.sort(rng.uniform(0.0, 1.0, (n_maps, 2)), axis=1)[:, ::-1]
        factor = float((sigma[:, 0] + 2 * sigma[:, 1]).sum())
        if low <= factor <= high:
            break
    theta, phi = rng.uniform(-np.pi, np.pi, (2, n_maps))
    flip = np.where(rng.random(n_maps) < 0.5, -1.0, 1.0)
    diag = np.zeros((n_maps, 2, 2))
    diag[:, 0, 0], diag[:, 1, 1] = sigma[:, 0], sigma[:, 1]
    reflect = np.zeros((n_maps, 2, 2))
    reflect[:, 0, 0], reflect[:, 1, 1] = 1.0, flip
    matrices = _rotation(theta) @ diag @ _rotation(phi) @ reflect
    offsets = rng.uniform(-1.0, 1.0, (n_maps, 2))
    return matrices, offsets


class FractalDB:
    """``classes`` seeded IFS classes and their renders; the keyword arguments are a recipe.

    ``maps`` bounds the number of maps per class, ``fill`` the fraction of pixels a class's
    canonical render must cover. A render runs ``chains`` chaos-game chains of ``steps``
    steps, dropping the first ``burn_in``. Augmented renders jitter every IFS parameter by
    ``jitter`` (relative, Gaussian), scale the fractal to a random fraction in ``scale`` of
    the canvas at a random position, and map hit counts ``c`` to ``1 - exp(-c / k)`` with
    ``k`` uniform in ``tone``; canonical renders use none of that (``k = 1``).
    """

    def __init__(
        self,
        classes: int = 200,
        seed: int = 0,
        *,
        size: int = 32,
        maps: Sequence[int] = (2, 4),
        fill: Sequence[float] = (0.12, 0.70),
        chains: int = 48,
        steps: int = 32,
        burn_in: int = 6,
        jitter: float = 0.05,
        scale: Sequence[float] = (0.7, 1.0),
        tone: Sequence[float] = (0.3, 3.0),
    ) -> None:
        if not 1 <= maps[0] <= maps[1] <= _MAX_MAPS:
            raise ValueError(f"maps must lie in [1, {_MAX_MAPS}], got {maps}")
        self.size, self.chains, self.steps, self.burn_in = size, chains, steps, burn_in
        self.jitter, self.scale, self.tone = jitter, tuple(scale), tuple(tone)
        # Padded to _MAX_MAPS maps per class; unused maps get probability 0.
        self.matrices = np.zeros((classes, _MAX_MAPS, 2, 2))
        self.offsets = np.zeros((classes, _MAX_MAPS, 2))
        self.n_maps = np.zeros(classes, dtype=np.int64)
        rng = np.random.default_rng([seed, 0xF2AC])
        render_rng = np.random.default_rng([seed, 0xC0DE])
        kept, attempts = 0, 0
        while kept < classes:
            if attempts == 1000 + 100 * classes:
                # Too few chaos-game points for fill[0], say: fail rather than loop forever.
                raise ValueError(f"only {kept} of {classes} IFS classes fill {fill} of the canvas")
            attempts += 1
            n = int(rng.integers(maps[0], maps[1] + 1))
            matrices, offsets = sample_ifs(rng, n)
            self.matrices[kept], self.offsets[kept] = 0.0, 0.0
            self.matrices[kept, :n], self.offsets[kept, :n] = matrices, offsets
            self.n_maps[kept] = n
            canonical = self.render(np.array([kept]), render_rng, augment=False)[0]
            if fill[0] <= float((canonical > 0).mean()) <= fill[1]:
                kept += 1

    @property
    def classes(self) -> int:
        return len(self.n_maps)

    def _probabilities(self, matrices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Map probabilities ``∝ max(|det A_i|, floor)``, 0 for padding maps."""
        det = np.abs(np.linalg.det(matrices))
        used = np.arange(_MAX_MAPS) < self.n_maps[labels][:, None]
        weights = np.where(used, np.maximum(det, _PROB_FLOOR), 0.0)
        return weights / weights.sum(1, keepdims=True)

    def render(
        self, labels: np.ndarray, rng: np.random.Generator, *, augment: bool = True
    ) -> np.ndarray:
        """One image per label, ``(len(labels), size, size)`` float32 in ``[0, 1]``."""
        labels = np.asarray(labels, dtype=np.int64)
        n, size = len(labels), self.size
        matrices, offsets = self.matrices[labels], self.offsets[labels]
        if augment and self.jitter:
            matrices = matrices * (1 + self.jitter * rng.standard_normal(matrices.shape))
            offsets = offsets * (1 + self.jitter * rng.standard_normal(offsets.shape))
            # Keep every map contractive: jitter could push a singular value past 1.
            norm = np.linalg.norm(matrices, ord=2, axis=(-2, -1))
            matrices = matrices / np.maximum(norm / 0.999, 1.0)[..., None, None]
        cumulative = np.cumsum(self._probabilities(matrices, labels), 1)
        cumulative[:, -1] = 1.0
        rows = np.arange(n)[:, None]
        x = rng.uniform(-1.0, 1.0, (n, self.chains, 2))
        points = np.empty((n, self.chains, self.steps - self.burn_in, 2))
        for t in range(self.steps):
            u = rng.random((n, self.chains, 1))
            k = (u > cumulative[:, None, :]).sum(-1)
            x = np.einsum("ncij,ncj->nci", matrices[rows, k], x) + offsets[rows, k]
            if t >= self.burn_in:
                points[:, :, t - self.burn_in] = x
        points = points.reshape(n, -1, 2)
        low, high = points.min(1, keepdims=True), points.max(1, keepdims=True)
        # Fit the bounding box's longer side to the target extent, keeping the aspect ratio.
        extent = np.maximum((high - low).max(-1, keepdims=True), 1e-9)
        if augment:
            fraction = rng.uniform(*self.scale, (n, 1, 1))
            tone = rng.uniform(*self.tone, (n, 1, 1))
        else:
            fraction, tone = np.ones((n, 1, 1)), np.ones((n, 1, 1))
        span = fraction * (size - 1e-6)
        xy = (points - low) / extent * span
        room = size - 1e-6 - (high - low) / extent * span
        shift = rng.random((n, 1, 2)) * room if augment else room / 2
        pix = np.clip((xy + shift).astype(np.int64), 0, size - 1)
        flat = (np.arange(n)[:, None] * size + pix[..., 1]) * size + pix[..., 0]
        counts = np.bincount(flat.ravel(), minlength=n * size * size).reshape(n, size, size)
        return (1.0 - np.exp(-counts / tone)).astype(np.float32)

    def batch(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` augmented training images of uniformly drawn classes, and their labels."""
        labels = rng.integers(0, self.classes, n)
        return self.render(labels, rng), labels

    def heldout(self, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``per_class`` augmented images of every class from their own seed, class-major."""
        labels = np.repeat(np.arange(self.classes), per_class)
        return self.render(labels, np.random.default_rng([seed, 0x4E1D])), labels
