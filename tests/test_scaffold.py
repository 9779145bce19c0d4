"""``harness new-plugin --scenario S``: for every built-in scenario, a plugin whose method
serves that scenario's protocol, marked where its author must change it, whose tests pass
and whose suite validates as generated (and, for one scenario beside test_cli's perplexity
one, installs and runs end to end)."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.builtin import harness_add_scenarios
from harness.cli import main
from harness.scaffold import SCAFFOLDS, ScaffoldError, scaffold_plugin
from harness.store import query

SCENARIOS = {scenario.name: scenario for scenario in harness_add_scenarios()}


def _name(scenario: str) -> str:
    """A plugin name per scenario, so the generated modules' import names differ."""
    return "my-" + scenario.replace("_", "-")


def _pytest(roots: list[Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest over the generated packages' tests (importlib mode: their test files share
    names), from ``cwd`` with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(cwd),
         "--import-mode=importlib", *(str(root / "tests") for root in roots)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Every scenario's scaffold, generated once into one folder."""
    parent = tmp_path_factory.mktemp("scaffolds")
    return {s: scaffold_plugin(_name(s), parent, scenario=s) for s in sorted(SCAFFOLDS)}


def test_every_built_in_scenario_has_a_scaffold():
    assert set(SCAFFOLDS) == set(SCENARIOS)


def test_unknown_scenario_names_the_known_ones(tmp_path):
    with pytest.raises(ScaffoldError) as error:
        scaffold_plugin("my-method", tmp_path, scenario="perplexty")
    message = str(error.value)
    assert "did you mean 'perplexity'" in message
    assert all(name in message for name in SCAFFOLDS)
    assert not (tmp_path / "harness-my-method").exists()


def test_the_command_passes_the_scenario(tmp_path, capsys):
    assert main(["new-plugin", "ln-tune", "--dir", str(tmp_path), "--scenario", "adapt"]) == 0
    module = tmp_path / "harness-ln-tune" / "harness_ln_tune" / "__init__.py"
    assert 'scenarios = ("adapt",)' in module.read_text()
    assert main(["new-plugin", "other", "--dir", str(tmp_path), "--scenario", "adpt"]) == 2
    printed = capsys.readouterr()
    assert "did you mean 'adapt'" in " ".join((printed.out + printed.err).split())


@pytest.mark.parametrize("scenario", sorted(SCAFFOLDS))
def test_scaffold_serves_the_protocol_marked_for_replacing(
    scenario, generated, tmp_path, monkeypatch
):
    name = _name(scenario)
    module_name = "harness_" + name.replace("-", "_")
    root = generated[scenario]
    for file in ("pyproject.toml", "README.md", "suite.yaml", "tests/test_plugin.py",
                 "tests/test_registration.py", f"{module_name}/__init__.py"):
        assert (root / file).is_file(), file

    readme = (root / "README.md").read_text()
    assert f"harness show scenario {scenario}" in readme and "replace:" in readme
    assert "# replace:" in (root / "tests" / "test_plugin.py").read_text()

    # The module imports without installing, and its method serves the scenario.
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(module_name)
    [method] = module.harness_add_methods()
    assert method.name == name and method.scenarios == (scenario,)
    assert method.description.startswith(f"{name}: ")
    assert all(hasattr(method, attr) for attr in SCENARIOS[scenario].method_protocol)
    fields = method.params.model_fields
    assert fields and all(field.description for field in fields.values())
    method.params()  # every field has a default

    # Marks on the description, the params' own fields and the body of every method.
    marked = [line.strip() for line in inspect.getsource(module).splitlines()
              if "# replace:" in line]
    assert any(line.startswith(f'"{name}: ') and "replace this description" in line
               for line in marked)
    own = tuple(f"{field}:" for field in method.params.__annotations__)
    assert own and any(line.startswith(own) for line in marked)
    bodies = [fn for fn in vars(type(method)).values() if inspect.isfunction(fn)]
    assert bodies and all("# replace:" in inspect.getsource(fn) for fn in bodies)

    # The suite validates with the plugin loaded by module name.
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(root / "suite.yaml"), "--dry-run", "-p", module_name]) == 0


def test_generated_tests_pass_without_installing(generated, tmp_path):
    """Each package's tests against its uninstalled module (on PYTHONPATH): the method's
    tests pass, the entry-point test skips (it needs the installed distribution)."""
    roots = list(generated.values())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*map(str, roots), os.environ.get("PYTHONPATH", "")])}
    tests = _pytest(roots, tmp_path, env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    n = len(roots)
    assert f"{n} passed, {n} skipped" in tests.stdout, tests.stdout


@pytest.mark.slow
def test_continual_scaffold_installs_tests_and_runs_as_generated(tmp_path):
    """What test_cli's perplexity test does, for a scenario whose method gets a params object
    and keeps a memory: install, list, its tests (the entry-point one included), its suite."""
    root = scaffold_plugin("class-memory", tmp_path, scenario="continual")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(root)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "harness.cli", "list", "methods"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "class-memory" in listed.stdout, listed.stderr
    tests = _pytest([root], root, env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout and "skipped" not in tests.stdout
    db = tmp_path / "c.duckdb"
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(root / "suite.yaml"),
                          "--db", str(db)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    _, rows = query(db, """
        SELECT r.method, r.status, m.value FROM runs r JOIN metrics m USING (run_key)
        WHERE m.phase = 'eval' AND m.metric = 'accuracy' AND m.stat = 'value'""")
    accuracy = {method: value for method, status, value in rows if status == "ok"}
    assert set(accuracy) == {"finetune", "class-memory"}
    assert accuracy["class-memory"] > accuracy["finetune"]  # the memory limits forgetting
    _, rows = query(db, """
        SELECT m.value FROM runs r JOIN metrics m USING (run_key)
        WHERE r.method = 'class-memory' AND m.metric = 'buffer_bytes'""")
    assert rows == [(10 * 5 * (64 * 4 + 8),)]  # 5 examples of 10 classes: 64 pixels + label
