"""Write the README's params tables from the installed methods' schemas.

Each family's table sits between ``<!-- params: PLUGIN -->`` and ``<!-- /params -->`` and
is generated from the params schemas of that plugin's methods (their fields' docs), so a
param is documented once, where it is declared. ``python scripts/readme_params.py`` rewrites
README.md; ``--check`` exits 1 when it is stale (tests/test_readme.py runs that check).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from harness.plugins import load_components, load_plugins
from harness.reference import params_table

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED = re.compile(r"(<!-- params: (?P<plugin>[\w-]+) -->\n)(?P<table>.*?)(<!-- /params -->)",
                    re.S)


def render(text: str) -> str:
    """``text`` with every marked table regenerated; an unknown plugin is an error."""
    methods = load_components(load_plugins()).methods
    by_plugin: dict[str, list[tuple[str, object]]] = {}
    for name, method in methods:
        by_plugin.setdefault(methods.plugin_of(name), []).append((name, method.params))

    def table(match: re.Match[str]) -> str:
        plugin = match["plugin"]
        if plugin not in by_plugin:
            raise SystemExit(f"README marks params of plugin '{plugin}', which has no methods "
                             f"(plugins: {', '.join(sorted(by_plugin))})")
        return f"{match[1]}{params_table(by_plugin[plugin])}\n{match[4]}"

    return MARKED.sub(table, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    fresh = render(text)
    if args.check:
        if fresh != text:
            print("README.md's params tables are stale: run python scripts/readme_params.py")
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
