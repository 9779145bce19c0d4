"""The ``adapt`` scenario on a real GPU: training, autocast, exact reload, event-timed steps.

Skipped without CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.api import MeasureSettings

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SMALL = {"train": 64, "val": 32, "test": 48, "epochs": 2, "batch_size": 16, "eval_batch": 32}


@pytest.mark.parametrize("autocast", ["none", "bfloat16"])
@pytest.mark.parametrize(
    ("name", "params"),
    [("linear", {}), ("lora", {}), ("convpass", {}), ("bi-lora", {"bits": 1, "bi_head": True})],
)
def test_a_method_adapts_on_the_gpu_and_rebuilds_exactly(name, params, autocast) -> None:
    from harness_plugins.peft_vit import harness_add_methods

    from harness.models.tiny_vit import SHIPPED_DIR
    from harness.scenarios.adapt import AdaptScenario, ShapesCount

    sys.path.insert(0, str(Path(__file__).parents[1] / "scenarios"))
    from fake_context import FakeContext

    method = {m.name: m for m in harness_add_methods()}[name]
    ctx = FakeContext(str(SHIPPED_DIR), method, ShapesCount(), params,
                      {**SMALL, "autocast": autocast},
                      measure=MeasureSettings(warmup=0, min_repeats=2, min_seconds=0.0))
    ctx.device = "cuda"
    AdaptScenario().run(ctx)
    values = {(r.phase, r.metric, r.stat): r.value for r in ctx.recorder.metrics}
    assert not ctx.recorder.invalid_reasons
    assert values[("model", "reload_max_abs_diff", "value")] == 0
    assert 0 <= values[("eval", "accuracy", "value")] <= 1
    assert values[("train_step", "latency", "median")] > 0
