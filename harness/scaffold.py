"""``harness new-plugin NAME [--scenario S]``: a plugin package that installs, tests and runs
as generated.

Templates live in ``harness/templates/plugin/``: the files every plugin gets at the top
(``pyproject.toml``, ``README.md``, the entry-point test), and one folder per scenario with
its method (``module.py.tmpl``), its tests (``test_plugin.py.tmpl``), a suite that runs
offline in seconds on a CPU (``suite.yaml.tmpl``) and any other file that suite needs. A
scenario folder may leave out a file that another scenario's folder has (:data:`FALLBACK`).
``*.tmpl`` files are ``string.Template`` texts; other files are copied as they are.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from harness.registry import did_you_mean

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["FALLBACK", "NAME_PATTERN", "SCAFFOLDS", "ScaffoldError", "scaffold_plugin"]


class ScaffoldError(Exception):
    """The name or the scenario is unusable, or the target folder already exists."""


NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")

#: Scenario -> the method its scaffold writes (a real one, so the suite and tests run),
#: as the generated README names it.
SCAFFOLDS: dict[str, str] = {
    "perplexity": "weights rounded to bfloat16 (`apply`, `storage_bytes`)",
    "lm_eval": "weights rounded to bfloat16, scored by lm-eval (`apply`, `storage_bytes`)",
    "generate": "a KV cache that stores keys and values in bfloat16 (`make_cache`)",
    "adapt": "LayerNorm tuning, where only the backbone's LayerNorms and the head train "
             "(`attach`, `task_state`, `load_task_state`)",
    "continual": "fine-tuning that replays a small class-balanced memory (`make_learner`)",
    "lm_train": "a Llama with its FFN narrowed by a ratio, pretrained from scratch (`build`)",
    "merge": "a training-free compensator that shifts the head by the feature mean that "
             "merging moves (`transform`, `storage_bytes`)",
    "vqa": "a linear projector of pooled patch features, prepended as visual tokens "
           "(`connect`)",
}

#: Scenario -> the scenario folder its missing template files come from.
FALLBACK: dict[str, str] = {"lm_eval": "perplexity"}

#: Template file -> where it goes in the package (``{module}``: the import name).
TARGETS = {
    "module.py.tmpl": "{module}/__init__.py",
    "test_plugin.py.tmpl": "tests/test_plugin.py",
    "test_registration.py.tmpl": "tests/test_registration.py",
}


def _check_scenario(scenario: str) -> None:
    if scenario in SCAFFOLDS:
        return
    known = sorted(SCAFFOLDS)
    raise ScaffoldError(
        f"no scaffold for scenario '{scenario}'{did_you_mean(scenario, known)}; there is one "
        f"for each built-in scenario: {', '.join(known)}. For a scenario a plugin adds, "
        "scaffold the one whose method side is closest and follow its protocol "
        "(harness show scenario NAME)"
    )


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Traversable]:
    """Every file under ``folder``, by its path relative to ``folder``."""
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_dir():
            found.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            found[prefix + entry.name] = entry
    return found


def _templates(scenario: str) -> dict[str, Traversable]:
    """The shared files and the scenario's, the scenario's own winning over its fallback's."""
    root = files("harness") / "templates" / "plugin"
    chosen = {entry.name: entry for entry in root.iterdir()
              if entry.is_file() and not entry.name.startswith((".", "__"))}  # fmt: skip
    if scenario in FALLBACK:
        chosen.update(_walk(root / FALLBACK[scenario]))
    chosen.update(_walk(root / scenario))
    return chosen


def scaffold_plugin(name: str, parent: Path, *, scenario: str = "perplexity") -> Path:
    """Write ``parent/harness-NAME/`` with a method for ``scenario`` and return it.

    Layout: ``pyproject.toml`` (entry point in group ``harness``), ``harness_NAME/`` with one
    real method of that scenario's protocol, ``tests/`` (they pass as generated; the
    entry-point test once the package is installed), ``suite.yaml`` (runs offline on a CPU
    in seconds) and ``README.md``. Lines the author must change carry ``# replace:``.
    """
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(
            f"plugin name '{name}': use lower-case letters, digits and dashes, "
            "starting with a letter (e.g. my-method)"
        )
    _check_scenario(scenario)
    root = parent / f"harness-{name}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or folder")
    words = name.split("-")
    module = "harness_" + "_".join(words)
    camel = "".join(word.capitalize() for word in words)
    values = {
        "name": name,
        "dist": f"harness-{name}",
        "module": module,
        "method_class": camel,
        "params_class": f"{camel}Params",
        "scenario": scenario,
        "what": SCAFFOLDS[scenario],
    }
    for relative, template in sorted(_templates(scenario).items()):
        target = TARGETS.get(relative, relative.removesuffix(".tmpl")).format(module=module)
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".tmpl"):
            path.write_text(Template(template.read_text()).substitute(values))
        else:
            path.write_bytes(template.read_bytes())
    return root
