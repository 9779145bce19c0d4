"""The ``vqa`` scenario: a frozen encoder and LM joined by a method's connector; answers,
the LM's sequence length, stored bytes and what is timed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from harness_plugins.vl_prompting import MemVP, Prefix, TextOnly
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

from harness.models.sources import HFSource
from harness.models.tiny_llama_vqa import RECIPE, build_tokenizer
from harness.scenarios.vqa import DigitGridVQA, VQAScenario
from tests.scenarios.fake_context import FakeContext


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A random tiny Llama with the VQA tokenizer, and a random ViT with a 4x4 patch grid."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(RECIPE["tokenizer"])
    lm_dir, vit_dir = tmp_path_factory.mktemp("lm"), tmp_path_factory.mktemp("vit")
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(lm_dir)  # fmt: skip
    tokenizer.save_pretrained(lm_dir)
    ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=24, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=32,
    )).save_pretrained(vit_dir)  # fmt: skip
    return str(lm_dir), str(vit_dir)


def run(dirs: tuple[str, str], method: Any, **params: Any) -> FakeContext:
    lm_dir, vit_dir = dirs
    task = {"train": 60, "test": 40, "steps": 6, "batch": 8, "warmup": 2, "eval_batch": 16,
            "encoder": f"hf:{vit_dir}"}  # fmt: skip
    ctx = FakeContext(lm_dir, method, DigitGridVQA(), params=params, task_params=task)
    ctx.components = SimpleNamespace(model_sources={"hf": HFSource()})
    VQAScenario().run(ctx)
    return ctx


@pytest.mark.parametrize("method,params,grows", [
    (MemVP(), {"visual_tokens": 4}, 0), (Prefix(), {"visual_tokens": 16}, 16), (TextOnly(), {}, 0),
])  # fmt: skip
def test_a_run_answers_stores_and_times(dirs: tuple[str, str], method: Any,
                                        params: dict[str, Any], grows: int) -> None:  # fmt: skip
    ctx = run(dirs, method, **params)
    value = ctx.recorder.value
    assert 0 <= value("eval", "accuracy") <= 1
    kinds = {r.stat for r in ctx.recorder.metrics if r.metric == "accuracy" and r.phase == "eval"}
    assert kinds == {"value", *(f"kind_{k}" for k in ("compare", "count", "parity", "position",
                                                      "value"))}  # fmt: skip
    assert value("model", "lm_sequence_length") == value("model", "text_tokens") + grows
    assert value("model", "prefill_flops") > 0
    assert value("model", "train_step_flops") > 3 * value("model", "prefill_flops")
    trainable = value("model", "trainable_params")
    assert trainable > 0
    # fp32 weights and a safetensors header of about a hundred bytes
    assert 4 * trainable < value("model", "storage_bytes") < 4 * trainable + 200
    assert value("model", "reload_same_answers") == 1.0
    assert not ctx.recorder.invalid_reasons
    assert {"train", "eval"} <= set(ctx.phases)
    assert ctx.timed["train_step"][:2] == (8, "sample")
    assert ctx.timed["prefill"][:2] == (1, "sample")
    assert ctx.timed["decode"][:2] == (1, "token")


class _Meddler(TextOnly):
    """A broken method: it trains a weight of the LM it was handed frozen."""

    name = "meddler"

    def connect(self, lm: Any, encoder: Any, params: Any, ctx: Any) -> Any:
        connector = super().connect(lm, encoder, params, ctx)
        lm.lm_head.weight.requires_grad_(True)
        return connector


def test_prepended_visual_tokens_cost_prefill_flops_and_memory_slots_little(
    dirs: tuple[str, str],
) -> None:
    methods = [
        ("prefix", Prefix(), {"visual_tokens": 16}),
        ("memvp", MemVP(), {"visual_tokens": 16}),
        ("text", TextOnly(), {}),
    ]
    flops = {name: run(dirs, method, **params).recorder.value("model", "prefill_flops")
             for name, method, params in methods}  # fmt: skip
    assert flops["text"] < flops["memvp"] < flops["prefix"]


def test_a_method_that_trains_the_frozen_lm_fails_the_run(dirs: tuple[str, str]) -> None:
    with pytest.raises(RuntimeError, match="'meddler' trained or changed the frozen LM"):
        run(dirs, _Meddler())


def test_visual_tokens_that_do_not_pool_the_grid_name_the_choices(dirs: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="one of 16, 4, 1"):
        run(dirs, MemVP(), visual_tokens=9)


def test_teacher_forcing_labels_only_the_answer_and_eos(dirs: tuple[str, str]) -> None:
    from harness.scenarios.vqa import _Batches

    tokenizer = HFSource().load_tokenizer(dirs[0], {}, None)
    questions = ["what digit is it ?", "how many digits are there ?"]
    batches = _Batches(tokenizer, questions, ["7", "3"])
    ids, mask, labels = batches.teacher_forced([0, 1])
    eos = tokenizer.eos_token_id
    for row, answer in enumerate(["7", "3"]):
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == [tokenizer.convert_tokens_to_ids(answer), eos]
        assert ids[row, -2:].tolist() == kept  # the answer ends every left-padded row
    assert mask[1].tolist() == [1] * ids.shape[1]  # the longer prompt has no padding
    assert mask[0].sum() < mask[1].sum()


def test_training_lowers_the_loss(dirs: tuple[str, str]) -> None:
    ctx = run(dirs, TextOnly(), lr=3e-2)
    losses = [r.value for r in ctx.recorder.metrics if r.metric == "final_loss"]
    assert losses and losses[0] < 3.7  # ln(40): a uniform guess over the vocabulary
