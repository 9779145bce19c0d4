"""Offline visual question answering on a "digit grid", for vision-language scenarios.

VQA benchmarks (VQAv2, ScienceQA) are out of reach offline, so this module builds a task from
a seed and scikit-learn's 8x8 digits (docs/architecture.md, "Offline by default"). A scene is
one digit class drawn in 1 to 4 cells of a 2x2 grid, each cell holding a different handwritten
sample of that class; a question about it has a one-word answer. Questions and answers are
word-level over the small fixed :func:`vocabulary`, so a tiny word-level language model
(``builtin:tiny-llama-vqa``) can be pretrained on the same templates: :func:`describe` puts a
scene into words, and with it the LM answers exactly, without it only from the prior. An
adapted vision-language model has to read the image to close that gap.

Images are 1-channel float32 ``size`` x ``size`` in ``[0, 1]`` with a black background, like
:mod:`harness.data.images`; lengths are given for a 32-pixel canvas and scale with ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.data.images import add_pixel_noise, resized, stratified_split

__all__ = [
    "CELLS",
    "QUESTION_KINDS",
    "Scene",
    "VQASplits",
    "ask",
    "describe",
    "digit_grid_vqa",
    "prompt",
    "random_scene",
    "vocabulary",
]

QUESTION_KINDS: tuple[str, ...] = ("count", "value", "parity", "compare", "position")
#: The 2x2 grid's cells in reading order; a cell's index is ``row * 2 + col``.
CELLS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")

#: Question templates; ``{k}`` is a digit, ``{cell}`` a cell name.
_QUESTIONS = {
    "count": "how many digits are there ?",
    "value": "what digit is it ?",
    "parity": "is the digit even ?",
    "compare": "is the digit bigger than {k} ?",
    "position": "is there a digit at {cell} ?",
}
_DIGITS = tuple(str(d) for d in range(10))
#: Mixed into the seed, so this task's streams are unrelated to other builders'.
_STREAM = 14
#: sklearn digits kept for the test images; the other 1,297 draw the training images.
_TEST_SOURCES = 500


@dataclass(frozen=True)
class Scene:
    """What an image shows: one digit class in some cells (in :data:`CELLS` order)."""

    digit: int
    cells: tuple[str, ...]


def random_scene(rng: np.random.Generator) -> Scene:
    """A uniform digit in k uniform in 1..4 cells, the cells a uniform k-subset."""
    digit = int(rng.integers(10))
    k = int(rng.integers(1, len(CELLS) + 1))
    chosen = sorted(rng.choice(len(CELLS), size=k, replace=False))
    return Scene(digit, tuple(CELLS[i] for i in chosen))


def ask(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """A ``kind`` question about ``scene`` and its one-word answer.

    ``compare`` draws its threshold uniformly from 0..9 (answer "yes" 45 % of the time) and
    ``position`` its cell from all four (answer "yes" 62.5 % of the time, as scenes fill 2.5
    cells on average); the other kinds draw nothing.
    """
    if kind == "count":
        return _QUESTIONS[kind], str(len(scene.cells))
    if kind == "value":
        return _QUESTIONS[kind], str(scene.digit)
    if kind == "parity":
        return _QUESTIONS[kind], _yes(scene.digit % 2 == 0)
    if kind == "compare":
        k = int(rng.integers(10))
        return _QUESTIONS[kind].format(k=k), _yes(scene.digit > k)
    if kind == "position":
        cell = CELLS[int(rng.integers(len(CELLS)))]
        return _QUESTIONS[kind].format(cell=cell), _yes(cell in scene.cells)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def describe(scene: Scene) -> str:
    """The scene in words, e.g. ``"digit 7 at top-left bottom-right"``, for LM pretraining."""
    return f"digit {scene.digit} at {' '.join(scene.cells)}"


def prompt(question: str, scene: str | None = None) -> str:
    """The text a language model sees before its answer, with the scene in words if given."""
    context = "" if scene is None else f"scene : {scene} "
    return f"{context}question : {question} answer :"


def vocabulary() -> list[str]:
    """Every word :func:`prompt`, :func:`describe` and :func:`ask` can produce, sorted."""
    texts = [
        prompt(_QUESTIONS[kind].format(k=0, cell=CELLS[0]), describe(Scene(0, CELLS)))
        for kind in QUESTION_KINDS
    ]
    words = {word for text in texts for word in text.split()}
    return sorted(words | set(_DIGITS) | set(CELLS) | {"yes", "no"})


@dataclass(frozen=True)
class VQASplits:
    """Train and test images with one question each, its answer and kind, and what made it."""

    train_images: torch.Tensor  # [N, 1, size, size] float32 in [0, 1]
    train_questions: list[str]
    train_answers: list[str]
    train_kinds: list[str]
    test_images: torch.Tensor
    test_questions: list[str]
    test_answers: list[str]
    test_kinds: list[str]
    #: Each image's scene, and the scikit-learn digit indices drawn in its cells (in order).
    train_scenes: list[Scene]
    train_sources: list[tuple[int, ...]]
    test_scenes: list[Scene]
    test_sources: list[tuple[int, ...]]


def digit_grid_vqa(seed: int, size: int = 32, train: int = 2000, test: int = 500) -> VQASplits:
    """``train`` and ``test`` digit-grid images, one uniformly drawn question kind each.

    The 1,797 scikit-learn digits are split first (:func:`~harness.data.images.
    stratified_split`, 500 for test), so no handwritten sample appears in both splits; each
    split then draws from its own random stream, so the test size never changes the training
    images. A drawn cell gets a sample resized bilinearly to 10..14 pixels at a random offset
    inside its 16-pixel cell, a random intensity in [0.7, 1], and the image Gaussian noise of
    std 0.05.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    sources = digits.images / 16.0
    pools = stratified_split(digits.target, len(digits.target) - _TEST_SOURCES, 0, None, seed)
    factor = size / 32
    low, high = max(2, round(10 * factor)), max(2, round(14 * factor))
    cell = size // 2
    if high > cell:
        raise ValueError(f"digits of {high} px do not fit a {cell} px cell")
    parts = []
    for part, (n, pool) in enumerate([(train, pools[0]), (test, pools[2])]):
        rng = np.random.default_rng([seed, _STREAM, part])
        by_class = [pool[digits.target[pool] == d] for d in range(10)]
        images = np.zeros((n, 1, size, size))
        questions, answers, kinds, scenes, drawn = [], [], [], [], []
        for image in images:
            scene = random_scene(rng)
            kind = QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))]
            question, answer = ask(scene, kind, rng)
            samples = rng.choice(by_class[scene.digit], size=len(scene.cells), replace=False)
            for name, index in zip(scene.cells, samples, strict=True):
                side = int(rng.integers(low, high + 1))
                glyph = resized(sources[index], side)
                row, col = divmod(CELLS.index(name), 2)
                top = row * cell + int(rng.integers(0, cell - side + 1))
                left = col * cell + int(rng.integers(0, cell - side + 1))
                image[0, top : top + side, left : left + side] = glyph * rng.uniform(0.7, 1.0)
            image[:] = add_pixel_noise(image, 0.05, rng)
            questions.append(question)
            answers.append(answer)
            kinds.append(kind)
            scenes.append(scene)
            drawn.append(tuple(int(i) for i in samples))
        tensor = torch.from_numpy(images.astype(np.float32))
        parts.append((tensor, questions, answers, kinds, scenes, drawn))
    (trx, trq, tra, trk, trs, trd), (tex, teq, tea, tek, tes, ted) = parts
    return VQASplits(trx, trq, tra, trk, tex, teq, tea, tek, trs, trd, tes, ted)
