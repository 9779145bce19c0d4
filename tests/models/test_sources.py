from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM, ViTConfig

from harness.api import ModelSource, Unsupported
from harness.models.sources import BuiltinSource, HFConfigSource, HFSource, default_sources
from harness.registry import Registry

CONFIG = {
    "vocab_size": 259, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def saved_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, LlamaForCausalLM]:
    """A small Llama and a byte tokenizer saved with ``save_pretrained``, as the hub stores them."""
    path = tmp_path_factory.mktemp("saved-lm")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    model.save_pretrained(path)
    ByT5Tokenizer(extra_ids=0).save_pretrained(path)
    return str(path), model


def context(**extra: Any) -> Any:
    return SimpleNamespace(device="cpu", spec=SimpleNamespace(seed=0), **extra)


def test_default_sources_satisfy_the_protocol() -> None:
    sources = default_sources()
    assert [s.name for s in sources] == ["hf", "hf-config", "builtin"]
    assert all(isinstance(s, ModelSource) for s in sources)


def test_hf_loads_a_saved_model_and_tokenizer(saved_lm: tuple[str, LlamaForCausalLM]) -> None:
    path, original = saved_lm
    model = HFSource().load(path, "causal-lm", {}, context())
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)
    tokenizer = HFSource().load_tokenizer(path, {}, context())
    assert tokenizer("ab", add_special_tokens=False)["input_ids"] == [100, 101]


def test_hf_kinds_and_dtype(saved_lm: tuple[str, LlamaForCausalLM]) -> None:
    path, _ = saved_lm
    half = HFSource().load(path, "causal-lm", {"dtype": "bfloat16"}, context())
    assert next(half.parameters()).dtype == torch.bfloat16
    base = HFSource().load(path, "base", {}, context())
    assert type(base).__name__ == "LlamaModel"
    with pytest.raises(ValidationError):
        HFSource().load(path, "causal-lm", {"dtype": "float8"}, context())
    with pytest.raises(ValidationError):
        HFSource().load(path, "causal-lm", {"dtyp": "float16"}, context())


def test_hf_loads_an_image_classifier(tmp_path: Path) -> None:
    from transformers import ViTForImageClassification

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=16, num_labels=3,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(tmp_path)
    model = HFSource().load(str(tmp_path), "image-classification", {}, context())
    with torch.inference_mode():
        assert model(pixel_values=torch.zeros(1, 3, 32, 32)).logits.shape == (1, 3)


@pytest.mark.parametrize("source", [HFSource(), HFConfigSource()])
def test_unknown_kind_is_unsupported(source: Any, saved_lm: tuple[str, LlamaForCausalLM]) -> None:
    with pytest.raises(Unsupported, match=r"cannot load kind 'speech' \(supported: causal-lm"):
        source.load(saved_lm[0], "speech", {}, context())


def test_hf_config_builds_a_random_model_of_the_overridden_shape(tmp_path: Path) -> None:
    LlamaConfig(**CONFIG).save_pretrained(tmp_path)
    options = {"overrides": {"num_hidden_layers": 3, "hidden_size": 48}, "dtype": "float16"}
    model = HFConfigSource().load(str(tmp_path), "causal-lm", options, context())
    assert len(model.model.layers) == 3
    assert model.model.embed_tokens.weight.shape == (259, 48)
    assert next(model.parameters()).dtype == torch.float16
    assert not model.training
    again = HFConfigSource().load(str(tmp_path), "causal-lm", options, context())
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)  # seeded by the run


def test_hf_config_kind_config_returns_the_overridden_config(tmp_path: Path) -> None:
    LlamaConfig(**CONFIG).save_pretrained(tmp_path)
    options = {"overrides": {"num_hidden_layers": 3, "hidden_size": 48}}
    config = HFConfigSource().load(str(tmp_path), "config", options, context())
    assert isinstance(config, LlamaConfig)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (3, 48, 259)
    with pytest.raises(ValueError, match="did you mean 'num_hidden_layers'"):
        HFConfigSource().load(str(tmp_path), "config", {"overrides": {"num_hiden_layers": 1}},
                              context())  # fmt: skip
    with pytest.raises(Unsupported, match="cannot load kind 'config'"):
        HFSource().load(str(tmp_path), "config", {}, context())


def test_hf_config_rejects_an_unknown_override(tmp_path: Path) -> None:
    LlamaConfig(**CONFIG).save_pretrained(tmp_path)
    options = {"overrides": {"num_hiden_layers": 3}}
    with pytest.raises(ValueError, match="did you mean 'num_hidden_layers'"):
        HFConfigSource().load(str(tmp_path), "causal-lm", options, context())


def test_hf_config_tokenizer_only_when_present(
    tmp_path: Path, saved_lm: tuple[str, LlamaForCausalLM]
) -> None:
    LlamaConfig(**CONFIG).save_pretrained(tmp_path)
    with pytest.raises(Unsupported, match="no tokenizer"):
        HFConfigSource().load_tokenizer(str(tmp_path), {}, context())
    tokenizer = HFConfigSource().load_tokenizer(saved_lm[0], {}, context())
    assert tokenizer("a", add_special_tokens=False)["input_ids"] == [100]


class SavedEntry:
    """A built-in model entry that 'prepares' by pointing at an already saved model."""

    name = "saved"
    description = "test double"
    kinds = ("causal-lm",)

    def __init__(self, path: str) -> None:
        self.saved = path
        self.cache_dirs: list[str] = []

    def prepare(self, cache_dir: str) -> str:
        self.cache_dirs.append(cache_dir)
        return self.saved


def test_builtin_prepares_then_loads_through_hf_code(
    tmp_path: Path, saved_lm: tuple[str, LlamaForCausalLM]
) -> None:
    path, original = saved_lm
    entry = SavedEntry(path)
    models: Registry[Any] = Registry("built-in model")
    models.add("saved", entry, "test")
    ctx = context(components=SimpleNamespace(models=models), cache_dir=str(tmp_path))
    source = BuiltinSource()
    assert source.prepare("saved", {}, ctx) == path
    model = source.load("saved", "causal-lm", {}, ctx)
    assert torch.equal(model.lm_head.weight, original.lm_head.weight)
    assert source.load_tokenizer("saved", {}, ctx)("a", add_special_tokens=False)["input_ids"]
    assert set(entry.cache_dirs) == {str(tmp_path)}
    with pytest.raises(Unsupported, match="of kind causal-lm, not 'image-classification'"):
        source.load("saved", "image-classification", {}, ctx)
    with pytest.raises(KeyError, match="unknown built-in model 'nope'"):
        source.load("nope", "causal-lm", {}, ctx)
