"""Tests of suite parsing, validation and run expansion (harness.suite).

The suite files these tests read live in ``tests/suites`` (``valid``, ``malformed``). The
malformed corpus in ``tests/suites/malformed`` pins every error to its line, field and
message: each file starts with ``# expect: LINE: FIELD: SUBSTRING`` comments, and the suite
must report exactly those issues, no more.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import model_validator

from harness.api import MeasureSettings, NoParams, Params
from harness.executors import Placement
from harness.registry import Components
from harness.suite import (
    DEFAULT_TIMEOUT_S,
    Suite,
    SuiteError,
    SuiteIssue,
    canonical_json,
    read_suite,
    resolve_suite,
    run_key,
)

SUITES = Path(__file__).parents[1] / "suites"
MALFORMED = sorted((SUITES / "malformed").glob("*.yaml"))


# --------------------------------------------------------------------------- fake components


@dataclass
class FakeScenario:
    name: str
    method_protocol: tuple[str, ...]
    description: str = ""

    def run(self, ctx: Any) -> None:
        raise NotImplementedError


class RtnParams(Params):
    bits: int = 8
    group_size: int = 64


class MagnitudeParams(Params):
    sparsity: float = 0.5


class TextParams(Params):
    windows: int = 8


class HfOptions(Params):
    dtype: str = "auto"


@dataclass
class FakeMethod:
    """A method with the ``perplexity`` protocol's ``apply``."""

    name: str
    scenarios: tuple[str, ...]
    params: type[Params] = NoParams
    version: str = "1"
    description: str = ""

    def apply(self, model: Any, params: Any, ctx: Any) -> Any:
        return model


@dataclass
class HalfDoneMethod:
    """Claims ``perplexity`` but lacks ``apply``."""

    name: str
    scenarios: tuple[str, ...]
    params: type[Params] = NoParams
    version: str = "1"
    description: str = ""


@dataclass
class FakeTask:
    name: str
    scenario: str
    params: type[Params] = NoParams
    description: str = ""


@dataclass
class FakeModel:
    name: str
    kinds: tuple[str, ...] = ("causal-lm",)
    description: str = ""
    version: str | None = None

    def prepare(self, cache_dir: str) -> str:
        return cache_dir


@dataclass
class FakeSource:
    name: str
    params: type[Params] | None = None
    description: str = ""

    def load(self, id: str, kind: str, options: Any, ctx: Any) -> Any:
        raise NotImplementedError


def make_components(rtn_version: str = "1") -> Components:
    components = Components()
    for scenario in (FakeScenario("perplexity", ("apply",)), FakeScenario("other", ("fit",))):
        components.scenarios.add(scenario.name, scenario, "core")
    methods = [
        (FakeMethod("dense", ("perplexity",)), "core"),
        (FakeMethod("rtn", ("perplexity", "other"), RtnParams, version=rtn_version), "wc"),
        (FakeMethod("magnitude", ("perplexity",), MagnitudeParams), "wc"),
        (FakeMethod("replay", ("other",)), "continual"),
        (HalfDoneMethod("half-done", ("perplexity",)), "core"),
    ]
    for method, plugin in methods:
        components.methods.add(method.name, method, plugin)
    components.tasks.add("stdlib-text", FakeTask("stdlib-text", "perplexity", TextParams), "core")
    components.tasks.add("shapes", FakeTask("shapes", "other"), "core")
    components.models.add("tiny-byte-lm", FakeModel("tiny-byte-lm"), "core")
    components.model_sources.add("hf", FakeSource("hf", HfOptions), "core")
    components.model_sources.add("hf-config", FakeSource("hf-config"), "core")
    components.model_sources.add("builtin", FakeSource("builtin"), "core")
    return components


def fake_device(spec: str, placement: Placement) -> tuple[str, str]:
    """Like harness.environment.resolve_device on a machine without CUDA."""
    if spec in ("auto", "cpu"):
        return "cpu", "cpu: test x4"
    raise ValueError(f"device '{spec}' asked for, but no CUDA device is usable here")


@pytest.fixture
def components() -> Components:
    return make_components()


def load(path: Path, components: Components | None = None) -> Suite:
    return resolve_suite(read_suite(path), components or make_components(), fake_device)


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
name: base
scenario: perplexity
models: [builtin:tiny-byte-lm]
tasks: [stdlib-text]
"""


# --------------------------------------------------------------------------- valid suites


def test_minimal_suite_fills_defaults() -> None:
    suite = load(SUITES / "valid" / "minimal.yaml")
    assert (suite.name, suite.scenario, suite.description) == ("minimal", "perplexity", "")
    assert suite.placement == Placement()
    assert suite.device == "cpu"
    assert suite.timeout_s == DEFAULT_TIMEOUT_S
    assert suite.measure == MeasureSettings()
    assert suite.excluded == 0 and suite.plugins == ()
    [run] = suite.runs
    assert run.seed == 0
    assert run.model == {"ref": "builtin:tiny-byte-lm", "source": "builtin", "id": "tiny-byte-lm"}
    assert (run.task, run.task_params) == ("stdlib-text", {"windows": 8})
    assert (run.method, run.method_plugin, run.method_version, run.params) == (
        "dense", "core", "1", {},
    )
    assert run.config == {
        "scenario": "perplexity",
        "model": run.model,
        "task": {"name": "stdlib-text", "params": {"windows": 8}},
        "method": {"name": "dense", "version": "1", "plugin": "core", "params": {}},
        "seed": 0,
        "device": "cpu",
        "hardware": "cpu: test x4",
        # Only what shapes the timed loop keys a run; rel_precision and max_cv decide validity.
        "measure": {"warmup": 3, "min_repeats": 10, "min_seconds": 1.0, "max_seconds": 60.0},
    }
    assert run.run_key == run_key(run.config)
    assert re.fullmatch(r"[0-9a-f]{16}", run.run_key)


def test_grid_suite_expands_in_order_and_excludes() -> None:
    suite = load(SUITES / "valid" / "grid.yaml")
    assert len(suite.runs) == 40 and suite.excluded == 8
    assert (suite.placement.executor, suite.placement.isolation) == ("inline", "run")
    assert suite.timeout_s == 60.0
    assert suite.measure == MeasureSettings(warmup=1, min_repeats=3, min_seconds=0.1,
                                            max_seconds=5)
    # models -> tasks -> methods (grid combos in order) -> seeds
    first = [(r.method, dict(r.params), r.seed) for r in suite.runs[:10]]
    assert first == [
        ("dense", {}, 0), ("dense", {}, 1),
        ("rtn", {"bits": 4, "group_size": 32}, 0), ("rtn", {"bits": 4, "group_size": 32}, 1),
        ("rtn", {"bits": 8, "group_size": 32}, 0), ("rtn", {"bits": 8, "group_size": 32}, 1),
        ("rtn", {"bits": 8, "group_size": 128}, 0), ("rtn", {"bits": 8, "group_size": 128}, 1),
        ("magnitude", {"sparsity": 0.25}, 0), ("magnitude", {"sparsity": 0.25}, 1),
    ]
    assert [r.task_params["windows"] for r in suite.runs[:20]] == [8] * 10 + [2] * 10
    assert {r.model["ref"] for r in suite.runs[:20]} == {"builtin:tiny-byte-lm"}
    assert suite.runs[20].model == {"ref": "hf:gpt2", "source": "hf", "id": "gpt2",
                                    "dtype": "float16"}
    assert all(r.timeout_s == 60.0 and r.suite == "grid-example" for r in suite.runs)
    assert len({r.run_key for r in suite.runs}) == 40


def test_dry_grid_expansion_is_the_cartesian_product(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + """\
methods:
  - name: rtn
    params: {group_size: 16}
    grid: {bits: [2, 3, 4]}
  - name: rtn
    grid: {bits: [5, 6], group_size: [1, 2]}
""")
    suite = load(path)
    assert [(r.params["bits"], r.params["group_size"]) for r in suite.runs] == [
        (2, 16), (3, 16), (4, 16), (5, 1), (5, 2), (6, 1), (6, 2),
    ]


def test_seeds_as_single_int(tmp_path: Path) -> None:
    suite = load(write(tmp_path, BASE + "methods: [dense]\nseeds: 7\n"))
    assert [r.seed for r in suite.runs] == [7]


def test_no_timeout(tmp_path: Path) -> None:
    suite = load(write(tmp_path, BASE + "methods: [dense]\nlimits: {timeout: null}\n"))
    assert suite.timeout_s is None and suite.runs[0].timeout_s is None


def test_exclude_by_model_task_and_seed(tmp_path: Path) -> None:
    suite = load(write(tmp_path, """\
name: ex
scenario: perplexity
models: [builtin:tiny-byte-lm, hf:gpt2]
tasks: [stdlib-text]
methods: [dense, magnitude]
seeds: [0, 1, 2]
exclude:
  - {model: hf:gpt2, method: magnitude}
  - {seed: 2}
"""))
    assert suite.excluded == 3 + 2 + 1  # 3 gpt2+magnitude, then seed 2 of the other three
    assert len(suite.runs) == 12 - 6
    assert not any(r.model["id"] == "gpt2" and r.method == "magnitude" for r in suite.runs)
    assert {r.seed for r in suite.runs} == {0, 1}


#: One task at two settings, and rtn at two bit widths.
TWO_SETTINGS = """\
name: ex
scenario: perplexity
models: [builtin:tiny-byte-lm]
tasks:
  - {name: stdlib-text, params: {windows: 4}}
  - {name: stdlib-text, params: {windows: 16}}
methods:
  - {name: rtn, grid: {bits: [4, 8]}}
"""


def test_exclude_by_task_params_pairs_settings(tmp_path: Path) -> None:
    # Match each task setting with its own method setting (e.g. KV budgets per context length).
    suite = load(write(tmp_path, TWO_SETTINGS + """\
exclude:
  - {task_params: {windows: 4}, params: {bits: 8}}
  - {task: stdlib-text, task_params: {windows: 16}, params: {bits: 4}}
"""))
    assert suite.excluded == 2
    assert [(r.task_params["windows"], r.params["bits"]) for r in suite.runs] == [(4, 4), (16, 8)]


def test_exclude_names_an_unknown_task_param(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "methods: [dense]\nexclude: [{task_params: {windwos: 4}}]\n")
    with pytest.raises(SuiteError) as caught:
        load(path)
    (issue,) = caught.value.issues
    assert issue.line == 6 and issue.field == "exclude[0].task_params.windwos"
    assert "no run of this suite has a task parameter 'windwos'; did you mean 'windows'?" in (
        issue.message
    )
    with pytest.raises(SuiteError, match=re.escape("expected a mapping like {context_len: 1024}")):
        load(write(tmp_path, BASE + "methods: [dense]\nexclude: [{task_params: 64}]\n"))


def test_exclude_everything_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="excludes all 1 runs"):
        load(write(tmp_path, BASE + "methods: [dense]\nexclude: [{method: dense}]\n"))


def test_relative_hf_path_resolves_against_the_suite_folder(tmp_path: Path) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    suite_dir = tmp_path / "suites"
    suite_dir.mkdir()
    path = write(suite_dir, """\
name: local
scenario: perplexity
models: [hf:../models/mine]
tasks: [stdlib-text]
methods: [dense]
""")
    [run] = load(path).runs
    assert run.model["ref"] == "hf:../models/mine"
    assert run.model["id"] == str((tmp_path / "models" / "mine").resolve())
    assert run.model["dtype"] == "auto"  # the source's params schema fills defaults


def test_plugins_are_read_before_validation(tmp_path: Path) -> None:
    (tmp_path / "my_plugin.py").write_text("")
    path = write(tmp_path, "plugins: [./my_plugin.py, some.module]\nname: x\n")
    assert read_suite(path).plugins == ("./my_plugin.py", "some.module")


# --------------------------------------------------------------------------- run keys


KEYED = """\
name: keyed
description: first
scenario: perplexity
models: [builtin:tiny-byte-lm]
tasks: [{name: stdlib-text, params: {windows: 4}}]
methods: [{name: rtn, params: {bits: 4, group_size: 32}}]
seeds: [3]
measure: {warmup: 2, min_repeats: 5}
limits: {timeout: 100}
"""


def keys_of(tmp_path: Path, text: str, components: Components | None = None) -> list[str]:
    return [r.run_key for r in load(write(tmp_path, text), components).runs]


def test_run_keys_are_stable_across_loads(tmp_path: Path) -> None:
    assert keys_of(tmp_path, KEYED) == keys_of(tmp_path, KEYED)


@pytest.mark.parametrize(
    "old, new",
    [
        ("name: keyed", "name: renamed"),
        ("description: first", "description: second"),
        ("limits: {timeout: 100}", "limits: {timeout: 5}"),
        ("limits: {timeout: 100}", ""),
        # key order, flow vs block style, and writing a default out do not matter
        ("{bits: 4, group_size: 32}", "{group_size: 32, bits: 4}"),
        ("measure: {warmup: 2, min_repeats: 5}", "measure:\n  min_repeats: 5\n  warmup: 2"),
        ("measure: {warmup: 2, min_repeats: 5}",
         "measure: {warmup: 2, min_repeats: 5, min_seconds: 1.0}"),
        ("models: [builtin:tiny-byte-lm]", "models: [{ref: builtin:tiny-byte-lm}]"),
        # settings that only decide validity
        ("measure: {warmup: 2, min_repeats: 5}",
         "measure: {warmup: 2, min_repeats: 5, rel_precision: 0.01}"),
        ("measure: {warmup: 2, min_repeats: 5}",
         "measure: {warmup: 2, min_repeats: 5, rel_precision: null, max_cv: 0.9}"),
    ],
)
def test_run_key_ignores(tmp_path: Path, old: str, new: str) -> None:
    assert old in KEYED
    assert keys_of(tmp_path, KEYED.replace(old, new)) == keys_of(tmp_path, KEYED)


@pytest.mark.parametrize(
    "old, new",
    [
        ("bits: 4", "bits: 3"),
        ("windows: 4", "windows: 5"),
        ("seeds: [3]", "seeds: [4]"),
        ("warmup: 2", "warmup: 3"),
        ("min_repeats: 5", "min_repeats: 6"),
        ("measure: {warmup: 2, min_repeats: 5}",
         "measure: {warmup: 2, min_repeats: 5, max_seconds: 30}"),
        ("builtin:tiny-byte-lm", "hf:gpt2"),
    ],
)
def test_run_key_changes_with(tmp_path: Path, old: str, new: str) -> None:
    assert old in KEYED
    assert keys_of(tmp_path, KEYED.replace(old, new)) != keys_of(tmp_path, KEYED)


def test_max_cv_is_a_deprecated_alias_that_warns(tmp_path: Path) -> None:
    block = "measure:\n  warmup: 2\n  min_repeats: 5\n  max_cv: 0.3"
    suite = load(write(tmp_path, KEYED.replace("measure: {warmup: 2, min_repeats: 5}", block)))
    assert suite.measure.rel_precision == 0.3
    [warning] = suite.warnings
    assert (warning.line, warning.field) == (11, "measure.max_cv")
    assert "deprecated" in warning.message and "read as rel_precision: 0.3" in warning.message
    both = load(write(tmp_path, KEYED.replace("min_repeats: 5}",
                                              "min_repeats: 5, max_cv: 0.3, rel_precision: 0.1}")))
    assert both.measure.rel_precision == 0.1
    assert "ignored: rel_precision is set too" in both.warnings[0].message
    assert load(write(tmp_path, KEYED)).warnings == ()


def test_rel_precision_must_be_a_share(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"measure.rel_precision: expected a relative precision "
                                         r"between 0 and 1"):
        load(write(tmp_path, KEYED.replace("min_repeats: 5}", "min_repeats: 5, "
                                                              "rel_precision: 5}")))


def test_run_key_changes_with_method_version(tmp_path: Path) -> None:
    assert keys_of(tmp_path, KEYED, make_components(rtn_version="2")) != keys_of(tmp_path, KEYED)


def test_run_key_hashes_the_canonical_json_of_the_config() -> None:
    config = {"b": [1, 2.5], "a": {"x": "é"}}
    digest = hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()
    assert run_key(config) == digest[:16]
    assert run_key({"a": 1, "b": 2}) == run_key({"b": 2, "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2})
    assert run_key({"a": -0.0}) == run_key({"a": 0.0})
    with pytest.raises(TypeError):
        run_key({"a": object()})


# --------------------------------------------------------------------------- errors


def test_issue_and_error_formatting() -> None:
    late = SuiteIssue("s.yaml", 9, "seeds", "duplicate seed 1")
    early = SuiteIssue("s.yaml", 2, "methods[0]", "unknown method 'rnt'")
    error = SuiteError([late, early])
    assert str(early) == "s.yaml:2: methods[0]: unknown method 'rnt'"
    assert error.issues == [early, late]
    assert str(error) == f"{early}\n{late}"


def test_errors_name_the_file_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "methods: [rnt]\n")
    with pytest.raises(SuiteError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:5: methods[0]: unknown method 'rnt'")


def test_unknown_name_mentions_failed_plugins(tmp_path: Path) -> None:
    components = make_components()
    components.failures["gptq-plugin"] = "ImportError: no module named auto_gptq"
    with pytest.raises(SuiteError, match="plugin 'gptq-plugin' failed to load"):
        load(write(tmp_path, BASE + "methods: [gptq]\n"), components)


def parse_expectations(path: Path) -> list[tuple[int, str, str]]:
    expected = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        number, field, substring = line.removeprefix("# expect:").split(":", 2)
        expected.append((int(number), field.strip(), substring.strip()))
    return expected


def test_corpus_is_big_enough() -> None:
    assert len(MALFORMED) >= 20
    assert all(parse_expectations(path) for path in MALFORMED)


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_suite(path: Path) -> None:
    expected = parse_expectations(path)
    with pytest.raises(SuiteError) as info:
        load(path)
    issues = info.value.issues
    shown = "\n".join(map(str, issues))
    for line, field, substring in expected:
        assert any(
            i.line == line and i.field == field and substring in i.message for i in issues
        ), f"missing {line}: {field}: {substring}\ngot:\n{shown}"
    reported = {(i.line, i.field) for i in issues}
    assert reported == {(line, field) for line, field, _ in expected}, f"got:\n{shown}"
    assert all(i.file == str(path) for i in issues)
    assert [i.line for i in issues] == sorted(i.line for i in issues)


class Ordered(Params):
    low: int = 1
    high: int = 2

    @model_validator(mode="after")
    def _order(self) -> Ordered:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def test_invalid_grid_combination_points_at_the_entry(tmp_path: Path) -> None:
    components = make_components()
    components.methods.add("ordered", FakeMethod("ordered", ("perplexity",), Ordered), "x")
    path = write(tmp_path, BASE + "methods:\n  - name: ordered\n    grid: {low: [1, 5]}\n")
    with pytest.raises(SuiteError) as info:
        load(path, components)
    [issue] = info.value.issues
    assert (issue.line, issue.field) == (6, "methods[0]")
    assert "low must not exceed high (params: low=5)" in issue.message


def test_params_for_a_method_without_any(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="method 'dense' takes no parameters"):
        load(write(tmp_path, BASE + "methods: [{name: dense, params: {bits: 4}}]\n"))


def test_exclude_is_not_matched_against_a_broken_matrix(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "methods: [rnt]\nexclude: [{method: rnt}]\n")
    with pytest.raises(SuiteError) as info:
        load(path)
    assert [i.field for i in info.value.issues] == ["methods[0]"]


def test_a_built_in_models_version_keys_its_runs(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "methods: [dense]\n")
    plain = load(path).runs[0]
    assert "version" not in plain.model
    components = make_components()
    components.models.get("tiny-byte-lm").version = "abc"
    versioned = load(path, components).runs[0]
    assert versioned.model["version"] == "abc" and versioned.run_key != plain.run_key
    with pytest.raises(SuiteError, match="'version' is taken from ref"):
        load(write(tmp_path, BASE.replace(
            "models: [builtin:tiny-byte-lm]", "models: [{ref: builtin:tiny-byte-lm, version: x}]"
        ) + "methods: [dense]\n"))  # fmt: skip


# --------------------------------------------------------------------------- roles and views


def test_roles_come_from_the_method_and_an_entry_overrides_them(tmp_path: Path) -> None:
    components = make_components()
    components.methods.get("dense").role = "reference"
    suite = load(write(tmp_path, BASE + """\
methods:
  - dense
  - {name: rtn, params: {bits: 8}, role: upper-bound}
  - {name: rtn, params: {bits: 4}}
  - {name: magnitude, role: null}
seeds: [0, 1]
"""), components)
    roles = {(r.method, r.params.get("bits"), r.seed): suite.layout.roles.get(r.run_key)
             for r in suite.runs}
    assert roles == {
        ("dense", None, 0): "reference", ("dense", None, 1): "reference",
        ("rtn", 8, 0): "upper-bound", ("rtn", 8, 1): "upper-bound",
        ("rtn", 4, 0): None, ("rtn", 4, 1): None,
        ("magnitude", None, 0): None, ("magnitude", None, 1): None,
    }
    # A role never keys a run: the same suite without roles has the same keys.
    plain_suite = load(write(tmp_path, BASE + """\
methods:
  - dense
  - {name: rtn, params: {bits: 8}}
  - {name: rtn, params: {bits: 4}}
  - magnitude
seeds: [0, 1]
""", "plain.yaml"))
    assert [r.run_key for r in plain_suite.runs] == [r.run_key for r in suite.runs]


def test_a_plugin_declaring_an_unknown_role_is_named(tmp_path: Path) -> None:
    components = make_components()
    components.methods.get("dense").role = "baseline"
    with pytest.raises(SuiteError, match=r"method 'dense' declares role string 'baseline'.*"
                                         r"bug in its plugin"):
        load(write(tmp_path, BASE + "methods: [dense]\n"), components)


def test_views_resolve_to_dimensions_and_round_trip(tmp_path: Path) -> None:
    from harness.layout import Layout, View

    suite = load(write(tmp_path, TWO_SETTINGS + """\
  - dense
seeds: [0, 1]
views:
  - {rows: [method, bits], columns: windows, metric: bits_per_byte, mean: true, delta: true}
  - {title: By bits, columns: params.bits, where: {windows: 16}, metric: latency}
"""))
    assert suite.layout.views == (
        View("bits_per_byte by windows", ("method", "params.bits"), "task_params.windows",
             "bits_per_byte", mean=True, delta=True),
        View("By bits", ("method",), "params.bits", "latency",
             where={"task_params.windows": [16]}),
    )
    assert Layout.from_json(suite.layout.to_json()) == suite.layout


def test_a_view_dimension_named_by_a_method_and_a_task_param_must_say_which(
        tmp_path: Path) -> None:
    class WindowsParams(Params):
        windows: int = 2

    components = make_components()
    components.methods.get("magnitude").params = WindowsParams
    path = write(tmp_path, BASE + """\
methods: [magnitude]
views:
  - {columns: windows, metric: bits_per_byte}
""")
    with pytest.raises(SuiteError) as caught:
        load(path, components)
    (issue,) = caught.value.issues
    assert issue.field == "views[0].columns" and issue.line == 7
    assert "'windows' is both a method param and a task param; write params.windows or " \
           "task_params.windows" in issue.message
