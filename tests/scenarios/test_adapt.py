"""The ``adapt`` scenario: recipe, checkpoint selection on val, storage and reload, phases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from harness_plugins.peft_vit import Linear
from PIL import Image
from transformers import ViTConfig, ViTModel

from harness.api import MeasureSettings
from harness.models.tiny_vit import SHIPPED_DIR
from harness.scenarios.adapt import (
    AdaptScenario,
    HFImages,
    ImageFolder,
    ShapesOrientation,
    _Trainer,
    fresh_head,
    pixel_values,
    task_splits,
)
from harness.scenarios.adapt_protocol import load_task_state, save_task_state

sys.path.insert(0, str(Path(__file__).parent))
from fake_context import FakeContext

SMALL = {"train": 64, "val": 32, "test": 48, "epochs": 2, "batch_size": 16, "eval_batch": 32}
QUICK = MeasureSettings(warmup=0, min_repeats=2, min_seconds=0.0, rel_precision=None)


def run(method=None, task=None, task_params=None, model_dir=str(SHIPPED_DIR), **params):
    ctx = FakeContext(model_dir, method or Linear(), task or ShapesOrientation(), params,
                      task_params or SMALL, measure=QUICK)
    AdaptScenario().run(ctx)
    return ctx, {(r.phase, r.metric, r.stat): r.value for r in ctx.recorder.metrics}


def test_a_run_records_quality_and_every_cost() -> None:
    ctx, values = run()
    assert 0 <= values[("eval", "accuracy", "value")] <= 1
    assert 0 <= values[("select", "accuracy", "value")] <= 1
    assert 1 <= values[("train", "best_epoch", "value")] <= 2
    assert values[("train", "steps", "value")] == 2 * 4
    assert values[("train_step", "latency", "n")] == 4  # the first epoch is reported apart
    assert values[("train_step", "throughput", "median")] > 0
    # The head: 96 features -> 8 orientation bins.
    assert values[("model", "trainable_params", "value")] == 96 * 8 + 8
    assert values[("model", "params_head", "value")] == 96 * 8 + 8
    assert values[("model", "payload_bytes", "value")] == (96 * 8 + 8) * 4
    assert 0 < values[("model", "storage_bytes", "value")] - (96 * 8 + 8) * 4 < 200
    assert values[("model", "reload_max_abs_diff", "value")] == 0
    assert not ctx.recorder.invalid_reasons
    assert ctx.phases == ["attach", "train", "eval", "store", "infer", "infer_1"]
    assert ctx.timed["infer"][:2] == (32, "image")
    assert ctx.timed["infer_1"][:2] == (1, "image")


class ForgetfulLinear(Linear):
    """Stores its head but never loads it back."""

    def load_task_state(self, model, state, params) -> None:
        pass


def test_a_task_model_that_does_not_rebuild_from_its_file_is_invalid() -> None:
    ctx, values = run(ForgetfulLinear())
    assert values[("model", "reload_max_abs_diff", "value")] > 0
    assert ctx.recorder.invalid_reasons == [
        "the task model rebuilt from the stored task state predicts differently"
    ]
    assert not ctx.recorder.only_timing_invalid  # its accuracy is in doubt too


def test_training_keeps_the_best_validation_epoch_and_tests_once() -> None:
    params = ShapesOrientation.params(**{**SMALL, "epochs": 4})
    data = task_splits(ShapesOrientation(), params)
    ctx = FakeContext(str(SHIPPED_DIR), Linear(), ShapesOrientation(), None, SMALL)
    model = ctx.load_model("image-classification")
    torch.manual_seed(0)
    fresh_head(model, data.num_classes)
    trainer = _Trainer(model, params, 0.05, ctx)
    best_epoch, best_val = trainer.fit(data)
    # The weights in the model are the best epoch's: their val accuracy is the best one.
    assert trainer.accuracy(data.val_x, data.val_y) == best_val
    assert 1 <= best_epoch <= 4


def test_storage_is_the_payload_in_one_tensor_and_reads_back_exactly(tmp_path) -> None:
    state = {
        "codes": torch.tensor([1, 2, 255], dtype=torch.uint8),
        "scale": torch.tensor([0.5, -1.25]),
        "weight": torch.randn(3, 5, dtype=torch.float64),
    }
    size = save_task_state(state, tmp_path / "t.safetensors")
    assert size == (tmp_path / "t.safetensors").stat().st_size
    assert size - (3 + 8 + 120) < 150
    template = {k: torch.zeros_like(v) for k, v in state.items()}
    loaded = load_task_state(tmp_path / "t.safetensors", template)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"holds 131 bytes, .* needs 143"):
        load_task_state(tmp_path / "t.safetensors", {**template, "extra": torch.zeros(3)})


def test_an_hf_vit_saved_locally_adapts_at_its_own_size_and_channels(tmp_path) -> None:
    # google/vit-base-patch16-224-in21k is a ViTModel; loading it for image classification
    # adds a head. The same path with a tiny saved model: 16 px, 3 channels, patch 4.
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    _, values = run(model_dir=str(tmp_path))
    assert values[("model", "trainable_params", "value")] == 32 * 8 + 8
    assert values[("model", "reload_max_abs_diff", "value")] == 0


def write_folder(root: Path) -> None:
    """Two classes of 20 noisy 12x12 images each: dark and light."""
    rng = torch.Generator().manual_seed(0)
    for label, colour in (("dark", 40), ("light", 210)):
        (root / label).mkdir(parents=True)
        for i in range(20):
            noise = torch.randint(0, 30, (12, 12), generator=rng).numpy().astype("uint8")
            Image.fromarray(noise + colour).save(root / label / f"{i}.png")


def test_a_local_image_folder_is_a_task(tmp_path) -> None:
    write_folder(tmp_path)
    task_params = {**SMALL, "path": str(tmp_path), "train": 16, "val": 8, "test": None,
                   "epochs": 10}
    _, values = run(task=ImageFolder(), task_params=task_params, lr=0.05)
    assert values[("data", "classes", "value")] == 2
    assert values[("data", "test_images", "value")] == 16
    assert values[("eval", "accuracy", "value")] == 1.0


def test_an_hf_image_dataset_is_a_task(tmp_path) -> None:
    pytest.importorskip("datasets")
    write_folder(tmp_path / "data")
    params = HFImages.params(dataset="imagefolder", data_dir=str(tmp_path / "data"), train=16,
                             val=8, size=16)
    data = HFImages().data(params, params.split_seed)
    assert data.classes == ("dark", "light")
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (16, 8, 16)
    assert data.train_x.shape[1:] == (1, 16, 16)
    # Dark images are dark: the labels follow the folders.
    dark = data.train_x[data.train_y == 0].mean()
    assert dark < 0.3 < data.train_x[data.train_y == 1].mean()


def test_pixel_values_resize_replicate_and_centre() -> None:
    config = ViTConfig(image_size=16, num_channels=3)
    images = torch.ones(2, 1, 8, 8)
    x = pixel_values(images, config)
    assert x.shape == (2, 3, 16, 16)
    assert torch.all(x == 1)
    assert torch.all(pixel_values(torch.zeros(1, 1, 16, 16), config) == -1)
    with pytest.raises(ValueError, match="2 channels"):
        pixel_values(torch.zeros(1, 2, 16, 16), config)


def test_a_model_without_a_classifier_head_is_refused() -> None:
    with pytest.raises(TypeError, match="`classifier` head"):
        fresh_head(torch.nn.Linear(2, 2), 3)
