"""``builtin:tiny-llama-vqa``: a tiny word-level Llama that answers digit-grid questions.

A vision-language method (a ``vqa`` scenario's connector) needs a language model that already
speaks the task's answer format, so that what it adds, reading the image, is what the
benchmark measures. This 4-layer Llama with a word-level tokenizer over
:func:`harness.data.vqa.vocabulary` is pretrained by :data:`RECIPE` on templated text: a
question with the scene in words answered exactly, and the bare question answered from the
prior (:mod:`harness.data.vqa`). Its fp16 weights ship as package data with the recipe they
came from, so a first run trains nothing; a changed recipe trains into
``<cache_dir>/models/tiny-llama-vqa-<hash>/`` (about five minutes of one CPU core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.models.recipes import (
    RecipeModel,
    adamw,
    log_progress,
    torch_threads,
    warmup_cosine,
    write_recipe_json,
    write_trained,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "RECIPE",
    "SHIPPED_DIR",
    "TinyLlamaVQA",
    "build_tokenizer",
    "evaluate",
    "train_model",
]

#: Where the shipped weights, config, tokenizer and ``recipe.json`` live (package data).
SHIPPED_DIR = Path(__file__).parent / "weights" / "tiny-llama-vqa"

#: How the model is made. Everything that changes the weights is here, so its hash can key
#: the cache and tell whether the shipped weights are this recipe's.
RECIPE: dict[str, Any] = {
    "version": 1,  # bump when train_model or harness.data.vqa's templates change
    "tokenizer": {"special_tokens": ["<pad>", "<bos>", "<eos>", "<unk>"]},
    "architecture": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # The share of training sequences that carry the scene in words; the rest teach the prior.
    "scene_share": 0.5,
    # Question kinds drawn by weight. Position, a two-step lookup (the question's cell among
    # the scene's), is learnt last.
    "kind_weights": {"count": 1, "value": 1, "parity": 1, "compare": 1, "position": 2},
    "steps": 2000,
    "batch_size": 64,
    "lr": 3e-3,
    "schedule": {"warmup_steps": 100, "final_lr_ratio": 0.05},
    "optimizer": {"betas": [0.9, 0.98], "weight_decay": 0.0, "grad_clip": 1.0},
    # Held-out greedy exact match per kind, with and without the scene, stored in recipe.json.
    "eval": {"per_kind": 400, "seed": 1},
    "save_dtype": "float16",
    "seed": 0,
    "torch_threads": 1,
}


def build_tokenizer(spec: Mapping[str, Any]) -> Any:
    """A word-level tokenizer over the VQA vocabulary, every word one token, as a transformers
    fast tokenizer that adds ``<bos>`` like Llama's, pads on the left (batched prompts then end
    where the answer starts) and round-trips through ``save_pretrained``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from harness.data.vqa import vocabulary

    specials = list(spec["special_tokens"])
    words = specials + vocabulary()
    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(specials)
    bos = words.index("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def _examples(kinds: Sequence[str], rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """(kind, question, scene description, answer) for a fresh scene per entry of ``kinds``."""
    from harness.data.vqa import ask, describe, random_scene

    out = []
    for kind in kinds:
        scene = random_scene(rng)
        question, answer = ask(scene, kind, rng)
        out.append((kind, question, describe(scene), answer))
    return out


def evaluate(
    model: Any, tokenizer: Any, *, per_kind: int, seed: int, batch: int = 500
) -> dict[str, dict[str, float]]:
    """Held-out greedy exact match per kind, ``{"with_scene": {kind: em}, "without_scene":
    {...}}``, on ``per_kind`` fresh draws of each kind (the same draws in both settings).

    The answer is one token, so greedy decoding's answer is the argmax after the prompt.
    """
    import numpy as np
    import torch

    from harness.data.vqa import QUESTION_KINDS, prompt

    rng = np.random.default_rng([seed, 1])
    draws = _examples(list(QUESTION_KINDS) * per_kind, rng)
    device = next(model.parameters()).device
    model.eval()
    results: dict[str, dict[str, float]] = {}
    for setting in ("with_scene", "without_scene"):
        texts = [prompt(q, s if setting == "with_scene" else None) for _, q, s, _ in draws]
        hits = []
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i : i + batch], return_tensors="pt", padding=True)
            with torch.inference_mode():
                logits = model(**enc.to(device), logits_to_keep=1).logits[:, -1]
            hits.extend(tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist()))
        correct = {kind: 0 for kind in QUESTION_KINDS}
        for (kind, _, _, answer), guess in zip(draws, hits, strict=True):
            correct[kind] += guess == answer
        results[setting] = {kind: correct[kind] / per_kind for kind in QUESTION_KINDS}
    return results


def train_model(
    recipe: Mapping[str, Any],
    out_dir: Path,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the model by ``recipe``; save it, its tokenizer and ``recipe.json`` in ``out_dir``.

    Each step draws ``batch_size`` fresh sequences ``<bos> prompt answer <eos>`` of kinds
    drawn by ``kind_weights``, a ``scene_share`` of them with the scene in words,
    right-padded. The loss is the next-token cross-entropy on every token but the padding
    plus that on the answer and ``<eos>`` alone: the whole text teaches the template (and
    predicting a scene's next cell, which cells are there: trained on answers only, the model
    guessed position answers from the number of cells), the answer term keeps the rarer
    answers from being drowned (every token alone: 0.85 to 0.92 exact match with the scene
    on value, compare and position after 1,500 steps). Deterministic given the recipe on one
    device type. Returns what ``recipe.json`` holds: the recipe, its hash, the final train
    loss, the held-out exact match of the saved (``save_dtype``-rounded) weights and the
    training time.
    """
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.data.vqa import prompt

    tokenizer = build_tokenizer(recipe["tokenizer"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **recipe["architecture"],
    )
    say = progress or (lambda line: None)
    losses: list[float] = []
    with torch_threads(recipe["torch_threads"]), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = LlamaForCausalLM(config).to(device)
        optimizer, scheduler = adamw(model, recipe, lambda step: warmup_cosine(step, recipe))
        rng = np.random.default_rng([recipe["seed"], 0])
        names = list(recipe["kind_weights"])
        weights = np.array([recipe["kind_weights"][k] for k in names], dtype=float)
        started = time.perf_counter()
        for step in range(recipe["steps"]):
            model.train()
            texts = [
                f"{prompt(q, s if rng.random() < recipe['scene_share'] else None)} {a}"
                f" {tokenizer.eos_token}"
                for _, q, s, a in _examples(
                    rng.choice(names, size=recipe["batch_size"], p=weights / weights.sum()), rng
                )
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
            # The answer and <eos> are the last two tokens of each row.
            position = torch.arange(enc.input_ids.shape[1])
            lengths = enc.attention_mask.sum(1, keepdim=True)
            answer = (position >= lengths - 2) & (position < lengths)
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            out = model(**enc.to(device), labels=labels.to(device))
            answer_loss = torch.nn.functional.cross_entropy(
                out.logits[:, :-1][answer[:, 1:]].float(), enc.input_ids[answer].to(device)
            )
            loss = out.loss + answer_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["optimizer"]["grad_clip"])
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 100 == 0:
                recent = sum(losses[-100:]) / len(losses[-100:])
                elapsed = time.perf_counter() - started
                say(f"step {step + 1} loss {recent:.3f} train_s {elapsed:.0f}")
        train_seconds = time.perf_counter() - started
        model.to("cpu", getattr(torch, recipe["save_dtype"]))
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        # Measure the weights as saved, computing in float32.
        model.float()
        ev = recipe["eval"]
        em = evaluate(model, tokenizer, per_kind=ev["per_kind"], seed=ev["seed"])
    return write_recipe_json(
        out_dir, recipe, losses, heldout_exact_match=em, train_seconds=train_seconds,
        device=device,
    )  # fmt: skip


class TinyLlamaVQA(RecipeModel):
    """The ``tiny-llama-vqa`` model entry; ``recipe`` defaults to :data:`RECIPE`."""

    name = "tiny-llama-vqa"
    description = (
        "4-layer word-level Llama (1 M params) pretrained on digit-grid VQA text: answers "
        "exactly given the scene in words, from the prior without; the LM of vision-language runs"
    )
    kinds = ("causal-lm",)
    default_recipe = RECIPE
    shipped_dir = SHIPPED_DIR

    def train(self, recipe: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
        return train_model(recipe, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` the model by :data:`RECIPE` into a new directory or (``--ship``) the package
    data."""
    parser = argparse.ArgumentParser(prog="python -m harness.models.tiny_llama_vqa")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train by RECIPE and save model, tokenizer, info")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="directory to write (must not exist)")
    where.add_argument("--ship", action="store_true", help=f"replace {SHIPPED_DIR}")
    args = parser.parse_args(argv)
    out = SHIPPED_DIR if args.ship else args.out
    info = write_trained(
        out, lambda tmp: train_model(RECIPE, tmp, args.device, log_progress), replace=args.ship
    )
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
