"""The ``vqa`` scenario: a frozen vision encoder and a frozen causal LM, connected by a method
that trains only its own parameters, answering questions about images.

A run (method protocol: :mod:`harness.scenarios.vqa_protocol`):

1. loads the run's model as a ``causal-lm`` with its tokenizer, and the task's ``encoder``
   (a model reference, ``image-classification``); both are frozen;
2. ``method.connect(lm, encoder, params, ctx)`` adds the method's modules; what requires grad
   is what trains (counted: ``model/params_trainable``);
3. trains ``steps`` AdamW steps (warmup, cosine) of ``batch`` questions on the answer tokens
   (the answer word and ``<eos>``) in phase ``train``, whose probes give the peak memory of
   training;
4. answers every test question greedily (prefill, then decoding to ``<eos>``):
   ``eval/accuracy`` is the exact match of the answer, with one stat per question kind
   (``kind_count``, ``kind_value``…);
5. stores what trained (``model/storage_bytes``), rebuilds the connector on freshly loaded
   models from the stored bytes and checks that it answers the same (else the run is
   ``invalid``);
6. times, under the suite's measure settings: ``train_step`` (one optimizer step of a batch,
   samples/s), ``prefill`` (one image and question: encoding and the LM's prefill) and
   ``decode`` (one token after that prefill, from its KV cache): the latency columns; and
   counts the FLOPs of one train step and one prefill (``model/train_step_flops``,
   ``model/prefill_flops``: torch's FlopCounterMode, so what the method adds is counted
   without the scenario knowing it), which tiny models on a CPU time less faithfully.

``model/lm_sequence_length`` is the length of the sequence the LM's first layer sees on a
single question's prefill, measured by a hook: the text for a method that keeps images out of
the sequence, text plus visual tokens for one that prepends them; ``model/text_tokens`` that
question's own length.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import (
    CostColumn,
    CostPlot,
    Params,
    QualityColumn,
    ResultColumns,
    RunContext,
    Unsupported,
)
from harness.scenarios import vqa_protocol

if TYPE_CHECKING:
    import torch

__all__ = ["DigitGridVQA", "VQAScenario", "VQATaskParams"]


class VQATaskParams(Params):
    """The task's split sizes, its encoder, and the training recipe every method shares."""

    train: int = Field(2000, gt=0, description="training questions (one per image)")
    test: int = Field(500, gt=0, description="test questions")
    size: int = Field(32, ge=8, description="image side in pixels")
    encoder: str = Field("builtin:tiny-vit-p4", description="the frozen vision encoder")
    steps: int = Field(400, gt=0, description="training steps")
    batch: int = Field(32, gt=0, description="questions per training step")
    warmup: int = Field(20, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.02, ge=0, description="AdamW weight decay (matrices only)")
    eval_batch: int = Field(100, gt=0, description="questions per evaluation batch")
    check_reload: bool = Field(
        True, description="rebuild the connector from its stored bytes and compare answers"
    )


class DigitGridVQA:
    """Questions about digits drawn in a 2x2 grid (:func:`harness.data.vqa.digit_grid_vqa`)."""

    name = "digit-grid-vqa"
    description = (
        "1-4 copies of one scikit-learn digit in a 2x2 grid, one question each: how many, which "
        "digit, its parity, bigger than K, is a cell filled (exact-match answers)"
    )
    scenario = "vqa"
    params = VQATaskParams

    def data(self, p: VQATaskParams, seed: int, **inputs: Any) -> Any:
        from harness.data.vqa import digit_grid_vqa

        return digit_grid_vqa(seed, p.size, train=p.train, test=p.test)


class _Batches:
    """Tokenized questions: left-padded prompts, and prompts with their answer and ``<eos>``."""

    def __init__(self, tokenizer: Any, questions: Sequence[str], answers: Sequence[str]) -> None:
        from harness.data.vqa import prompt

        self.tokenizer = tokenizer
        self.prompts = [tokenizer(prompt(q))["input_ids"] for q in questions]
        self.answers = [
            tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for a in answers
        ]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids, mask

    def prompt(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pad([self.prompts[i] for i in index])

    def teacher_forced(self, index: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Prompt and answer ids, their mask, and labels (``-100`` but on answer tokens)."""
        import torch

        ids, mask = self._pad([self.prompts[i] + self.answers[i] for i in index])
        labels = torch.full_like(ids, -100)
        for row, i in enumerate(index):
            labels[row, ids.shape[1] - len(self.answers[i]) :] = torch.tensor(self.answers[i])
        return ids, mask, labels


class VQAScenario:
    """A frozen encoder and LM joined by a method's trainable connector."""

    name = "vqa"
    description = (
        "frozen vision encoder + frozen causal LM, a method trains only what connects them: "
        "answer exact match beside training step time, prefill and decode latency"
    )
    method_protocol = ("connect",)
    #: The method contract (``harness show scenario vqa``): the protocol module's docstring.
    contract = vqa_protocol.__doc__
    model_kinds = ("causal-lm",)
    columns = ResultColumns(
        quality=(QualityColumn("accuracy", higher_is_better=True, breakdown="kind_"),),
        costs=(
            CostColumn("lm_sequence", "LM sequence length", "lm_sequence_length", "count"),
            CostColumn("train_flops", "FLOPs / train step", "train_step_flops", "flop"),
            CostColumn("prefill_flops", "FLOPs / prefill", "prefill_flops", "flop"),
            CostColumn("storage", "stored bytes", "storage_bytes", "bytes"),
        ),
        plots=(
            CostPlot("latency", "Accuracy vs latency", "latency (ms)", "a latency"),
            CostPlot("prefill_flops", "Accuracy vs prefill FLOPs", "FLOPs", "prefill FLOPs"),
        ),
        trains=True,
    )

    def run(self, ctx: RunContext) -> None:
        import torch

        from harness.scenarios.adapt import pixel_values

        p: VQATaskParams = ctx.task.params(**ctx.spec.task_params)
        record = ctx.recorder.record
        data = ctx.task.data(p, ctx.spec.seed)
        tokenizer = ctx.load_tokenizer()
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise Unsupported("the vqa scenario needs a tokenizer with pad and eos tokens")
        train = _Batches(tokenizer, data.train_questions, data.train_answers)
        test = _Batches(tokenizer, data.test_questions, data.test_answers)

        torch.manual_seed(ctx.spec.seed)
        lm, encoder = self._models(ctx, p)
        frozen = [*lm.parameters(), *encoder.parameters()]
        original = _fingerprint(frozen)
        connector = ctx.method.connect(lm, encoder, dict(ctx.spec.params), ctx)
        ctx.count_parameters(connector)
        config = encoder.config
        train_x = pixel_values(data.train_images, config)
        test_x = pixel_values(data.test_images, config)
        record("data", "train_questions", len(data.train_answers), "count")
        record("data", "test_questions", len(data.test_answers), "count")

        trainer = _Trainer(ctx, connector, train, train_x, p)
        with ctx.phase("train"):
            losses = [trainer.step() for _ in range(p.steps)]
        tail = losses[-max(1, len(losses) // 10) :]
        record("train", "final_loss", sum(tail) / len(tail), "nats")
        if _fingerprint(frozen) != original or any(w.requires_grad for w in frozen):
            raise RuntimeError(
                f"method '{ctx.spec.method}' trained or changed the frozen LM or encoder"
            )

        connector.eval()
        with ctx.phase("eval"):
            answers = _answer(ctx, connector, test, test_x, p.eval_batch)
        correct = [a == b for a, b in zip(answers, data.test_answers, strict=True)]
        record("eval", "accuracy", sum(correct) / len(correct), "", higher_is_better=True)
        for kind in sorted(set(data.test_kinds)):
            hits = [c for c, k in zip(correct, data.test_kinds, strict=True) if k == kind]
            record("eval", "accuracy", sum(hits) / len(hits), "", stat=f"kind_{kind}")
        record(
            "model", "lm_sequence_length", _sequence_length(lm, connector, test, test_x), "count"
        )
        record("model", "text_tokens", len(test.prompts[0]), "count")
        self._store_and_reload(ctx, p, connector, test, test_x, answers)
        self._time(ctx, connector, trainer, test, test_x)

    @staticmethod
    def _models(ctx: RunContext, p: VQATaskParams) -> tuple[Any, Any]:
        """The run's LM and the task's encoder, frozen and in eval mode."""
        source, _, ident = p.encoder.partition(":")
        if not ident:
            raise ValueError(f"encoder '{p.encoder}' is not a model reference SOURCE:ID")
        encoders = ctx.components.model_sources.get(source)
        encoder = encoders.load(ident, "image-classification", {}, ctx).eval()
        lm = ctx.load_model("causal-lm").eval()
        return lm.requires_grad_(False), encoder.requires_grad_(False)

    def _store_and_reload(
        self,
        ctx: RunContext,
        p: VQATaskParams,
        connector: Any,
        test: _Batches,
        test_x: torch.Tensor,
        answers: list[str],
    ) -> None:
        """Store what trains, and (``check_reload``) rebuild the connector from it."""
        from harness.scenarios.adapt_protocol import (
            load_task_state,
            load_trainable_state,
            save_task_state,
            trainable_state,
        )

        state = trainable_state(connector)
        with tempfile.TemporaryDirectory(prefix="harness-vqa-") as tmp:
            path = Path(tmp) / "connector.safetensors"
            stored = save_task_state(state, path)
            ctx.recorder.record("model", "storage_bytes", stored, "bytes")
            if not p.check_reload:
                return
            lm, encoder = self._models(ctx, p)
            rebuilt = ctx.method.connect(lm, encoder, dict(ctx.spec.params), ctx)
            load_trainable_state(rebuilt, load_task_state(path, trainable_state(rebuilt)))
        rebuilt.eval()
        same = _answer(ctx, rebuilt, test, test_x, p.eval_batch) == answers
        ctx.recorder.record("model", "reload_same_answers", float(same), "")
        if not same:
            ctx.recorder.mark_invalid(
                "the connector rebuilt from its stored bytes answers differently"
            )

    @staticmethod
    def _time(ctx: RunContext, connector: Any, trainer: _Trainer, test: _Batches,
              test_x: torch.Tensor) -> None:  # fmt: skip
        """Training step, single-question prefill, and one decode step from that prefill."""
        import torch
        from transformers import DynamicCache

        ctx.time("train_step", trainer.timed, items=trainer.p.batch, item_unit="sample")
        ctx.recorder.record("model", "train_step_flops", _flops(trainer.timed), "flop")
        connector.eval()
        device = ctx.device
        ids, mask = (t.to(device) for t in test.prompt([0]))
        image = test_x[:1].to(device)

        def prefill() -> tuple[Any, Any, Any]:
            with torch.inference_mode():
                visual = connector.encode(image)
                cache = DynamicCache()
                out = connector(visual, ids, mask, past_key_values=cache)
            return visual, cache, out.logits[:, -1].argmax(-1, keepdim=True)

        ctx.time("prefill", prefill, items=1, item_unit="sample")
        ctx.recorder.record("model", "prefill_flops", _flops(prefill), "flop")
        visual, cache, token = prefill()
        length = cache.get_seq_length()
        grown = torch.cat([mask, mask.new_ones(1, 1)], dim=1)

        def decode() -> None:
            grown_by = cache.get_seq_length() - length
            if grown_by:
                cache.crop(-grown_by)  # back to the prefill: every call decodes the same token
            with torch.inference_mode():
                connector(visual, token, grown, past_key_values=cache)

        ctx.time("decode", decode, items=1, item_unit="token")


class _Trainer:
    """AdamW over what the connector trains, on seeded batches of the training questions.

    MemVP's official recipe: betas (0.9, 0.95), no weight decay on biases and other 1-D
    weights, linear warmup then cosine to zero; the same for every method.
    """

    def __init__(self, ctx: RunContext, connector: Any, data: _Batches, images: torch.Tensor,
                 p: VQATaskParams) -> None:  # fmt: skip
        import numpy as np
        import torch

        from harness.models.recipes import warmup_cosine

        self.connector, self.data, self.images, self.p = connector, data, images, p
        self.device = ctx.device
        trainable = [w for w in connector.parameters() if w.requires_grad]
        if not trainable:
            raise ValueError(f"method '{ctx.spec.method}' leaves nothing to train")
        groups = [
            {"params": [w for w in trainable if w.ndim > 1], "weight_decay": p.weight_decay},
            {"params": [w for w in trainable if w.ndim <= 1], "weight_decay": 0.0},
        ]
        lr = ctx.method.params(**ctx.spec.params).lr
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
        schedule = {"steps": p.steps, "schedule": {"warmup_steps": p.warmup, "final_lr_ratio": 0}}
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: warmup_cosine(i, schedule)
        )
        self.rng = np.random.default_rng([ctx.spec.seed, 0x5A])
        self.fixed = self._batch()

    def _batch(self) -> tuple[torch.Tensor, ...]:
        index = self.rng.choice(len(self.data.prompts), size=self.p.batch, replace=False)
        ids, mask, labels = self.data.teacher_forced(index.tolist())
        return tuple(t.to(self.device) for t in (self.images[index], ids, mask, labels))

    def _step(self, batch: tuple[torch.Tensor, ...]) -> float:
        import torch.nn.functional as F

        images, ids, mask, labels = batch
        self.connector.train()
        logits = self.connector(self.connector.encode(images), ids, mask).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def step(self) -> float:
        loss = self._step(self._batch())
        self.schedule.step()
        return loss

    def timed(self) -> None:
        """One more step on a fixed batch, for timing only (after evaluation)."""
        self._step(self.fixed)


def _answer(ctx: RunContext, connector: Any, data: _Batches, images: torch.Tensor,
            batch: int, max_tokens: int = 4) -> list[str]:  # fmt: skip
    """Greedy answers to every question: prefill, then decode until ``<eos>``."""
    import torch
    from transformers import DynamicCache

    eos, out = data.tokenizer.eos_token_id, []
    for start in range(0, len(data.prompts), batch):
        index = list(range(start, min(start + batch, len(data.prompts))))
        ids, mask = (t.to(ctx.device) for t in data.prompt(index))
        with torch.inference_mode():
            visual = connector.encode(images[index].to(ctx.device))
            cache = DynamicCache()
            tokens, done = [], torch.zeros(len(index), dtype=torch.bool, device=ctx.device)
            step_ids = ids
            for _ in range(max_tokens):
                logits = connector(visual, step_ids, mask, past_key_values=cache).logits
                step_ids = logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(step_ids)
                done |= step_ids[:, 0] == eos
                if bool(done.all()):
                    break
                mask = torch.cat([mask, mask.new_ones(len(index), 1)], dim=1)
        generated = torch.cat(tokens, dim=1).tolist()
        for row in generated:
            row = row[: row.index(eos)] if eos in row else row
            out.append(data.tokenizer.decode(row).strip())
    return out


def _sequence_length(lm: Any, connector: Any, data: _Batches, images: torch.Tensor) -> int:
    """How many positions the LM's first layer sees on one question's prefill (a hook)."""
    import torch
    from transformers import DynamicCache

    seen: list[int] = []
    layer = lm.model.layers[0]
    handle = layer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (args[0] if args else kwargs["hidden_states"]).shape[1]
        ),
        with_kwargs=True,
    )
    try:
        device = next(lm.parameters()).device
        ids, mask = (t.to(device) for t in data.prompt([0]))
        with torch.inference_mode():
            connector(
                connector.encode(images[:1].to(device)), ids, mask, past_key_values=DynamicCache()
            )
    finally:
        handle.remove()
    return seen[0]


def _flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (backward included), counted by torch's
    FlopCounterMode with attention on the math kernel, whose matmuls it sees on any device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _fingerprint(weights: Sequence[torch.Tensor]) -> list[float]:
    """A sum per weight of the original models: an update to any of them shows (one that
    keeps every weight's sum, such as a permutation, would not)."""
    return [float(w.detach().double().sum()) for w in weights]
