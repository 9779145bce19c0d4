"""Documents of the project's offline lm-eval tasks, cut from held-out Python stdlib source.

lm-eval loads this file by path (``custom_dataset: !function utils.…`` in the task YAMLs
beside it). Each task's documents come from the test split of
:func:`harness.data.text_corpus.load_text` with a fixed seed, so they are the same on every
machine with the same Python version (the stdlib is the corpus), and no file is downloaded.
A line is *codelike* when it has at least ``MIN_CHARS`` characters besides indentation and
is not a comment: blank lines and comments would make trivial or unguessable items.
"""

from __future__ import annotations

import random
from typing import Any

from harness.data.text_corpus import load_text

#: Lines of code before the item's line, as its context.
CONTEXT_LINES = 6
MIN_CHARS = 12
#: Characters ``stdlib_next_chars`` scores (its filter cuts the generation to them).
NEXT_CHARS = 4
SEED = 1234
CORPUS_BYTES = 1 << 20


def _lines() -> list[str]:
    return load_text("stdlib", "test", CORPUS_BYTES).decode("utf-8").splitlines()


def _codelike(line: str) -> bool:
    text = line.strip()
    return len(text) >= MIN_CHARS and not text.startswith("#")


def _items(count: int) -> tuple[list[str], list[int], random.Random]:
    lines = _lines()
    rng = random.Random(SEED)
    candidates = [i for i in range(CONTEXT_LINES, len(lines)) if _codelike(lines[i])]
    return lines, rng.sample(candidates, count), rng


def _dataset(docs: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _swap(line: str, rng: random.Random) -> str:
    """``line`` with two adjacent, different characters (past its indentation) swapped."""
    body = len(line) - len(line.lstrip())
    spots = [j for j in range(body, len(line) - 1) if line[j] != line[j + 1]]
    j = rng.choice(spots)
    return line[:j] + line[j + 1] + line[j] + line[j + 2 :]


def next_line(count: int = 500, **_: Any) -> Any:
    """Multiple choice: which of four versions of the line after ``CONTEXT_LINES`` lines of
    code is the real one (the three others each have two adjacent characters swapped)."""
    lines, picks, rng = _items(count)
    docs = []
    for i in picks:
        line = lines[i]
        choices = [line]
        while len(choices) < 4:
            variant = _swap(line, rng)
            if variant not in choices:
                choices.append(variant)
        rng.shuffle(choices)
        context = "\n".join(lines[i - CONTEXT_LINES : i]) + "\n"
        docs.append({"context": context, "choices": choices, "label": choices.index(line)})
    return _dataset(docs)


def next_chars(count: int = 300, **_: Any) -> Any:
    """Generation: the next ``NEXT_CHARS`` characters of a line of code, cut at a random
    place past its indentation, given the lines before it and the line so far."""
    lines, picks, rng = _items(count)
    docs = []
    for i in picks:
        line = lines[i].rstrip()
        body = len(line) - len(line.lstrip())
        cut = rng.randint(body + 1, len(line) - NEXT_CHARS)
        context = "\n".join(lines[i - CONTEXT_LINES : i]) + "\n" + line[:cut]
        docs.append({"context": context, "target": line[cut : cut + NEXT_CHARS]})
    return _dataset(docs)


def target_prefix(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """Each response cut to its target's length (a filter: the next characters are scored,
    whatever the tokenizer made of the rest of the generation)."""
    return [[r[: len(doc["target"])] for r in rs] for rs, doc in zip(resps, docs, strict=True)]
