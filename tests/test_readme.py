"""The README's params tables are written from the methods' schemas, never by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("readme_params",
                                                  ROOT / "scripts" / "readme_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_params_tables_are_current() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert load_script().render(text) == text, (
        "README.md's params tables are stale: run python scripts/readme_params.py")


def test_every_family_has_a_table_and_every_param_a_doc() -> None:
    from harness.plugins import load_components, load_plugins

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    methods = load_components(load_plugins()).methods
    plugins = {methods.plugin_of(name) for name, _ in methods}
    assert {p for p in plugins if f"<!-- params: {p} -->" in text} == plugins
    undocumented = [f"{name}.{field}" for name, method in methods
                    for field, info in method.params.model_fields.items()
                    if not (info.description or "").strip()]
    assert undocumented == []


def test_a_stale_table_is_rewritten() -> None:
    stale = "<!-- params: weight-compression -->\n| old |\n<!-- /params -->\n"
    fresh = load_script().render(stale)
    assert "| old |" not in fresh and "`group_size` | `64`" in fresh
