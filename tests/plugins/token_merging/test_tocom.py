"""ToCom: disabled at equal ratios, chains additively, reverses by negation, folds into the
weights; self-distillation lowers its loss; it needs the backbone's pretraining data; a
shipped plug-in is used as trained, and the built-in suite's is shipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from harness_plugins.token_merging import ToCom, tocom
from harness_plugins.token_merging.tocom import install, set_ratios, train

from harness.api import Unsupported
from harness.models.tome import TokenMerging

from .conftest import tiny_vit


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def with_compensators(blocks: int = 8) -> tuple[torch.nn.Module, TokenMerging, list]:
    model = tiny_vit()
    tome = TokenMerging(model)
    compensators = install(model, blocks)
    torch.manual_seed(1)
    for c in compensators:  # trained-looking weights: the up projection is no longer zero
        torch.nn.init.normal_(c.up.weight, std=0.05)
    return model, tome, compensators


def delta(c: torch.nn.Module) -> torch.Tensor:
    return c.merged().weight - c.base.weight


def test_equal_ratios_are_bit_identical_to_the_model_without_it() -> None:
    reference, model = tiny_vit(), None
    model, tome, compensators = with_compensators()
    ref_tome = TokenMerging(reference)
    for r in (0, 5):
        tome.r = ref_tome.r = r
        set_ratios(compensators, r, r, 1.0)
        with torch.no_grad():
            assert torch.equal(model(pixel_values=images()).logits,
                               reference(pixel_values=images()).logits)  # fmt: skip


def test_compensators_chain_and_reverse() -> None:
    _, _, compensators = with_compensators()
    c = compensators[3]
    steps = {}
    for m, n in ((1, 4), (4, 6), (1, 6), (6, 1)):
        c.set(m, n, 1.0)
        steps[(m, n)] = delta(c)
    torch.testing.assert_close(steps[(1, 4)] + steps[(4, 6)], steps[(1, 6)])
    torch.testing.assert_close(steps[(6, 1)], -steps[(1, 6)])
    with pytest.raises(ValueError, match="exceeds"):
        c.set(0, 9, 1.0)


def test_the_folded_weights_give_the_same_logits() -> None:
    model, tome, compensators = with_compensators()
    tome.r = 6
    set_ratios(compensators, 2, 6, 0.7)
    with torch.no_grad():
        bypassed = model(pixel_values=images()).logits
        for layer in model.vit.layers:
            attention = layer.layer.attention
            attention.q_proj = attention.q_proj.merged()
            attention.v_proj = attention.v_proj.merged()
        folded = model(pixel_values=images()).logits
    torch.testing.assert_close(folded, bypassed, rtol=1e-5, atol=1e-5)


def test_dropout_acts_while_training_only_and_the_fold_is_the_eval_form() -> None:
    model = tiny_vit()
    [c, *_] = install(model, 8, dropout=0.5)
    torch.nn.init.normal_(c.up.weight, std=0.05)
    c.set(2, 6, 1.0)
    x = torch.randn(4, 65, c.base.in_features)
    with torch.no_grad():
        c.train()
        assert not torch.equal(c(x), c(x))  # hidden channels dropped at random
        c.eval()
        expected = c.base(x) + c.up(c.down(x) * c.mask)
        torch.testing.assert_close(c(x), expected)
        torch.testing.assert_close(c.merged()(x), expected, rtol=1e-5, atol=1e-5)


def test_self_distillation_lowers_the_loss(ctx) -> None:
    p = ToCom.params(max_r=8, steps=40, batch=16, lr=3e-3)
    _, losses = train(ctx.load_model("image-classification"), p, seed=0)
    assert len(losses) == 40 and losses[0] > 0
    assert sum(losses[-10:]) < sum(losses[:10])


def test_plug_in_is_trained_once_and_set_for_the_run(ctx) -> None:
    method = ToCom()
    params = ToCom.params(r_src=2, r_tgt=6, max_r=8, steps=5, batch=8).model_dump()
    model = ctx.load_model("image-classification")
    TokenMerging(model)
    base = ctx.load_model("image-classification").vit.layers[0].attention.q_proj.weight
    method.transform(model, params, ctx)
    q = model.vit.layers[0].layer.attention.q_proj
    assert type(q) is torch.nn.Linear  # folded: the backbone's shape, plain ToMe's cost
    forward = q.weight - base
    again = ctx.load_model("image-classification")
    TokenMerging(again)
    method.transform(again, {**params, "r_src": 6, "r_tgt": 2, "scale": 0.5}, ctx)
    backward = again.vit.layers[0].layer.attention.q_proj.weight - base
    # the cached plug-in, not a new one: the reverse direction at half scale
    torch.testing.assert_close(backward, -0.5 * forward)
    assert forward.abs().max() > 0
    assert method.added_params(model, params) == 2 * 3 * 2 * 32 * 16
    assert method.storage_bytes(model, params) == 4 * method.added_params(model, params)


def test_without_pretraining_data_it_is_unsupported(ctx, tmp_path) -> None:
    bare = tiny_vit()
    bare.save_pretrained(tmp_path / "bare")
    ctx.load_model = lambda kind: type(bare).from_pretrained(tmp_path / "bare")
    model = ctx.load_model("image-classification")
    with pytest.raises(Unsupported, match="pretraining data"):
        ToCom().transform(model, ToCom.params(max_r=4, steps=2).model_dump(), ctx)


def test_a_shipped_plug_in_is_used_without_training(ctx, tmp_path, monkeypatch) -> None:
    params = ToCom.params(r_src=0, r_tgt=4, max_r=4, steps=3, batch=4).model_dump()
    trained = ctx.load_model("image-classification")
    TokenMerging(trained)
    ToCom().transform(trained, params, ctx)  # trained into the run's cache
    [built] = [p for p in (Path(ctx.cache_dir) / "tocom").iterdir() if p.is_dir()]
    shipped = tmp_path / "shipped"
    shutil.copytree(built, shipped / built.name)
    shutil.rmtree(built)
    monkeypatch.setattr(tocom, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(tocom, "train", lambda *a, **k: pytest.fail("trained again"))
    model = ctx.load_model("image-classification")
    TokenMerging(model)
    ToCom().transform(model, params, ctx)
    torch.testing.assert_close(model.vit.layers[1].layer.attention.v_proj.weight,
                               trained.vit.layers[1].layer.attention.v_proj.weight)
    assert not (Path(ctx.cache_dir) / "tocom" / built.name).exists()


def test_the_builtin_suite_s_plug_in_is_shipped() -> None:
    """suites/tocom.yaml needs no distillation: its recipe's plug-in ships with the package."""
    from transformers import ViTForImageClassification

    from harness.models.recipes import recipe_hash
    from harness.models.tiny_vit import SHIPPED_DIR_P4
    from harness.suite import read_suite

    suite = read_suite(Path(__file__).parents[3] / "suites" / "tocom.yaml")
    [entry] = [m for m in suite.data["methods"] if m["name"] == "tocom"]
    assert suite.data["models"] == ["builtin:tiny-vit-p4"]
    model = ViTForImageClassification.from_pretrained(SHIPPED_DIR_P4)
    recipe = ToCom().recipe(model, ToCom.params(**entry.get("params", {})))
    folder = tocom.SHIPPED_DIR / recipe_hash(recipe)
    assert (folder / "plug_in.pt").is_file()
    assert json.loads((folder / "recipe.json").read_text())["recipe"] == recipe
