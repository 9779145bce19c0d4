"""``harness new-plugin NAME``: a plugin package that installs, tests and runs as generated."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from string import Template


class ScaffoldError(Exception):
    """The name is unusable or the target folder already exists."""


NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")


def scaffold_plugin(name: str, parent: Path) -> Path:
    """Write ``parent/harness-NAME/`` and return it.

    Layout: ``pyproject.toml`` (entry point in group ``harness``), ``harness_NAME/`` with one
    real method, ``tests/test_plugin.py`` and ``suite.yaml``.
    """
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(
            f"plugin name '{name}': use lower-case letters, digits and dashes, "
            "starting with a letter (e.g. my-method)"
        )
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
    }
    templates = files("harness") / "templates" / "plugin"
    outputs = {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "module.py.tmpl": f"{module}/__init__.py",
        "test_plugin.py.tmpl": "tests/test_plugin.py",
        "suite.yaml.tmpl": "suite.yaml",
    }
    for template, target in outputs.items():
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        text = Template((templates / template).read_text()).substitute(values)
        path.write_text(text)
    return root
