"""The ``vqa`` scenario on a real GPU, as ``suites/memvp-gpu.yaml`` runs it: the LM in
bfloat16 (the connectors' modules take its dtype), the encoder in float32, KV-cache decoding,
exact reload. Skipped without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.api import MeasureSettings

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TASK = {"train": 64, "test": 48, "steps": 4, "batch": 8, "eval_batch": 24}


@pytest.mark.parametrize(("name", "params", "grows"), [
    ("memvp", {"visual_tokens": 16}, 0), ("prefix", {"visual_tokens": 64}, 64),
    ("text-only", {}, 0),
])  # fmt: skip
def test_a_connector_trains_answers_and_rebuilds_on_the_gpu(name, params, grows) -> None:
    from harness_plugins.vl_prompting import harness_add_methods

    from harness.models.sources import HFSource
    from harness.models.tiny_llama_vqa import SHIPPED_DIR
    from harness.models.tiny_vit import SHIPPED_DIR as VIT_DIR
    from harness.scenarios.vqa import DigitGridVQA, VQAScenario

    sys.path.insert(0, str(Path(__file__).parents[1] / "scenarios"))
    from fake_context import FakeContext

    vit_p4 = Path(VIT_DIR).parent / "tiny-vit-p4"
    method = {m.name: m for m in harness_add_methods()}[name]
    ctx = FakeContext(str(SHIPPED_DIR), method, DigitGridVQA(), params,
                      {**TASK, "encoder": f"hf:{vit_p4}"},
                      measure=MeasureSettings(warmup=0, min_repeats=2, min_seconds=0.0))
    ctx.device = "cuda"
    ctx.components = SimpleNamespace(model_sources={"hf": HFSource()})
    lm = ctx.load_model
    ctx.load_model = lambda kind: lm(kind).to(torch.bfloat16)
    VQAScenario().run(ctx)
    value = ctx.recorder.value
    assert not ctx.recorder.invalid_reasons
    assert value("model", "reload_same_answers") == 1.0
    assert value("model", "lm_sequence_length") == value("model", "text_tokens") + grows
    assert 0 <= value("eval", "accuracy") <= 1
    assert ctx.timed["decode"][:2] == (1, "token")
