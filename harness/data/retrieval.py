"""Retrieval episodes (needle, passkey, key-value recall) built in token space.

One builder serves both the training of ``builtin:tiny-llama-retrieval`` and the ``generate``
scenario's tasks, so the model is measured on exactly the format it learnt. An episode is a
context (prefilled as one block, so a KV-cache method compresses it before the question is
seen), a question fed after it, and the answer to generate. Episodes are cut in token space
from a haystack token stream, so the context has exactly the requested length for any
tokenizer, and the needle's relative depth is known exactly.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "FILLER",
    "HAYSTACKS",
    "KINDS",
    "MARKER_KEYS",
    "TEMPLATES",
    "Episode",
    "episode_batch",
    "haystack_ids",
    "make_episode",
    "stratified_depths",
]

KINDS = ("needle", "passkey", "kv-recall")
TEMPLATES = ("markers", "natural")
#: The classic passkey-retrieval filler (Mohtashami & Jaggi, 2023): repetitive, digit-free.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#: Each kind's usual haystack source for :func:`haystack_ids`.
HAYSTACKS = {"needle": "stdlib", "passkey": "filler", "kv-recall": "stdlib"}
#: How many filler sentences are tokenized as one block; longer haystacks repeat the block.
_FILLER_REPEATS = 32
#: Keys of the markers template's kv-recall needles (``<k1>`` .. ``<k8>``).
MARKER_KEYS = 8


@dataclass(frozen=True)
class Episode:
    """One retrieval question: prefill ``context_ids``, feed ``question_ids``, decode the answer."""

    #: Starts with the tokenizer's bos (when it has one); haystack with the needle(s) spliced
    #: in; exactly ``context_len`` tokens.
    context_ids: list[int]
    #: Fed after the context, e.g. the tokens of ``<query>`` or ``<query><k3>``.
    question_ids: list[int]
    #: The expected answer text, e.g. ``"40917"``.
    answer: str
    #: The answer's tokens as they continue the question: training targets and generation length.
    answer_ids: list[int]
    #: Where the queried needle starts: 0 right after bos, 1 when it ends the context.
    depth: float


def _encode(tokenizer: Any, text: str, *, split_special: bool = False) -> list[int]:
    """Token ids of ``text`` without bos/eos; ``split_special`` reads special-token text as text."""
    extra = {"split_special_tokens": True} if split_special else {}
    return list(tokenizer(text, add_special_tokens=False, verbose=False, **extra)["input_ids"])


@functools.lru_cache(maxsize=8)
def haystack_ids(
    tokenizer: Any, source: str = "stdlib", split: str = "test", max_bytes: int = 1 << 20
) -> torch.Tensor:
    """A 1-D token stream to cut haystacks from, tokenized once per process and cached.

    ``source`` is ``"filler"`` (:data:`FILLER` repeated; ``split`` and ``max_bytes`` are
    ignored), ``"stdlib"`` or the path of a UTF-8 text file (read by
    :func:`harness.data.text_corpus.load_text`: ``split`` ``"test"`` is held out from
    ``"train"``). Special-token text inside the haystack stays plain text, so a stray
    ``<query>`` in a source file can never pose as a marker.
    """
    if source == "filler":
        text = " ".join([FILLER] * _FILLER_REPEATS) + " "
    else:
        from harness.data.text_corpus import load_text

        text = load_text(source, split, max_bytes).decode("utf-8")
    return torch.tensor(_encode(tokenizer, text, split_special=True), dtype=torch.long)


def stratified_depths(count: int, rng: random.Random) -> list[float]:
    """``count`` depths, one uniform draw in each of ``count`` equal bins of [0, 1], in order."""
    return [(i + rng.random()) / count for i in range(count)]


def _digits(rng: random.Random, digits: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(digits))


def _texts(
    kind: str, template: str, rng: random.Random, pairs: int, digits: int
) -> tuple[list[str], int, str, str, str]:
    """Needle texts, the queried needle's index, the question, the answer and its continuation."""
    if kind == "kv-recall":
        if template == "markers":
            if not 1 <= pairs <= MARKER_KEYS:
                raise ValueError(f"markers kv-recall takes 1..{MARKER_KEYS} pairs, got {pairs}")
            keys = [f"<k{i}>" for i in rng.sample(range(1, MARKER_KEYS + 1), pairs)]
        else:
            if pairs < 1:
                raise ValueError(f"kv-recall needs at least one pair, got {pairs}")
            keys = []
            while len(keys) < pairs:
                key = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
                if key not in keys:
                    keys.append(key)
        values = [_digits(rng, digits) for _ in keys]
        target = rng.randrange(pairs)
        key, value = keys[target], values[target]
        if template == "markers":
            needles = [f"<needle>{k}{v}</needle>" for k, v in zip(keys, values, strict=True)]
            return needles, target, f"<query>{key}", value, value
        needles = [f" The value of key {k} is {v}. " for k, v in zip(keys, values, strict=True)]
        question = f" What is the value of key {key}? The value of key {key} is"
        return needles, target, question, value, f" {value}"
    value = _digits(rng, digits)
    if template == "markers":
        return [f"<needle>{value}</needle>"], 0, "<query>", value, value
    needle = f" The pass key is {value}. Remember it. {value} is the pass key. "
    return [needle], 0, " What is the pass key? The pass key is", value, f" {value}"


def _continuation(tokenizer: Any, question: str, question_ids: list[int], text: str) -> list[int]:
    """The tokens ``text`` gets right after ``question``: the suffix of their joint tokenization
    when the question's tokens are its prefix (merges across the seam stay honest), else
    ``text`` tokenized alone."""
    joint = _encode(tokenizer, question + text)
    if joint[: len(question_ids)] == question_ids and len(joint) > len(question_ids):
        return joint[len(question_ids) :]
    return _encode(tokenizer, text)


def make_episode(
    kind: str,
    tokenizer: Any,
    hay: torch.Tensor,
    context_len: int,
    rng: random.Random,
    *,
    depth: float | None = None,
    template: str = "markers",
    pairs: int = 4,
    digits: int = 5,
) -> Episode:
    """One episode of ``kind`` whose context is exactly ``context_len`` tokens.

    The context is the tokenizer's bos (none when it has none), then a random window of
    ``hay`` (from :func:`haystack_ids`, repeated when shorter than needed) with the needle
    tokens spliced in. The queried needle starts at relative ``depth`` (uniform when None:
    pass :func:`stratified_depths` for depth-binned tasks); kv-recall's other ``pairs - 1``
    needles go to uniform random places, so its recorded depth can differ from the requested
    one by their length. Values are ``digits`` random digits (repeats allowed). All randomness
    comes from ``rng``: the same seed gives the same episode. Raises ``ValueError`` when the
    needles do not fit in the context.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown episode kind {kind!r}; expected one of {KINDS}")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    texts, target, question, answer, continuation = _texts(kind, template, rng, pairs, digits)
    needles = [_encode(tokenizer, text) for text in texts]
    question_ids = _encode(tokenizer, question)
    answer_ids = _continuation(tokenizer, question, question_ids, continuation)
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    body = context_len - len(bos)
    hay_len = body - sum(len(n) for n in needles)
    if hay_len < 0:
        raise ValueError(
            f"{len(needles)} needle(s) of {body - hay_len} tokens do not fit a context of "
            f"{context_len} tokens"
        )
    if len(hay) == 0:
        raise ValueError("the haystack token stream is empty")
    if len(hay) < hay_len + 1:
        hay = hay.repeat(hay_len // len(hay) + 2)
    start = rng.randrange(len(hay) - hay_len + 1)
    window = hay[start : start + hay_len].tolist()
    # Hay offsets where the needles go; the queried one at its depth, ties put it last.
    if depth is None:
        depth = rng.random()
    offsets = [rng.randint(0, hay_len) for _ in needles]
    offsets[target] = round(depth * hay_len)
    order = sorted(range(len(needles)), key=lambda i: (offsets[i], i == target))
    context, taken, needle_start = list(bos), 0, 0
    for i in order:
        context += window[taken : offsets[i]]
        taken = offsets[i]
        if i == target:
            needle_start = len(context) - len(bos)
        context += needles[i]
    context += window[taken:]
    span = body - len(needles[target])
    return Episode(
        context_ids=context,
        question_ids=question_ids,
        answer=answer,
        answer_ids=answer_ids,
        depth=needle_start / span if span else 0.0,
    )


def episode_batch(episodes: Sequence[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs of equal-length episodes: ``context + question + answer[:-1]``,
    and the answer ids each row's last ``len(answer)`` logits must predict."""
    rows = [e.context_ids + e.question_ids + e.answer_ids[:-1] for e in episodes]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("episodes of one batch must have equal total length")
    return torch.tensor(rows), torch.tensor([e.answer_ids for e in episodes])
