"""The architecture's rules, checked: import contracts, module sizes, the docs the code cites.

The import contracts live in ``.importlinter`` (import-linter, also runnable as
``lint-imports``); docs/architecture.md explains them.
"""

from __future__ import annotations

import configparser
import pkgutil
import re
import subprocess
from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.application import use_cases
from importlinter.configuration import settings

import harness

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
#: What a plugin may import from the core: docs/architecture.md, "Import rules".
PUBLIC = re.compile(r"harness(\.api|\.columns|\.hookspecs|\.scenarios(\.\w+_protocol)?)?")
MAX_LINES = 800
#: The design note outside the repository that code used to cite (split so this file
#: does not cite it either).
OUTSIDE_DOC = "DESIGN" + ".md"


def _lint(capsys: pytest.CaptureFixture[str],
          extra_imports: tuple[tuple[str, str], ...] = ()) -> tuple[bool, set[str]]:
    """Check the contracts on the real import graph with ``extra_imports`` added to it;
    returns whether all held and the names of the broken ones."""
    configuration.configure()
    real = settings.GRAPH_BUILDER

    class Builder:
        def build(self, **kwargs) -> grimp.ImportGraph:
            graph = real.build(**kwargs)
            for importer, imported in extra_imports:
                graph.add_import(importer=importer, imported=imported, line_number=1,
                                 line_contents=f"import {imported}")
            return graph

    settings.configure(GRAPH_BUILDER=Builder())
    capsys.readouterr()
    try:
        passed = use_cases.lint_imports(str(CONFIG), cache_dir=None, no_logo=True)
    finally:
        settings.configure(GRAPH_BUILDER=real)
    output = capsys.readouterr().out
    return passed, set(re.findall(r"^(.+?) BROKEN$", output, re.MULTILINE))


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert _lint(capsys) == (True, set())


@pytest.mark.parametrize(("importer", "imported", "contract"), [
    ("harness.store", "harness_plugins.kvcache.full", "The core never imports a plugin"),
    ("harness_plugins.kvcache.full", "harness.store",
     "Plugins import only harness, harness.api and the scenario protocols"),
    ("harness_plugins.peft_vit.lora", "harness.scenarios.adapt",
     "Plugins import only harness, harness.api and the scenario protocols"),
    # harness.probes.timing imports harness.api: this closes a cycle.
    ("harness.api", "harness.probes.timing", "No import cycle between the modules of harness"),
])
def test_each_contract_fails_on_a_violation(capsys: pytest.CaptureFixture[str], importer: str,
                                            imported: str, contract: str) -> None:
    assert _lint(capsys, ((importer, imported),)) == (False, {contract})


def test_protected_list_covers_every_private_module() -> None:
    """A new core module is either public (and documented as such) or protected."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    protected = parser["importlinter:contract:plugins-use-public-contracts"]["protected_modules"]
    protected_names = protected.split()
    modules = ["harness", *(m.name for m in pkgutil.walk_packages(harness.__path__, "harness."))]
    uncovered = [m for m in modules if not PUBLIC.fullmatch(m)
                 and not any(m == p or m.startswith(f"{p}.") for p in protected_names)]
    assert uncovered == []
    stale = [p for p in protected_names if p not in modules]
    assert stale == []


def test_lint_imports_command_agrees() -> None:
    done = subprocess.run(["lint-imports", "--config", str(CONFIG), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_no_core_module_is_over_800_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "harness").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_code_cites_only_docs_in_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    citing = [name for name in tracked
              if name.endswith((".py", ".md", ".toml", ".yaml", ".html", ".txt"))
              and OUTSIDE_DOC in (ROOT / name).read_text(encoding="utf-8", errors="replace")]
    assert citing == []
    assert (ROOT / "docs" / "architecture.md").is_file()
