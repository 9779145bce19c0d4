from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from harness.data.vqa import (
    CELLS,
    QUESTION_KINDS,
    Scene,
    VQASplits,
    ask,
    describe,
    digit_grid_vqa,
    prompt,
    random_scene,
    vocabulary,
)

#: A cell's summed intensity: background noise alone stays under 8, any drawn digit over 15.
INK = 11.0


@pytest.fixture(scope="module")
def data() -> VQASplits:
    return digit_grid_vqa(0, train=300, test=200)


def _expected(scene: Scene, question: str) -> str:
    """The answer to ``question`` worked out from the scene, independently of ask()."""
    words = question.split()
    if question.startswith("how many"):
        return str(len(scene.cells))
    if question.startswith("what digit"):
        return str(scene.digit)
    if question == "is the digit even ?":
        return "yes" if scene.digit in (0, 2, 4, 6, 8) else "no"
    if question.startswith("is the digit bigger than"):
        return "yes" if scene.digit > int(words[-2]) else "no"
    assert question.startswith("is there a digit at")
    return "yes" if words[-2] in scene.cells else "no"


def _cell_ink(images: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` summed intensity of each image's cells, in CELLS order."""
    half = images.shape[-1] // 2
    cells = images[:, 0].unfold(1, half, half).unfold(2, half, half)
    return cells.sum((-1, -2)).reshape(len(images), 4)


def test_is_deterministic_per_seed_and_differs_across_seeds(data: VQASplits) -> None:
    again = digit_grid_vqa(0, train=300, test=200)
    assert torch.equal(data.train_images, again.train_images)
    assert torch.equal(data.test_images, again.test_images)
    assert data.train_questions == again.train_questions
    assert data.test_answers == again.test_answers
    other = digit_grid_vqa(1, train=300, test=200)
    assert not torch.equal(data.train_images, other.train_images)
    assert data.train_questions != other.train_questions


def test_a_different_test_size_keeps_the_training_data(data: VQASplits) -> None:
    fewer = digit_grid_vqa(0, train=300, test=50)
    assert torch.equal(fewer.train_images, data.train_images)
    assert fewer.train_questions == data.train_questions
    assert torch.equal(fewer.test_images, data.test_images[:50])


def test_shapes_dtypes_and_range(data: VQASplits) -> None:
    for images, n in ((data.train_images, 300), (data.test_images, 200)):
        assert images.shape == (n, 1, 32, 32) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
    for lists, n in (
        (
            [data.train_questions, data.train_answers, data.train_kinds, data.train_scenes],
            300,
        ),
        ([data.test_questions, data.test_answers, data.test_kinds, data.test_sources], 200),
    ):
        assert [len(x) for x in lists] == [n] * 4
    assert digit_grid_vqa(0, size=64, train=3, test=2).train_images.shape == (3, 1, 64, 64)


def test_answers_agree_with_the_scene(data: VQASplits) -> None:
    for split in ("train", "test"):
        scenes, questions, answers, kinds = (
            getattr(data, f"{split}_{field}")
            for field in ("scenes", "questions", "answers", "kinds")
        )
        for scene, question, answer, kind in zip(scenes, questions, answers, kinds, strict=True):
            assert answer == _expected(scene, question), (scene, question)
            assert question.startswith(
                {"count": "how", "value": "what", "parity": "is the digit even",
                 "compare": "is the digit bigger", "position": "is there"}[kind]
            )  # fmt: skip


def test_ink_lies_in_exactly_the_scenes_cells(data: VQASplits) -> None:
    for images, scenes in (
        (data.train_images, data.train_scenes),
        (data.test_images, data.test_scenes),
    ):
        chosen = torch.tensor([[cell in s.cells for cell in CELLS] for s in scenes])
        ink = _cell_ink(images)
        assert ink[chosen].min() > INK and ink[~chosen].max() < INK


def test_train_and_test_draw_disjoint_sklearn_samples_of_the_scenes_class(
    data: VQASplits,
) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    used = {}
    for split in ("train", "test"):
        used[split] = set()
        scenes, sources = getattr(data, f"{split}_scenes"), getattr(data, f"{split}_sources")
        for scene, drawn in zip(scenes, sources, strict=True):
            assert len(drawn) == len(set(drawn)) == len(scene.cells)
            assert all(target[i] == scene.digit for i in drawn)
            used[split].update(drawn)
    assert used["train"].isdisjoint(used["test"])


def test_scenes_and_questions_are_spread_evenly() -> None:
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(2000)]
    assert all(s.cells and list(s.cells) == sorted(s.cells, key=CELLS.index) for s in scenes)
    assert set(Counter(s.digit for s in scenes)) == set(range(10))
    counts = Counter(len(s.cells) for s in scenes)
    assert sorted(counts) == [1, 2, 3, 4] and min(counts.values()) > 400
    for kind in ("parity", "compare", "position"):
        answers = Counter(ask(s, kind, rng)[1] for s in scenes[:400])
        assert set(answers) == {"yes", "no"}
        assert 0.3 < answers["yes"] / 400 < 0.7, (kind, answers)


def test_every_kind_appears(data: VQASplits) -> None:
    assert set(data.train_kinds) == set(QUESTION_KINDS) == set(data.test_kinds)


def test_ask_describe_and_prompt() -> None:
    scene = Scene(7, ("top-left", "bottom-right"))
    rng = np.random.default_rng(0)
    assert ask(scene, "count", rng) == ("how many digits are there ?", "2")
    assert ask(scene, "value", rng) == ("what digit is it ?", "7")
    assert ask(scene, "parity", rng) == ("is the digit even ?", "no")
    for kind in ("compare", "position"):
        question, answer = ask(scene, kind, rng)
        assert answer == _expected(scene, question)
    with pytest.raises(ValueError, match="unknown question kind"):
        ask(scene, "colour", rng)
    assert describe(scene) == "digit 7 at top-left bottom-right"
    assert prompt("what digit is it ?") == "question : what digit is it ? answer :"
    assert prompt("what digit is it ?", describe(scene)) == (
        "scene : digit 7 at top-left bottom-right question : what digit is it ? answer :"
    )


def test_vocabulary_covers_every_word_produced(data: VQASplits) -> None:
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    rng = np.random.default_rng(1)
    words = set()
    for _ in range(500):
        scene = random_scene(rng)
        for kind in QUESTION_KINDS:
            question, answer = ask(scene, kind, rng)
            words.update(f"{prompt(question, describe(scene))} {answer}".split(" "))
    words.update(w for q in data.train_questions + data.test_questions for w in q.split(" "))
    words.update(data.train_answers + data.test_answers)
    assert words <= set(vocab)
    assert set(vocab) == words
