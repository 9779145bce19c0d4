"""The ``lm_eval`` scenario: lm-evaluation-harness tasks scored on a method's model, with the
cost of the same run.

lm-eval is the tool LLM papers are scored with; this scenario calls it rather than
re-implementing its tasks. The run's model, transformed by the method, is wrapped in
lm-eval's own ``HFLM`` (:mod:`harness.scenarios.lm_eval_bridge`) and evaluated by
``lm_eval.simple_evaluate``, so the scores are lm-eval's to the last digit.

Methods (one of these protocols, or both of the first two):

* a weight method (the ``perplexity`` family's protocol): ``apply(model, params, ctx)``
  transforms the model, ``storage_bytes(model, params)`` (optional) is recorded;
* a KV-cache method (the ``generate`` family's): ``make_cache(model, params, ctx)`` gives a
  fresh ``transformers.Cache`` for every ``generate`` call of ``generate_until`` requests.
  Scoring requests (loglikelihood) run one full forward, where a cache plays no part,
  unless ``score_chunk`` is set: then every scoring forward gets a fresh cache and feeds
  the sequence through it that many tokens at a time, so the continuation of a long context
  is scored against what the cache kept of it. A
  method with its own decode loop (``make_decoder``) is unsupported here: lm-eval's
  generation is transformers' ``generate``;
* an ``lm_train`` method (``build``, e.g. MoLE and its baselines): its model is pretrained
  exactly as the ``lm_train`` scenario does it, on ``stdlib-lm`` with the task's
  ``pretrain`` params (so a model an ``lm_train`` suite trained comes from the same cache),
  then scored in its ``inference`` form with the task's BPE tokenizer. The suite's model is
  then an ``hf-config:`` shape.

``apply`` runs in the ``apply`` phase on the loaded model (on ``ctx.device``, torch seeded
with the run's seed); ``storage_bytes`` right after it; ``make_cache`` inside the ``eval``
phase, once per generation call and, with ``score_chunk``, per scoring forward (so it must be
cheap, and a figure recorded there is recorded every time); ``build`` and ``inference`` as
:mod:`harness.scenarios.lm_train_protocol` says. Every one gets the same ``params``: a plain
``dict``, the run's method params from the suite validated by the method's ``params`` schema
with its defaults filled in, as JSON values (a tuple field arrives as a list);
``YourParams(**params)`` gives the typed object. There is no common base schema.

``ctx`` (:class:`harness.api.RunContext`): a method may use ``ctx.device``, ``ctx.spec``
(``seed``, ``model``), ``ctx.cache_dir``, ``ctx.load_tokenizer()`` and
``ctx.recorder.record(phase, metric, value, unit)`` for figures of its own; it raises
:class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity, the
task (``ctx.task``: lm-eval's documents are the evaluation), and the scores and figures it
records.

Task ``lm_eval``: ``tasks`` (lm-eval task or group names), ``num_fewshot``, ``limit``,
``batch_size``, ``generate_batch_size`` (1 keeps left padding out of a KV method's cache),
``max_length``, ``add_bos_token`` (lm-eval's model argument: false for a tokenizer that
appends an eos to every text it encodes, as ByT5's does), ``bootstrap_iters`` (for the
stderr of metrics that bootstrap it), ``score_chunk`` and ``pretrain`` (see above) and
``include_path`` (a folder of task YAMLs, lm-eval's own mechanism, in addition to lm-eval's
tasks and the project's offline ones in ``harness/data/lm_eval_tasks``). Names are checked
when the suite is validated, with near misses. lm-eval's seeds are the run's seed. A task
whose data must be downloaded fails its run with "needs download: …" on a machine without
the network; the suite goes on.

What a run records:

* per task (phase = the task's name): every metric lm-eval reports, under its name (with
  ``/filter`` when the filter is not ``none``), with ``higher_is_better`` from the task's
  config and its standard error as stat ``stderr``; ``samples`` (documents scored);
* ``eval``: the phase around ``simple_evaluate`` (its seconds, peak memory, energy);
* per request type served (phase ``loglikelihood``, ``loglikelihood_rolling`` or
  ``generate_until``): ``requests``, ``ms_per_request`` and ``tokens_per_s`` (forward
  tokens of scoring requests, padding included; generated tokens of generation);
* ``model``: ``storage_bytes`` when the method reports them.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, field_validator

from harness.api import CostColumn, CostPlot, Params, ResultColumns, RunContext, Unsupported
from harness.scenarios.lm_train import LMTrainScenario, StdlibLM, StdlibLMParams

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

__all__ = ["OFFLINE_TASKS", "LMEvalParams", "LMEvalScenario", "LMEvalTasks", "task_manager"]

#: The project's offline lm-eval tasks (YAMLs over held-out stdlib source, no download).
OFFLINE_TASKS = Path(__file__).resolve().parent.parent / "data" / "lm_eval_tasks"
#: Request types lm-eval's ``LM`` serves.
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


@functools.lru_cache(maxsize=8)
def _index(include_path: str | None, defaults: bool) -> TaskManager:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise Unsupported(
            'the lm_eval scenario needs lm-eval: pip install -e ".[lm-eval]"'
        ) from exc
    paths = [str(OFFLINE_TASKS)] + ([include_path] if include_path else [])
    return TaskManager(include_path=paths, include_defaults=defaults)


def task_manager(tasks: Sequence[str], include_path: str | None) -> TaskManager:
    """lm-eval's task index for ``tasks``: the offline tasks' and ``include_path``'s alone
    when they name every task (quick), else with lm-eval's own thousands (seconds)."""
    local = _index(include_path, False)
    if set(tasks) <= set(local.all_tasks):
        return local
    return _index(include_path, True)


class LMEvalParams(Params):
    """lm-eval's evaluation settings (``simple_evaluate``'s arguments of the same names)."""

    include_path: str | None = Field(
        None, description="a folder of lm-eval task YAMLs, searched besides lm-eval's own"
    )
    tasks: list[str] = Field(min_length=1, description="lm-eval task or group names")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (task default)")
    limit: int | float | None = Field(
        None, gt=0, description="documents per task (a count, or a fraction below 1)"
    )
    batch_size: int = Field(8, gt=0, description="requests per forward")
    generate_batch_size: int | None = Field(
        None, gt=0, description="requests per generate call (None: batch_size; 1: no padding "
        "in a KV method's cache)"
    )
    max_length: int | None = Field(None, gt=0, description="context length (model's default)")
    add_bos_token: bool | None = Field(
        None, description="HFLM's add_bos_token: whether encoding adds the tokenizer's special "
        "tokens (None: the tokenizer's default; false for tokenizers that append an eos)"
    )
    bootstrap_iters: int = Field(1000, ge=0, description="bootstrap samples for stderrs")
    score_chunk: int | None = Field(
        None, ge=1, description="KV methods: score through the method's cache, this many "
        "tokens a forward (None: one forward, no cache)"
    )
    pretrain: StdlibLMParams | None = Field(
        None, description="for lm_train methods (MoLE, MoE, dense-lm): the stdlib-lm task "
        "params they are pretrained with (the lm_train cache's model when there is one)"
    )

    @field_validator("include_path")
    @classmethod
    def _folder(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"include_path {path!r} is not a folder")
        return path

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str], info: ValidationInfo) -> list[str]:
        known = set(task_manager(tasks, info.data.get("include_path")).all_tasks)
        for name in tasks:
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise ValueError(f"unknown lm-eval task {name!r}{hint}")
        return tasks


class LMEvalTasks:
    """lm-eval tasks by name: lm-eval's own, the project's offline ones, ``include_path``'s."""

    name = "lm_eval"
    description = (
        "lm-evaluation-harness tasks by name (offline: stdlib_next_line, stdlib_next_chars; "
        "hub tasks where the network is; include_path for local task YAMLs)"
    )
    scenario = "lm_eval"
    params = LMEvalParams

    def data(self, params: LMEvalParams, seed: int, **inputs: Any) -> TaskManager:
        return task_manager(params.tasks, params.include_path)


#: What in an exception chain says a dataset had to be fetched from the network.
_DOWNLOAD_ERRORS = ("ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                    "DatasetNotFoundError", "MaxRetryError", "HfHubHTTPError")  # fmt: skip


def _needs_download(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if any(cls.__name__ in _DOWNLOAD_ERRORS for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _metric_name(key: str) -> tuple[str, bool]:
    """lm-eval's ``"acc,none"`` / ``"acc_stderr,none"`` as (``acc``, is the stderr)."""
    name, _, filt = key.partition(",")
    stderr = name.endswith("_stderr")
    if stderr:
        name = name[: -len("_stderr")]
    return (name if filt in ("", "none") else f"{name}/{filt}"), stderr


class LMEvalScenario:
    """lm-eval tasks on the method's model, through lm-eval's own model class."""

    name = "lm_eval"
    description = (
        "lm-evaluation-harness tasks scored by lm-eval itself on the method's model (weights "
        "transformed, or its KV cache in generation), beside time per request and tokens/s"
    )
    method_protocol = ()
    #: The method contract (``harness show scenario lm_eval``): this module's docstring.
    contract = globals()["__doc__"]
    model_kinds = ("causal-lm", "config")
    columns = ResultColumns(
        costs=(
            CostColumn("ms_per_request", "ms per request", "ms_per_request", "ms",
                       per_phase=True),
            CostColumn("request_tokens_per_s", "tokens/s (requests)", "tokens_per_s", "token/s",
                       higher_is_better=True, per_phase=True),
            CostColumn("storage", "storage", "storage_bytes", "bytes"),
        ),
        plots=(CostPlot("storage", "Quality vs storage", "bytes stored", "storage bytes"),),
        trains=False,
    )  # fmt: skip

    def run(self, ctx: RunContext) -> None:
        import torch

        p = ctx.task.params(**ctx.spec.task_params)
        manager = ctx.task.data(p, ctx.spec.seed)
        params = dict(ctx.spec.params)
        method = ctx.method
        if hasattr(method, "make_decoder"):
            raise Unsupported(
                f"method '{ctx.spec.method}' decodes with its own loop; lm-eval generates "
                "with transformers' generate"
            )
        torch.manual_seed(ctx.spec.seed)
        if hasattr(method, "build"):
            model, tokenizer = self.pretrained(ctx, p, params)
        else:
            model = ctx.load_model("causal-lm")
            tokenizer = ctx.load_tokenizer()
            ctx.count_parameters(model)
        if hasattr(method, "apply"):
            with ctx.phase("apply"):
                model = method.apply(model, params, ctx)
        if hasattr(method, "storage_bytes"):
            ctx.recorder.record("model", "storage_bytes", method.storage_bytes(model, params),
                                "bytes")  # fmt: skip
        make_cache = None
        if hasattr(method, "make_cache"):
            make_cache = functools.partial(method.make_cache, model, params, ctx)
        model.eval()

        from harness.scenarios.lm_eval_bridge import HarnessLM

        lm = HarnessLM(model, tokenizer, batch_size=p.batch_size,
                       generate_batch_size=p.generate_batch_size, max_length=p.max_length,
                       add_bos_token=p.add_bos_token, make_cache=make_cache,
                       score_chunk=p.score_chunk)  # fmt: skip
        results = self.evaluate(ctx, lm, p, manager)
        self.record_scores(ctx, results)
        self.record_requests(ctx, lm)

    @staticmethod
    def pretrained(ctx: RunContext, p: LMEvalParams, params: dict[str, Any]) -> tuple[Any, Any]:
        """An lm_train method's model, pretrained as the ``lm_train`` scenario does on the
        ``stdlib-lm`` task with ``p.pretrain`` (one cache for both scenarios), in its
        inference form; and the task's tokenizer."""
        if p.pretrain is None:
            raise ValueError(
                f"method '{ctx.spec.method}' is pretrained by lm_train: give the lm_eval task "
                "a 'pretrain' mapping of stdlib-lm params (vocab_size, steps, ...)"
            )
        model, data = LMTrainScenario().pretrain(ctx, StdlibLM(), p.pretrain)
        if hasattr(ctx.method, "inference"):
            with ctx.phase("derive_inference"):
                model = ctx.method.inference(model, params, ctx)
        return model.eval(), data.tokenizer

    @staticmethod
    def evaluate(ctx: RunContext, lm: Any, p: LMEvalParams, manager: Any) -> dict[str, Any]:
        """``simple_evaluate`` in the ``eval`` phase, seeded by the run's seed."""
        import lm_eval

        seed = ctx.spec.seed
        # lm-eval logs a warning per task built from a custom dataset: not news here.
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        try:
            with ctx.phase("eval"):
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=list(p.tasks), num_fewshot=p.num_fewshot, limit=p.limit,
                    bootstrap_iters=p.bootstrap_iters, task_manager=manager, log_samples=False,
                    random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                    fewshot_random_seed=seed,
                )  # fmt: skip
        except Exception as exc:
            if _needs_download(exc):
                raise RuntimeError(
                    f"needs download: {', '.join(p.tasks)} ({type(exc).__name__}: {exc})"
                ) from exc
            raise
        if results is None:
            raise RuntimeError("lm-eval returned no results")
        return results

    @staticmethod
    def record_scores(ctx: RunContext, results: dict[str, Any]) -> None:
        """Every metric of every task, ``higher_is_better`` from the task's config."""
        record = ctx.recorder.record
        directions = results.get("higher_is_better", {})
        samples = results.get("n-samples", {})
        for task, metrics in sorted(results["results"].items()):
            hib = directions.get(task, {})
            for key, value in sorted(metrics.items()):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue  # the alias, and "N/A" stderrs
                name, stderr = _metric_name(key)
                if stderr:
                    record(task, name, float(value), "", stat="stderr")
                else:
                    base = name.split("/")[0]
                    record(task, name, float(value), "", higher_is_better=hib.get(base))
            if task in samples:
                record(task, "samples", samples[task]["effective"], "count")

    @staticmethod
    def record_requests(ctx: RunContext, lm: Any) -> None:
        """Requests served per type, ms per request and tokens per second."""
        record = ctx.recorder.record
        for kind in REQUEST_TYPES:
            stats = lm.stats.get(kind)
            if stats is None or not stats.requests:
                continue
            record(kind, "requests", stats.requests, "count")
            record(kind, "ms_per_request", stats.seconds * 1e3 / stats.requests, "ms")
            if stats.seconds > 0:
                record(kind, "tokens_per_s", stats.tokens / stats.seconds, "token/s")
