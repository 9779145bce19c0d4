"""``builtin:tiny-llama-retrieval``: a tiny Llama that really retrieves, as a KV-cache testbed.

KV-cache methods (eviction, quantisation, top-k attention) only show their effect on a model
whose answer depends on one far-back token span. This 2-layer Llama with its own 1024-token
BPE (every digit its own token) is trained by :data:`RECIPE` on needle, passkey and
key-value-recall episodes (:mod:`harness.data.retrieval`, markers template) cut from Python's
stdlib source, and answers held-out needles and passkeys at up to 1024 tokens almost always.
Its fp16 weights ship as package data with the recipe they came from, so a first run trains
nothing; a changed recipe trains into ``<cache_dir>/models/tiny-llama-retrieval-<hash>/``
(about 20 minutes of one CPU core). The recipe follows shared/research/exp-tiny-llama.md: the
induction behind retrieval only appears with a length curriculum that starts at 32 tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import random
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
    write_recipe_json,
    write_trained,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "RECIPE",
    "SHIPPED_DIR",
    "TinyLlamaRetrieval",
    "build_tokenizer",
    "evaluate",
    "train_model",
]

#: Where the shipped weights, config, tokenizer and ``recipe.json`` live (package data).
SHIPPED_DIR = Path(__file__).parent / "weights" / "tiny-llama-retrieval"

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<needle>", "</needle>", "<query>"] + [
    f"<k{i}>" for i in range(1, 9)
]

_FULL_MIX = {"needle": 0.5, "passkey": 0.25, "kv-recall": 0.25}

#: How the model is made. Everything that changes the weights is here, so its hash can key
#: the cache and tell whether the shipped weights are this recipe's.
RECIPE: dict[str, Any] = {
    "version": 1,  # bump when train_model changes what the rest of a recipe means
    "tokenizer": {"vocab_size": 1024, "special_tokens": SPECIAL_TOKENS},
    "architecture": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "attention_bias": True,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    # Tokenizer and training haystacks come from the train split, evaluation from the test split.
    "corpus": {"source": "stdlib", "max_bytes": 1 << 25},
    # Each training sequence is one episode of the markers template; kv-recall has
    # 2..max_pairs pairs (fewer where they do not fit).
    "episodes": {"template": "markers", "digits": 5, "max_pairs": 4},
    # Phases of steps, sequence lengths cycled step by step, and episode kinds drawn by
    # weight. Retrieval grows out of positional copying learnt at 32 tokens; kv-recall
    # joins once needle retrieval works (from the start it held needle EM at 256 tokens to 0.4
    # by step 2800, where needle-only training reaches 0.95);
    # mixed lengths at the end keep the short ones. With ``jitter`` j a step's length is drawn
    # from [(1 - j)·L, L]: trained only at exact lengths, the model retrieved at those but
    # failed at some in between (context 479: 0.10 exact match, 482: 1.00).
    "curriculum": [
        {"steps": 800, "lengths": [32], "mix": {"needle": 0.75, "passkey": 0.25}},
        {"steps": 800, "lengths": [64], "mix": {"needle": 0.75, "passkey": 0.25}},
        {"steps": 800, "lengths": [128], "mix": {"needle": 0.75, "passkey": 0.25}},
        {"steps": 600, "lengths": [256], "mix": {"needle": 0.75, "passkey": 0.25}},
        {"steps": 800, "lengths": [512], "jitter": 0.5, "mix": _FULL_MIX},
        {"steps": 1000, "lengths": [1024, 256, 1024, 512], "jitter": 0.5, "mix": _FULL_MIX},
    ],
    "tokens_per_step": 4096,
    "lr": 5e-3,
    # Linear warmup, constant until decay_start, then cosine down to final_lr at the last step.
    "schedule": {"warmup_steps": 100, "decay_start": 1600, "final_lr": 3e-4},
    "optimizer": {"betas": [0.9, 0.98], "weight_decay": 0.0, "grad_clip": 1.0},
    # Held-out exact match (teacher-forced argmax, equal to greedy) stored in recipe.json.
    "eval": {"lengths": [256, 1024], "episodes": 200, "pairs": 4, "seed": 1},
    "save_dtype": "float16",
    "seed": 0,
    "torch_threads": 1,
}


def build_tokenizer(spec: Mapping[str, Any], text: str) -> Any:
    """A byte-level BPE trained on ``text`` with every digit its own token, as a transformers
    fast tokenizer that adds ``<bos>`` like Llama's and round-trips through ``save_pretrained``.

    Single digits make a passkey's answer exactly ``digits`` tokens whatever the digits are.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(spec["special_tokens"])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunk = 1 << 16
    bpe.train_from_iterator((text[i : i + chunk] for i in range(0, len(text), chunk)), trainer)
    bos = bpe.token_to_id("<bos>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens=specials[3:],
    )


def _lr_factor(step: int, total: int, recipe: Mapping[str, Any]) -> float:
    schedule = recipe["schedule"]
    warmup, decay_start = schedule["warmup_steps"], schedule["decay_start"]
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    final = schedule["final_lr"] / recipe["lr"]
    progress = (step - decay_start) / max(1, total - decay_start)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def _schedule(recipe: Mapping[str, Any]) -> list[tuple[int, Mapping[str, float]]]:
    """The sequence length and the kind mix of every training step (seeded)."""
    rng = random.Random(f"lengths-{recipe['seed']}")
    steps: list[tuple[int, Mapping[str, float]]] = []
    for phase in recipe["curriculum"]:
        cycle, jitter = phase["lengths"], phase.get("jitter", 0.0)
        for i in range(phase["steps"]):
            top = cycle[i % len(cycle)]
            steps.append((rng.randint(round(top * (1 - jitter)), top), phase["mix"]))
    return steps


def _haystacks(
    tokenizer: Any, kinds: Sequence[str], corpus: Mapping[str, Any], split: str
) -> dict[str, torch.Tensor]:
    """Each kind's haystack stream: its usual source, with the corpus standing for stdlib."""
    from harness.data.retrieval import HAYSTACKS, haystack_ids

    return {
        kind: haystack_ids(
            tokenizer,
            corpus["source"] if HAYSTACKS[kind] == "stdlib" else HAYSTACKS[kind],
            split,
            corpus["max_bytes"],
        )
        for kind in kinds
    }


class _Episodes:
    """Makes equal-length episode batches: each kind's context is shortened by its question
    and answer so that ``context + question + answer[:-1]`` is exactly the sequence length."""

    def __init__(
        self, tokenizer: Any, hays: Mapping[str, torch.Tensor], spec: Mapping[str, Any]
    ) -> None:
        from harness.data.retrieval import make_episode

        self.make, self.tokenizer, self.hays, self.spec = make_episode, tokenizer, hays, spec
        # Question and answer lengths do not depend on the draw in the markers template.
        self.extra = {}
        for kind in hays:
            probe = make_episode(kind, tokenizer, hays[kind], 64, random.Random(0), **self._opts(1))
            self.extra[kind] = len(probe.question_ids) + len(probe.answer_ids) - 1

    def _opts(self, pairs: int) -> dict[str, Any]:
        return {"template": self.spec["template"], "digits": self.spec["digits"], "pairs": pairs}

    def episode(
        self,
        kind: str,
        length: int,
        rng: random.Random,
        depth: float | None = None,
        pairs: int | None = None,
    ) -> Any:
        """An episode of ``length`` teacher-forced tokens; kv-recall draws ``pairs`` when None."""
        if pairs is None:
            # Marker needles of about 8 tokens each: leave at least half the context as hay.
            fit = max(1, min(self.spec["max_pairs"], length // 16))
            pairs = rng.randint(min(2, fit), fit) if kind == "kv-recall" else 1
        context_len = length - self.extra[kind]
        return self.make(
            kind,
            self.tokenizer,
            self.hays[kind],
            context_len,
            rng,
            depth=depth,
            **self._opts(pairs),
        )


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    lengths: Sequence[int],
    episodes: int,
    seed: int,
    pairs: int = 4,
    kinds: Sequence[str] = ("needle", "passkey", "kv-recall"),
    template: str = "markers",
    digits: int = 5,
    corpus: Mapping[str, Any] | None = None,
    batch_tokens: int = 16384,
) -> dict[str, dict[str, float]]:
    """Held-out exact match per kind and sequence length, ``{kind: {str(length): em}}``.

    A length counts the teacher-forced tokens, as in training: context, question and answer
    but its last token, so the context is 6 (kv-recall: 7) tokens shorter. Haystacks come
    from the corpus's test split (passkey: the filler); needle depths are stratified. Exact
    match is teacher-forced argmax over the whole answer, which equals greedy decoding's
    exact match, in one forward per batch.
    """

    import torch

    from harness.data.retrieval import episode_batch, stratified_depths

    hays = _haystacks(tokenizer, kinds, corpus or RECIPE["corpus"], "test")
    maker = _Episodes(tokenizer, hays, {"template": template, "digits": digits, "max_pairs": pairs})
    device = next(model.parameters()).device
    results: dict[str, dict[str, float]] = {}
    model.eval()
    for kind in kinds:
        results[kind] = {}
        for length in lengths:
            rng = random.Random(f"{seed}-{kind}-{length}")
            depths = stratified_depths(episodes, rng)
            eps = [maker.episode(kind, length, rng, depth=d, pairs=pairs) for d in depths]
            per_batch = max(1, batch_tokens // length)
            correct = 0
            for i in range(0, len(eps), per_batch):
                x, y = episode_batch(eps[i : i + per_batch])
                with torch.inference_mode():
                    logits = model(input_ids=x.to(device), logits_to_keep=y.shape[1]).logits
                correct += int((logits.argmax(-1).cpu() == y).all(-1).sum())
            results[kind][str(length)] = correct / len(eps)
    return results


def train_model(
    recipe: Mapping[str, Any],
    out_dir: Path,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """Train tokenizer and model by ``recipe``; save them and ``recipe.json`` in ``out_dir``.

    Deterministic given the recipe on one device type (seeded init and episode stream, fixed
    thread count). ``progress`` gets a log line every 100 steps and, every ``eval_every``
    steps (0: never), a quick held-out evaluation; neither changes the weights. Returns what
    ``recipe.json`` holds: the recipe, its hash, the final train loss, the held-out exact
    match of the saved (``save_dtype``-rounded) weights and the training time.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.data.retrieval import episode_batch
    from harness.data.text_corpus import load_text

    corpus, spec, opt = recipe["corpus"], recipe["episodes"], recipe["optimizer"]
    train_text = load_text(corpus["source"], "train", corpus["max_bytes"]).decode("utf-8")
    tokenizer = build_tokenizer(recipe["tokenizer"], train_text)
    kinds = sorted({kind for phase in recipe["curriculum"] for kind in phase["mix"]})
    maker = _Episodes(tokenizer, _haystacks(tokenizer, kinds, corpus, "train"), spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **recipe["architecture"],
    )
    schedule = _schedule(recipe)
    say = progress or (lambda line: None)
    losses: list[float] = []
    with torch_threads(recipe["torch_threads"]), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = LlamaForCausalLM(config).to(device)
        optimizer, scheduler = adamw(
            model, recipe, lambda step: _lr_factor(step, len(schedule), recipe)
        )
        rng = random.Random(recipe["seed"])
        train_seconds = 0.0
        for step, (length, mix) in enumerate(schedule):
            started = time.perf_counter()
            model.train()
            batch = [
                maker.episode(rng.choices(list(mix), list(mix.values()))[0], length, rng)
                for _ in range(max(1, recipe["tokens_per_step"] // length))
            ]
            x, y = episode_batch(batch)
            logits = model(input_ids=x.to(device), logits_to_keep=y.shape[1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.to(device).flatten()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"])
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            train_seconds += time.perf_counter() - started
            if (step + 1) % 100 == 0:
                recent = sum(losses[-100:]) / len(losses[-100:])
                say(f"step {step + 1} T={length} loss {recent:.3f} train_s {train_seconds:.0f}")
            if eval_every and (step + 1) % eval_every == 0:
                em = evaluate(
                    model, tokenizer, lengths=[64, 256, 1024], episodes=64, seed=99,
                    corpus=corpus, template=spec["template"], digits=spec["digits"],
                )  # fmt: skip
                say(f"step {step + 1} EM {json.dumps(em)}")
        model.to("cpu", getattr(torch, recipe["save_dtype"]))
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        # Measure the weights as saved, computing in float32.
        model.float()
        ev = recipe["eval"]
        em = evaluate(
            model, tokenizer, lengths=ev["lengths"], episodes=ev["episodes"], seed=ev["seed"],
            pairs=ev["pairs"], corpus=corpus, template=spec["template"], digits=spec["digits"],
        )  # fmt: skip
    return write_recipe_json(
        out_dir, recipe, losses, heldout_exact_match=em, train_seconds=train_seconds,
        device=device,
    )  # fmt: skip


class TinyLlamaRetrieval(RecipeModel):
    """The ``tiny-llama-retrieval`` model entry; ``recipe`` defaults to :data:`RECIPE`."""

    name = "tiny-llama-retrieval"
    description = (
        "2-layer Llama (0.6 M params, 1024-token BPE) trained to retrieve needles, passkeys "
        "and key-value pairs from stdlib text at up to 1024 tokens; a KV-cache testbed"
    )
    kinds = ("causal-lm",)
    default_recipe = RECIPE
    shipped_dir = SHIPPED_DIR

    def train(self, recipe: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
        return train_model(recipe, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``train`` the model by :data:`RECIPE` (``--ship`` into the package data), or ``eval``
    a saved one in a given dtype."""
    parser = argparse.ArgumentParser(prog="python -m harness.models.tiny_llama_retrieval")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train by RECIPE and save model, tokenizer, info")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="directory to write (must not exist)")
    where.add_argument("--ship", action="store_true", help=f"replace {SHIPPED_DIR}")
    train.add_argument("--eval-every", type=int, default=0, help="quick evaluation interval")
    check = commands.add_parser("eval", help="held-out exact match of a saved model")
    check.add_argument("dir", type=Path)
    check.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    check.add_argument("--lengths", type=int, nargs="+", default=RECIPE["eval"]["lengths"])
    check.add_argument("--episodes", type=int, default=RECIPE["eval"]["episodes"])
    args = parser.parse_args(argv)
    if args.command == "eval":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(RECIPE["torch_threads"])
        model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=getattr(torch, args.dtype))
        tokenizer = AutoTokenizer.from_pretrained(args.dir)
        ev = RECIPE["eval"]
        em = evaluate(
            model, tokenizer, lengths=args.lengths, episodes=args.episodes, seed=ev["seed"],
            pairs=ev["pairs"],
        )  # fmt: skip
        print(json.dumps({"dtype": args.dtype, "exact_match": em}, indent=2))
        return 0
    out = SHIPPED_DIR if args.ship else args.out
    info = write_trained(
        out,
        lambda tmp: train_model(RECIPE, tmp, args.device, log_progress, args.eval_every),
        replace=args.ship,
    )
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
