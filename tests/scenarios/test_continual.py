from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from harness_plugins.continual import ER, Finetune, Joint, TaER, harness_add_methods
from PIL import Image
from pydantic import Field, ValidationError

from harness.api import NoParams, RunContext, Scenario, Task
from harness.cli import main
from harness.data.images import ImageSplits
from harness.models.tiny_vit import SHIPPED_DIR
from harness.scenarios.continual import (
    ContinualScenario,
    ContinualTaskParams,
    SplitDigits,
    SplitImages,
    SplitShapes,
    average_forgetting,
    backward_transfer,
    incremental_accuracy,
)
from harness.store import query

sys.path.insert(0, str(Path(__file__).parent))
from fake_context import FakeContext

FAST = {"features": "pixels", "epochs": 1}


def run(method: Any, params: dict | None = None, task: Any = None, **task_params: Any) -> Any:
    ctx = FakeContext(str(SHIPPED_DIR), method, task or SplitDigits(), params, task_params or FAST)
    ContinualScenario().run(ctx)
    return ctx


def matrix(ctx: Any, name: str = "accuracy_matrix") -> list[list[float]]:
    rows = [r for r in ctx.recorder.metrics if r.metric == name]
    size = max(int(r.stat.split("_")[1]) for r in rows) + 1
    out = [[float("nan")] * (i + 1) for i in range(size)]
    for r in rows:
        _, i, _, j = r.stat.split("_")
        out[int(i)][int(j)] = r.value
    return out


def test_metrics_match_hand_computed_values() -> None:
    a = [[100.0], [80.0, 90.0], [60.0, 70.0, 95.0]]
    assert incremental_accuracy(a) == pytest.approx((100 + 85 + 75) / 3)
    assert average_forgetting(a) == pytest.approx(((100 - 60) + (90 - 70)) / 2)
    assert backward_transfer(a) == pytest.approx(((60 - 100) + (70 - 90)) / 2)
    # The best earlier accuracy counts, not the first: task 0 peaked after task 1.
    assert average_forgetting([[50.0], [80.0, 90.0], [60.0, 90.0, 95.0]]) == pytest.approx(10)


class TinyParams(ContinualTaskParams):
    tasks: int = Field(2, ge=2)


class TinyStream:
    """Four classes, one lit pixel each; 2 tasks of 2 classes; 4 test images per class."""

    name = "tiny"
    description = "four one-pixel classes"
    scenario = "continual"
    params = TinyParams

    def data(self, params: TinyParams, seed: int, **inputs: Any) -> ImageSplits:
        def images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.arange(4).repeat(per_class)
            return torch.eye(4)[labels].view(-1, 1, 2, 2), labels

        train, test = images(5), images(4)
        return ImageSplits(*train, *test, *test, classes=("a", "b", "c", "d"))


class Scripted:
    """A learner whose head is set by hand: class means after each task, and after the second
    task a bias that makes every prediction the first class of task 1."""

    name = "scripted"
    version = "1"
    description = "test double"
    scenarios = ("continual",)
    params = NoParams

    def make_learner(self, model: Any, stream: Any, params: Any, ctx: RunContext) -> Any:
        class Learner:
            def __init__(self) -> None:
                self.sums: dict[int, torch.Tensor] = {}

            def begin_task(self, task: int) -> None:
                self.task = task

            def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
                for xi, yi in zip(x, y.tolist(), strict=True):
                    self.sums[yi] = self.sums.get(yi, 0) + xi

            def end_task(self, task: int) -> None:
                with torch.no_grad():
                    for label, total in self.sums.items():
                        model.head.weight[label] = total
                    if task == 1:
                        model.head.bias[2] = 1e3

            def buffer_bytes(self) -> int:
                return 0

        return Learner()


def test_accuracy_matrix_and_forgetting_on_a_tiny_fixed_stream() -> None:
    ctx = run(Scripted(), task=TinyStream(), features="pixels", batch_size=3, epochs=1)
    value = ctx.recorder.value
    # After task 0: perfect. After task 1: class-IL predicts class 2 everywhere, so task 0
    # scores 0 and task 1 50 %; within task 0 the class means still separate its classes.
    assert matrix(ctx) == [[100.0], [0.0, 50.0]]
    assert matrix(ctx, "within_task_accuracy_matrix") == [[100.0], [100.0, 50.0]]
    assert value("eval", "accuracy") == 25.0
    assert value("eval", "avg_incremental_accuracy") == (100 + 25) / 2
    assert value("eval", "forgetting") == 100.0
    assert value("eval", "backward_transfer") == -100.0
    assert value("eval", "within_task_forgetting") == 0.0
    assert value("eval", "recency_bias") == 100.0
    assert value("eval", "recency_bias", "ideal") == 50.0
    assert value("train", "batches") == 2 * 4  # 10 images per task in batches of 3
    # Task-incremental: told the task, the scripted head is perfect on task 0.
    ctx = run(Scripted(), task=TinyStream(), features="pixels", setting="task-incremental")
    assert matrix(ctx) == [[100.0], [100.0, 50.0]]


def test_every_method_runs_split_digits_and_records_the_metrics() -> None:
    scenario = ContinualScenario()
    assert isinstance(scenario, Scenario)
    for task in (SplitDigits(), SplitShapes(), SplitImages()):
        assert isinstance(task, Task) and task.scenario == "continual"
    for method in harness_add_methods():
        ctx = run(method)
        assert isinstance(ctx, RunContext)
        value = ctx.recorder.value
        assert ctx.phases == ["features", "train", "eval"]
        assert len(matrix(ctx)) == 5 and len(matrix(ctx)[-1]) == 5
        assert 0 <= value("eval", "accuracy") <= 100
        assert value("eval", "examples") == 540
        assert value("model", "trainable_params") == 64 * 10 + 10
        rows = {(r.phase, r.metric, r.stat): r for r in ctx.recorder.metrics}
        assert rows["eval", "accuracy", "value"].higher_is_better is True
        assert rows["eval", "forgetting", "value"].higher_is_better is False
        assert rows["eval", "accuracy_matrix", "after_4_task_0"].higher_is_better is None


def test_split_digits_effects_at_a_small_buffer() -> None:
    """The issue's ordering on one seed, 5 epochs: finetune < ER < joint, TaER > ER, and
    TaER's within-task forgetting exactly 0."""
    task = {"features": "pixels", "epochs": 5}
    acc = {}
    for method, params in (
        (Finetune(), {"lr": 10}),
        (Joint(), {"lr": 3}),
        (ER(), {"lr": 10, "buffer": 20}),
        (TaER(), {"buffer": 20}),
    ):
        ctx = run(method, params, **task)
        acc[method.name] = ctx.recorder.value("eval", "accuracy")
        if method.name == "taer":
            assert ctx.recorder.value("eval", "within_task_forgetting") == 0.0
            assert ctx.recorder.value("train", "buffer_bytes") == 20 * (64 * 4 + 8)
    assert acc["finetune"] < 30 < acc["er"] < acc["joint"]
    assert acc["taer"] > acc["er"] + 5


def test_class_order_and_split_follow_the_seed() -> None:
    def first(seed: int) -> list[list[float]]:
        ctx = FakeContext("", ER(), SplitDigits(), None, FAST, seed=seed)
        ContinualScenario().run(ctx)
        return matrix(ctx)

    assert first(0) == first(0)
    assert first(0) != first(1)


def test_frozen_and_trained_backbone_features() -> None:
    shapes = {"train": 40, "val": 8, "test": 40, "tasks": 4, "epochs": 1}
    ctx = run(TaER(), {"buffer": 10}, SplitShapes(), features="backbone", **shapes)
    hidden = ctx.load_model("base").config.hidden_size
    assert ctx.recorder.value("model", "trainable_params") == (hidden + 1) * 8
    assert ctx.recorder.value("backbone", "trainable_params") == 0
    assert ctx.recorder.value("backbone", "total_params") > 100_000
    assert ctx.recorder.value("train", "buffer_bytes") == 10 * (hidden * 4 + 8)
    assert ctx.recorder.value("eval", "within_task_forgetting") == 0.0
    ctx = run(ER(), {"buffer": 10}, SplitShapes(), features="backbone", train_backbone=True,
              **shapes)  # fmt: skip
    total = ctx.recorder.value("model", "total_params")
    assert ctx.recorder.value("model", "trainable_params") > (hidden + 1) * 8
    assert total > 100_000  # the ViT is part of the model
    assert ctx.recorder.value("train", "buffer_bytes") == 10 * (3 * 32 * 32 * 4 + 8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of 12 PNGs: a bright square in a different quadrant per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["ne", "nw", "se", "sw"]):
        (root / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 40, size=(16, 16), dtype=np.uint8)
            top, left = divmod(label, 2)
            pixels[top * 8 : top * 8 + 8, left * 8 : left * 8 + 8] = 220
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not a class")
    return root


def test_a_local_image_folder_split_by_class(image_folder: Path) -> None:
    task = {"source": str(image_folder), "size": 8, "train": 24, "val": 8, "tasks": 2}
    ctx = run(TaER(), {"buffer": 6}, SplitImages(), features="pixels", **task)
    assert len(matrix(ctx)) == 2
    assert ctx.recorder.value("eval", "examples") == 16  # 48 images - 24 train - 8 val
    assert ctx.recorder.value("eval", "accuracy") > 90  # quadrants are easy
    assert ctx.recorder.value("train", "buffer_bytes") == 6 * (64 * 4 + 8)


def test_an_hf_image_dataset_split_by_class(image_folder: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="train")
    data.save_to_disk(tmp_path / "saved")
    task = {"source": f"hf:{tmp_path / 'saved'}", "size": 8, "train": 24, "val": 8, "tasks": 2}
    ctx = run(ER(), {"buffer": 6}, SplitImages(), features="pixels", **task)
    assert len(matrix(ctx)) == 2 and ctx.recorder.value("eval", "examples") == 16


def test_bad_input_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot be split into 3 tasks.*\[2, 5, 10\]"):
        run(Finetune(), task=SplitDigits(), features="pixels", tasks=3)
    with pytest.raises(ValueError, match="train_backbone: true needs features: backbone"):
        run(Finetune(), features="pixels", train_backbone=True)
    with pytest.raises(ValueError, match="more examples than the stream"):
        run(ER(), {"buffer": 1000})
    with pytest.raises(ValueError, match="val > 0"):
        run(Finetune(), features="pixels", eval_split="val", val=0)
    with pytest.raises(ValidationError):
        run(ER(), {"buffer": 0})
    with pytest.raises(ValidationError):
        run(Finetune(), features="pixels", tasks=1)
    with pytest.raises(FileNotFoundError):
        run(Finetune(), task=SplitImages(), features="pixels", source=str(tmp_path))


def test_end_to_end_through_the_runner(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: cl-e2e\n"
        "scenario: continual\n"
        "models: [builtin:tiny-vit]\n"
        "tasks: [{name: split-digits, params: {features: pixels, epochs: 2}}]\n"
        "methods:\n"
        "  - {name: taer, params: {buffer: 20}}\n"
        "  - {name: er, params: {buffer: 20, lr: 10}}\n"
        "seeds: [0]\n"
    )
    db = tmp_path / "cl.duckdb"
    assert main(["run", str(suite), "--db", str(db), "--executor", "inline"]) == 0
    _, rows = query(db, "SELECT r.method, r.status, m.value FROM runs r JOIN metrics m "
                        "USING (run_key) WHERE m.phase = 'eval' AND m.metric = 'accuracy' "
                        "AND m.stat = 'value'")  # fmt: skip
    assert {(method, status) for method, status, _ in rows} == {("taer", "ok"), ("er", "ok")}
    _, peaks = query(db, "SELECT count(*) FROM metrics WHERE phase = 'train' "
                         "AND metric IN ('seconds', 'host_rss_peak', 'buffer_bytes')")  # fmt: skip
    assert peaks[0][0] == 6
    site = tmp_path / "site"
    assert main(["report", str(db), "--out", str(site)]) == 0
    pages = list((site / "runs").glob("*.html"))
    assert len(pages) == 2
    html = pages[0].read_text()
    # Drawn as a 5 x 5 lower-triangular table (report.py: stats that look like matrix cells).
    assert html.count('<table class="matrix">') == 2
    assert "<caption>accuracy_matrix · eval (%)</caption>" in html
    assert html.count('<th scope="row">after ') == 2 * 5
    assert html.count("--heat:") == 2 * 15
