"""The core's own plugin: built-in scenarios, tasks, models, model sources and probes.

It registers through the same ``harness`` entry point as any plugin (``core =
"harness.builtin"``). Importing it stays cheap: every hook imports its modules, and those
import torch and transformers only when they run.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness import hookimpl
from harness.api import ModelEntry, ModelSource, Probe, Scenario, Task


@hookimpl
def harness_add_scenarios() -> Sequence[Scenario]:
    from harness.scenarios.adapt import AdaptScenario
    from harness.scenarios.continual import ContinualScenario
    from harness.scenarios.generate import GenerateScenario
    from harness.scenarios.lm_eval import LMEvalScenario
    from harness.scenarios.lm_train import LMTrainScenario
    from harness.scenarios.merge import MergeScenario
    from harness.scenarios.perplexity import PerplexityScenario
    from harness.scenarios.vqa import VQAScenario

    return [
        PerplexityScenario(), GenerateScenario(), AdaptScenario(), ContinualScenario(),
        LMTrainScenario(), LMEvalScenario(), MergeScenario(), VQAScenario(),
    ]  # fmt: skip


@hookimpl
def harness_add_tasks() -> Sequence[Task]:
    from harness.scenarios import adapt
    from harness.scenarios.continual import SplitDigits, SplitImages, SplitShapes
    from harness.scenarios.generate import DecodeThroughput, KVRecall, Needle, Passkey
    from harness.scenarios.lm_eval import LMEvalTasks
    from harness.scenarios.lm_train import StdlibLM
    from harness.scenarios.merge import MergeDigits, MergeShapesCount
    from harness.scenarios.perplexity import StdlibText
    from harness.scenarios.vqa import DigitGridVQA

    return [
        StdlibText(), Needle(), Passkey(), KVRecall(), DecodeThroughput(),
        adapt.DigitsShift(), adapt.ShapesCount(), adapt.ShapesPosition(),
        adapt.ShapesOrientation(), adapt.ImageFolder(), adapt.HFImages(),
        SplitDigits(), SplitShapes(), SplitImages(), StdlibLM(), LMEvalTasks(),
        MergeDigits(), MergeShapesCount(), DigitGridVQA(),
    ]  # fmt: skip


@hookimpl
def harness_add_models() -> Sequence[ModelEntry]:
    from harness.models.tiny_byte_lm import TinyByteLM
    from harness.models.tiny_llama_retrieval import TinyLlamaRetrieval
    from harness.models.tiny_llama_vqa import TinyLlamaVQA
    from harness.models.tiny_vit import TinyViT, TinyViTP4

    return [TinyByteLM(), TinyLlamaRetrieval(), TinyLlamaVQA(), TinyViT(), TinyViTP4()]


@hookimpl
def harness_add_model_sources() -> Sequence[ModelSource]:
    from harness.models.sources import default_sources

    return default_sources()


@hookimpl
def harness_add_probes(device: str) -> Sequence[Probe]:
    from harness.probes import default_probes

    return default_probes(device)
