"""The ``lm_eval`` scenario: lm-eval's own scores through ``harness run``, identical to
``lm_eval.simple_evaluate`` alone; methods' weights and KV caches; bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pytest

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")

from harness.api import NoParams, RunContext  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.plugins import load_components, load_plugins  # noqa: E402
from harness.scenarios.lm_eval import LMEvalScenario, LMEvalTasks, task_manager  # noqa: E402
from harness.suite import SuiteError, read_suite, resolve_suite  # noqa: E402
from tests.scenarios.fake_context import FakeContext  # noqa: E402

TASKS = ["stdlib_next_line", "stdlib_next_chars"]
TASK = {"tasks": TASKS, "limit": 12, "batch_size": 4, "bootstrap_iters": 100,
        "add_bos_token": False}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random byte-level Llama with transformers' ByT5 tokenizer, saved like a hub
    model (lm-eval and harness both load it from the folder)."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("byte-llama")
    tokenizer = ByT5Tokenizer(extra_ids=0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def direct(model_dir: str, seed: int = 0) -> dict[str, Any]:
    """lm-eval alone: its HFLM on the model folder, the same tasks and settings."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, batch_size=TASK["batch_size"], device="cpu",
              add_bos_token=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=TASKS, limit=TASK["limit"], bootstrap_iters=TASK["bootstrap_iters"],
        task_manager=task_manager(TASKS, None), log_samples=False, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )  # fmt: skip


def suite_text(model_dir: str, methods: str, tasks: list[str] = TASKS) -> str:
    return f"""\
name: lm-eval-parity
scenario: lm_eval
models: ["hf:{model_dir}"]
tasks:
  - name: lm_eval
    params: {{tasks: [{", ".join(tasks)}], limit: 12, batch_size: 4, bootstrap_iters: 100,
             add_bos_token: false}}
methods: {methods}
seeds: [0]
"""


@pytest.mark.slow
def test_scores_are_identical_to_lm_eval_alone(model_dir: str, tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite_text(model_dir, "[dense, full]"))
    db = tmp_path / "store.duckdb"
    assert main(["run", str(suite), "--db", str(db), "--executor", "inline"]) == 0
    expected = direct(model_dir)["results"]
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT r.method, m.phase, m.metric, m.stat, m.value, m.higher_is_better "
            "FROM metrics m JOIN runs r USING (run_key) WHERE m.phase LIKE 'stdlib_%'"
        ).fetchall()
    stored = {(method, phase, metric, stat): (value, hib)
              for method, phase, metric, stat, value, hib in rows}  # fmt: skip
    checked = 0
    for method in ("dense", "full"):
        for task in TASKS:
            for key, value in expected[task].items():
                if not isinstance(value, float):
                    continue
                name, _, filt = key.partition(",")
                stat = "stderr" if name.endswith("_stderr") else "value"
                name = name.removesuffix("_stderr") + ("" if filt == "none" else f"/{filt}")
                got, hib = stored[(method, task, name, stat)]
                assert got == value, (method, task, key)  # identical, not approximately
                assert hib is (True if stat == "value" else None)
                checked += 1
    assert checked >= 2 * (4 + 2)  # acc, acc_norm and exact_match with their stderrs
    assert expected["stdlib_next_line"]["acc,none"] > 0


class Calls:
    """A KV method whose cache is transformers' own, counting the caches it made."""

    name = "counting-cache"
    version = "1"
    description = "test"
    scenarios = ("lm_eval",)
    params = NoParams

    def __init__(self) -> None:
        self.made = 0

    def make_cache(self, model: Any, params: Any, ctx: RunContext) -> Any:
        from transformers import DynamicCache

        self.made += 1
        return DynamicCache(config=model.config)


def run(model_dir: str, method: Any, **task: Any) -> FakeContext:
    ctx = FakeContext(model_dir, method, LMEvalTasks(), task_params={**TASK, **task})
    LMEvalScenario().run(ctx)
    return ctx


def test_kv_method_cache_serves_every_generate_call_and_requests_are_counted(
    model_dir: str,
) -> None:
    method = Calls()
    ctx = run(model_dir, method)
    value = ctx.recorder.value
    assert method.made == math.ceil(12 / 4)  # one cache per generate batch
    assert value("generate_until", "requests") == 12
    assert value("loglikelihood", "requests") == 12 * 4  # four choices a document
    for kind in ("generate_until", "loglikelihood"):
        assert value(kind, "ms_per_request") > 0 and value(kind, "tokens_per_s") > 0
    assert value("stdlib_next_line", "samples") == 12
    assert 0 <= value("stdlib_next_chars", "exact_match/first_chars") <= 1
    assert "eval" in ctx.phases and "apply" not in ctx.phases


def test_score_chunk_scores_through_the_method_cache(model_dir: str) -> None:
    task = {"tasks": ["stdlib_next_line"]}
    plain_method, chunked_method = Calls(), Calls()
    plain = run(model_dir, plain_method, **task).recorder.value
    chunked = run(model_dir, chunked_method, **task, score_chunk=16).recorder.value
    assert plain_method.made == 0  # no generation, no cache
    assert chunked_method.made > 0  # a fresh cache every scoring forward
    # transformers' full cache: a chunked prefill scores what one forward does
    for name in ("acc", "acc_norm"):
        assert chunked("stdlib_next_line", name) == plain("stdlib_next_line", name)


def test_weight_method_is_applied_and_its_storage_recorded(model_dir: str) -> None:
    components = load_components(load_plugins())
    rtn = components.methods.get("rtn")
    ctx = FakeContext(model_dir, rtn, LMEvalTasks(), params={"bits": 2},
                      task_params={**TASK, "tasks": ["stdlib_next_line"]})  # fmt: skip
    LMEvalScenario().run(ctx)
    value = ctx.recorder.value
    assert "apply" in ctx.phases
    dense = sum(p.numel() * 4 for p in ctx.load_model("causal-lm").parameters())
    assert value("model", "storage_bytes") < dense * 0.6  # 2-bit linears, fp32 embeddings
    assert 0 <= value("stdlib_next_line", "acc") <= 1


def test_method_with_its_own_decode_loop_is_unsupported(model_dir: str) -> None:
    from harness.api import Unsupported

    class OwnLoop(Calls):
        def make_decoder(self, *args: Any) -> Any:
            raise AssertionError("not called")

    with pytest.raises(Unsupported, match="own loop"):
        run(model_dir, OwnLoop())


def test_unknown_task_is_a_suite_error_with_line_and_near_misses(
    model_dir: str, tmp_path: Path
) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(suite_text(model_dir, "[dense]", ["stdlib_next_lines"]))
    with pytest.raises(SuiteError) as caught:
        resolve_suite(read_suite(path), load_components(load_plugins()), lambda *_: ("cpu", "cpu"))
    (issue,) = caught.value.issues
    assert issue.line == 6 and "tasks" in issue.field
    assert "unknown lm-eval task 'stdlib_next_lines'; did you mean stdlib_next_line" in (
        issue.message
    )


def test_without_lm_eval_a_suite_naming_its_tasks_is_a_suite_error(
    model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.api import Unsupported
    from harness.scenarios import lm_eval as scenario

    def missing(*args: Any) -> Any:
        raise Unsupported("the lm_eval scenario needs lm-eval")

    monkeypatch.setattr(scenario, "_index", missing)
    path = tmp_path / "suite.yaml"
    path.write_text(suite_text(model_dir, "[dense]"))
    with pytest.raises(SuiteError) as caught:
        resolve_suite(read_suite(path), load_components(load_plugins()), lambda *_: ("cpu", "cpu"))
    (issue,) = caught.value.issues
    assert issue.line == 6 and "needs lm-eval" in issue.message


def test_task_that_needs_the_network_fails_its_run_with_needs_download(
    model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_task.yaml").write_text(
        "task: hub_only\ndataset_path: someone/not-on-this-machine\noutput_type: "
        "multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
        "doc_to_target: 0\nmetric_list: [{metric: acc}]\n"
    )
    with pytest.raises(RuntimeError, match="needs download: hub_only"):
        run(model_dir, Calls(), tasks=["hub_only"], include_path=str(tasks))


def test_lm_train_method_is_pretrained_once_and_scored_in_its_inference_form(
    tmp_path: Path,
) -> None:
    from transformers import LlamaConfig

    config = tmp_path / "config"
    LlamaConfig(
        vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    ).save_pretrained(config)  # fmt: skip
    mole = load_components(load_plugins()).methods.get("mole")
    pretrain = {"max_bytes": 60_000, "vocab_size": 320, "steps": 4, "seq_len": 32,
                "batch_size": 4}  # fmt: skip
    task = {**TASK, "tasks": ["stdlib_next_line"], "pretrain": pretrain}

    def scored() -> FakeContext:
        ctx = FakeContext(str(config), mole, LMEvalTasks(), params={"experts": 2},
                          task_params=task, cache_dir=str(tmp_path / "cache"))  # fmt: skip
        LMEvalScenario().run(ctx)
        return ctx

    first = scored()
    assert first.recorder.value("train", "cached") == 0
    assert first.recorder.value("train", "steps") == 4
    assert {"train", "derive_inference", "eval"} <= set(first.phases)
    assert 0 <= first.recorder.value("stdlib_next_line", "acc") <= 1
    again = scored()
    assert again.recorder.value("train", "cached") == 1
    assert again.recorder.value("stdlib_next_line", "acc") == first.recorder.value(
        "stdlib_next_line", "acc")  # fmt: skip


def test_lm_train_method_without_pretrain_params_is_an_error(model_dir: str) -> None:
    mole = load_components(load_plugins()).methods.get("mole")
    ctx = FakeContext(model_dir, mole, LMEvalTasks(), task_params=TASK)
    with pytest.raises(ValueError, match="give the lm_eval task a 'pretrain' mapping"):
        LMEvalScenario().run(ctx)
