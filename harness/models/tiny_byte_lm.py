"""``builtin:tiny-byte-lm``: a small byte-level Llama trained on the fly on Python's stdlib source.

It gives the default suite and the tests a real causal LM (real weights, real perplexity
differences between compression methods) without any download. The tokenizer is
transformers' ``ByT5Tokenizer`` without sentinel ids: 256 byte tokens after 3 specials, so
bits per byte is just the loss in bits. The model is trained by :data:`RECIPE` and cached
under ``<cache_dir>/models/tiny-byte-lm-<recipe hash>/``; any change to the recipe makes a new
directory, so a cached model always matches the recipe that names it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.models.recipes import (
    RecipeModel,
    adamw,
    torch_threads,
    warmup_cosine,
    write_recipe_json,
)

if TYPE_CHECKING:
    import torch

__all__ = ["RECIPE", "TinyByteLM", "train_model"]

#: How the model is made. Everything that changes the weights is here, so its hash can key
#: the cache. Trains in about 30 s on two CPU cores to about 2.6 held-out bits per byte.
RECIPE: dict[str, Any] = {
    "version": 1,  # bump when train_model changes what the rest of a recipe means
    "architecture": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "corpus": {"source": "stdlib", "max_bytes": 1 << 25},
    "steps": 350,
    "batch": 8,
    "seq_len": 256,
    "lr": 2e-3,
    # Linear warmup, then cosine decay to final_lr_ratio * lr at the last step.
    "schedule": {"warmup_steps": 50, "final_lr_ratio": 0.1},
    # AdamW, gradients clipped to a global norm of grad_clip.
    "optimizer": {"betas": [0.9, 0.98], "weight_decay": 0.0, "grad_clip": 1.0},
    "eval": {"windows": 64, "seq_len": 256},
    "seed": 0,
    "torch_threads": 2,
}


def _byte_ids(data: bytes, offset: int) -> torch.Tensor:
    """Token ids of raw bytes: what the byte-level tokenizer gives, without its Python loop."""
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() + offset


def _heldout_bits_per_byte(model: Any, ids: torch.Tensor, recipe: Mapping[str, Any]) -> float:
    """Mean next-byte loss in bits over windows spread evenly across the test split."""
    import torch

    seq_len, windows = recipe["eval"]["seq_len"], recipe["eval"]["windows"]
    stride = (len(ids) - seq_len) // max(1, windows - 1)
    batch = torch.stack([ids[i * stride : i * stride + seq_len] for i in range(windows)])
    model.eval()
    with torch.inference_mode():
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    return float(loss) / math.log(2)


def train_model(recipe: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Train a model by ``recipe`` and save model, tokenizer and ``recipe.json`` in ``out_dir``.

    Deterministic given the recipe (seed, fixed data order, fixed thread count). Returns what
    ``recipe.json`` holds: the recipe, the final train loss, held-out bits per byte and the
    training time.
    """
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from harness.data.text_corpus import load_text

    tokenizer = ByT5Tokenizer(extra_ids=0)
    offset = tokenizer.convert_tokens_to_ids(chr(0))
    corpus = recipe["corpus"]
    train_text = load_text(corpus["source"], "train", corpus["max_bytes"])
    test_text = load_text(corpus["source"], "test", corpus["max_bytes"])
    seq_len, batch = recipe["seq_len"], recipe["batch"]
    # Kept as bytes (a quarter of int64 ids' memory); a batch adds the offset on the fly.
    train = torch.frombuffer(bytearray(train_text), dtype=torch.uint8)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **recipe["architecture"],
    )
    opt = recipe["optimizer"]
    losses: list[float] = []
    with torch_threads(recipe["torch_threads"]), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = LlamaForCausalLM(config)
        optimizer, scheduler = adamw(model, recipe, lambda step: warmup_cosine(step, recipe))
        order = torch.Generator().manual_seed(recipe["seed"])
        positions = torch.arange(seq_len)
        model.train()
        started = time.perf_counter()
        for _ in range(recipe["steps"]):
            starts = torch.randint(0, len(train) - seq_len, (batch, 1), generator=order)
            x = train[starts + positions].long() + offset
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"])
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        train_seconds = time.perf_counter() - started
        bits = _heldout_bits_per_byte(model, _byte_ids(test_text, offset), recipe)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return write_recipe_json(
        out_dir, recipe, losses, hashed=False, heldout_bits_per_byte=bits,
        train_seconds=train_seconds,
    )  # fmt: skip


class TinyByteLM(RecipeModel):
    """The ``tiny-byte-lm`` model entry; ``recipe`` defaults to :data:`RECIPE`."""

    name = "tiny-byte-lm"
    description = (
        "2-layer byte-level Llama (0.5 M params) trained on the fly on Python's stdlib source; "
        "the default suite's offline causal LM"
    )
    kinds = ("causal-lm",)
    default_recipe = RECIPE

    def train(self, recipe: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
        return train_model(recipe, out_dir)
