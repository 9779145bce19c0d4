from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.data.retrieval import (
    FILLER,
    HAYSTACKS,
    KINDS,
    TEMPLATES,
    Episode,
    episode_batch,
    haystack_ids,
    make_episode,
    stratified_depths,
)


@pytest.fixture(scope="module", params=["tiny-llama-retrieval", "byt5"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """The shipped model's BPE (with bos and marker tokens) and ByT5's bytes (no bos)."""
    if request.param == "byt5":
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer(extra_ids=0)
    from transformers import AutoTokenizer

    from harness.models.tiny_llama_retrieval import SHIPPED_DIR

    return AutoTokenizer.from_pretrained(SHIPPED_DIR)


def _hay(tokenizer: Any, kind: str) -> torch.Tensor:
    return haystack_ids(tokenizer, HAYSTACKS[kind], "test", 1 << 15)


def _find(haystack: list[int], needle: list[int]) -> list[int]:
    return [
        i for i in range(len(haystack) - len(needle) + 1) if haystack[i : i + len(needle)] == needle
    ]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("kind", KINDS)
def test_episode_has_exact_length_and_a_recoverable_answer(
    tokenizer: Any, kind: str, template: str
) -> None:
    episode = make_episode(
        kind, tokenizer, _hay(tokenizer, kind), 300, random.Random(3), template=template
    )
    assert len(episode.context_ids) == 300
    bos = tokenizer.bos_token_id
    if bos is not None:
        assert episode.context_ids[0] == bos and bos not in episode.context_ids[1:]
    assert len(episode.answer) == 5 and episode.answer.isdigit()
    assert tokenizer.decode(episode.answer_ids).strip() == episode.answer
    question = tokenizer.decode(episode.question_ids)
    context = tokenizer.decode(episode.context_ids, skip_special_tokens=False)
    assert 0.0 <= episode.depth <= 1.0
    if template == "markers":
        assert question.startswith("<query>")
        if kind == "kv-recall":
            key = question.removeprefix("<query>")
            assert f"<needle>{key}{episode.answer}</needle>" in context
            assert context.count("<needle>") == 4
        else:
            assert context.count(f"<needle>{episode.answer}</needle>") == 1
    elif kind == "kv-recall":
        key = question.split("key ")[1].split("?")[0]
        assert len(key) == 6 and key.isalpha()
        assert f"The value of key {key} is {episode.answer}." in context
        assert context.count("The value of key") == 4
        assert question.endswith(f"The value of key {key} is")
    else:
        assert f"The pass key is {episode.answer}. Remember it." in context
        assert question == " What is the pass key? The pass key is"


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_episode(tokenizer: Any, kind: str) -> None:
    hay = _hay(tokenizer, kind)
    a, b, c = (make_episode(kind, tokenizer, hay, 128, random.Random(s)) for s in (7, 7, 8))
    assert a == b
    assert a != c


@pytest.mark.parametrize("kind", ["needle", "passkey"])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_needle_sits_at_the_requested_depth(tokenizer: Any, kind: str, depth: float) -> None:
    episode = make_episode(
        kind, tokenizer, _hay(tokenizer, kind), 256, random.Random(0), depth=depth
    )
    needle = tokenizer(f"<needle>{episode.answer}</needle>", add_special_tokens=False)["input_ids"]
    (start,) = _find(episode.context_ids, needle)
    first = 0 if tokenizer.bos_token_id is None else 1
    span = 256 - first - len(needle)
    assert start - first == round(depth * span)
    assert episode.depth == pytest.approx(depth, abs=1 / span)


def test_kv_recall_depth_is_where_the_queried_pair_is(tokenizer: Any) -> None:
    hay = _hay(tokenizer, "kv-recall")
    rng = random.Random(1)
    for depth in stratified_depths(10, rng):
        episode = make_episode("kv-recall", tokenizer, hay, 400, rng, depth=depth, pairs=3)
        key = tokenizer.decode(episode.question_ids).removeprefix("<query>")
        needle = tokenizer(f"<needle>{key}{episode.answer}</needle>", add_special_tokens=False)[
            "input_ids"
        ]
        (start,) = _find(episode.context_ids, needle)
        first = 0 if tokenizer.bos_token_id is None else 1
        assert episode.depth == pytest.approx((start - first) / (400 - first - len(needle)))
        # The other pairs can shift it by at most their own length.
        assert abs(episode.depth - depth) <= 2 * len(needle) / (400 - first - len(needle))


def test_short_haystacks_repeat_and_needles_must_fit(tokenizer: Any) -> None:
    hay = torch.tensor(tokenizer(" short hay", add_special_tokens=False)["input_ids"])
    episode = make_episode("needle", tokenizer, hay, 200, random.Random(0))
    assert len(episode.context_ids) == 200
    with pytest.raises(ValueError, match="do not fit"):
        make_episode("kv-recall", tokenizer, hay, 20, random.Random(0), pairs=8)


def test_bad_arguments_are_refused(tokenizer: Any) -> None:
    hay = _hay(tokenizer, "needle")
    with pytest.raises(ValueError, match="unknown episode kind"):
        make_episode("haystack", tokenizer, hay, 64, random.Random(0))
    with pytest.raises(ValueError, match="unknown template"):
        make_episode("needle", tokenizer, hay, 64, random.Random(0), template="chat")
    with pytest.raises(ValueError, match="depth"):
        make_episode("needle", tokenizer, hay, 64, random.Random(0), depth=1.5)
    with pytest.raises(ValueError, match="pairs"):
        make_episode("kv-recall", tokenizer, hay, 256, random.Random(0), pairs=9)


def test_digits_sets_the_answer_length(tokenizer: Any) -> None:
    episode = make_episode(
        "passkey", tokenizer, _hay(tokenizer, "passkey"), 64, random.Random(0), digits=9
    )
    assert len(episode.answer) == 9 and tokenizer.decode(episode.answer_ids) == episode.answer


def test_filler_haystack_is_the_classic_filler(tokenizer: Any) -> None:
    hay = haystack_ids(tokenizer, "filler")
    assert haystack_ids(tokenizer, "filler") is hay  # tokenized once per process
    text = tokenizer.decode(hay[:200].tolist())
    assert text.startswith(FILLER)
    assert not any(ch.isdigit() for ch in tokenizer.decode(hay.tolist()))


def test_special_token_text_in_a_source_stays_text(tokenizer: Any, tmp_path: Path) -> None:
    source = tmp_path / "hay.txt"
    source.write_text("a <query> b <needle> c <bos>\n" * 50)
    hay = haystack_ids(tokenizer, str(source), "train", 1 << 20)
    ids = set(hay.tolist())
    for marker in ("<query>", "<needle>", "<bos>"):
        if marker in tokenizer.get_vocab():
            assert tokenizer.convert_tokens_to_ids(marker) not in ids
    assert "<query>" in tokenizer.decode(hay.tolist())


def test_stratified_depths_put_one_draw_in_each_bin() -> None:
    depths = stratified_depths(20, random.Random(0))
    assert [int(d * 20) for d in depths] == list(range(20))
    assert stratified_depths(20, random.Random(0)) == depths


def test_episode_batch_teacher_forces_the_answer(tokenizer: Any) -> None:
    rng = random.Random(0)
    hay = _hay(tokenizer, "needle")
    episodes = [make_episode("needle", tokenizer, hay, 64, rng) for _ in range(3)]
    x, y = episode_batch(episodes)
    q, a = len(episodes[0].question_ids), len(episodes[0].answer_ids)
    assert x.shape == (3, 64 + q + a - 1) and y.shape == (3, a)
    assert (
        x[0].tolist()
        == episodes[0].context_ids + episodes[0].question_ids + episodes[0].answer_ids[:-1]
    )
    assert y[2].tolist() == episodes[2].answer_ids
    short = make_episode("needle", tokenizer, hay, 63, rng)
    with pytest.raises(ValueError, match="equal total length"):
        episode_batch([*episodes, short])


def test_episode_is_frozen() -> None:
    episode = Episode([1], [2], "3", [3], 0.5)
    with pytest.raises(AttributeError):
        episode.depth = 0.1  # type: ignore[misc]
