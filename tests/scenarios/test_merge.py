"""The ``merge`` scenario: head fine-tuned at one ratio, run at another; accuracy, FLOPs,
throughput and what the method adds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from harness_plugins.token_merging import ToMe, ToMeMatched
from transformers import ViTConfig, ViTForImageClassification

from harness.models.tome import token_counts
from harness.scenarios.merge import MergeDigits, MergeScenario
from harness.scenarios.merge_protocol import vit_block_flops
from tests.scenarios.fake_context import FakeContext

TASK = {"train": 200, "val": 50, "test": 150, "head_steps": 60, "eval_batch": 64}


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, num_labels=7,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(path)
    return str(path)


def run(vit_dir: str, method: Any, **params: Any) -> FakeContext:
    ctx = FakeContext(vit_dir, method, MergeDigits(), params=params, task_params=TASK)
    MergeScenario().run(ctx)
    return ctx


def test_mismatched_run_records_accuracy_flops_and_timing(vit_dir: str) -> None:
    ctx = run(vit_dir, ToMe(), r_src=0, r_tgt=8)
    value = ctx.recorder.value
    assert 0 <= value("eval", "accuracy") <= 1
    assert 0 <= value("eval", "accuracy_at_head_ratio") <= 1
    assert 0 <= value("select", "accuracy") <= 1  # the validation split, to choose settings
    assert value("eval", "test_images") == 150
    counts = token_counts(65, 8, 3)
    assert value("model", "flops_per_image") == vit_block_flops(counts, 32, 64)
    assert value("model", "final_tokens") == counts[-1] - 8
    assert value("model", "added_params") == 0
    assert value("fine_tune", "final_loss") < 2.3  # below chance for 10 classes
    assert ctx.timed["batch"][:2] == (64, "image") and ctx.timed["single"][:2] == (1, "image")
    assert {"fine_tune", "eval"} <= set(ctx.phases) and "transform" not in ctx.phases


def test_more_merging_is_fewer_flops(vit_dir: str) -> None:
    flops = [run(vit_dir, ToMe(), r_src=0, r_tgt=r).recorder.value("model", "flops_per_image")
             for r in (0, 4, 12)]  # fmt: skip
    assert flops[0] > flops[1] > flops[2]
    assert flops[0] == vit_block_flops([65] * 3, 32, 64)


def test_matched_head_is_fine_tuned_at_the_target_ratio(vit_dir: str) -> None:
    """A method whose params have no r_src gets its head tuned at r_tgt."""
    with pytest.raises(ValueError, match="r_src"):  # no ratio it would ignore
        ToMeMatched.params(r_src=0, r_tgt=12)
    matched = run(vit_dir, ToMeMatched(), r_tgt=12).recorder.value
    plain = run(vit_dir, ToMe(), r_src=12, r_tgt=12).recorder.value
    # Matched at 12 is ToMe fine-tuned and run at 12: the same head, the same accuracy.
    assert matched("eval", "accuracy") == plain("eval", "accuracy")
    assert matched("eval", "accuracy") == matched("eval", "accuracy_at_head_ratio")


def test_a_rendered_task_with_test_null_renders_its_default_count() -> None:
    from harness.scenarios.merge import MergeShapesCount, MergeTaskParams

    splits = MergeShapesCount().data(MergeTaskParams(train=20, val=10, size=16), 0)
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (20, 10, 1000)
