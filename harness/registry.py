"""Named components from every plugin, with near-miss suggestions on unknown names.

One small generic :class:`Registry` serves scenarios, methods, tasks, built-in models and
model sources (after lm-eval's ``api/registry.py``): a duplicate name is an error naming both
plugins, an unknown name suggests the closest ones and lists what exists, and a name whose
plugin failed to load says so instead of "unknown".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate component name. ``str()`` is the full message."""

    def __str__(self) -> str:
        return str(self.args[0])


def suggest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` close matches of ``name`` among ``choices`` (prefix matches first)."""
    lowered = name.lower()
    prefix = [c for c in choices if c.lower().startswith(lowered) or lowered.startswith(c.lower())]
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    return list(dict.fromkeys(prefix + close))[:n]


def did_you_mean(name: str, choices: list[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for close matches of ``name``, else ``""``."""
    near = suggest(name, choices)
    return "; did you mean " + " or ".join(f"'{n}'" for n in near) + "?" if near else ""


class Registry(Generic[T]):
    """Components of one kind, by name, each remembering the plugin that added it."""

    def __init__(self, kind: str, failures: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._plugins: dict[str, str] = {}
        self._failures = failures if failures is not None else {}

    def add(self, name: str, item: T, plugin: str) -> None:
        """Register ``item`` under ``name``; a second plugin using the name is an error."""
        if name in self._items:
            raise RegistryError(
                f"{self.kind} '{name}' is provided by both plugin '{self._plugins[name]}' "
                f"and plugin '{plugin}'"
            )
        self._items[name] = item
        self._plugins[name] = plugin

    def get(self, name: str) -> T:
        """The component called ``name``, or a :class:`RegistryError` that helps."""
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """``unknown method 'x'; did you mean 'y'? (available: …)``, plus failed plugins."""
        names = sorted(self._items)
        message = f"unknown {self.kind} '{name}'" + did_you_mean(name, names)
        shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
        message += f" (available: {shown or 'none'})"
        for plugin, error in self._failures.items():
            message += f"\n  note: plugin '{plugin}' failed to load and may provide it: {error}"
        return message

    def plugin_of(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._plugins[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Components:
    """Every registry, filled from the plugins by :func:`harness.plugins.load_components`.

    ``failures`` maps a plugin name to the error that stopped it (import error or an
    exception in one of its registration hooks); the other plugins are unaffected.
    """

    failures: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from harness.api import Method, ModelEntry, ModelSource, Scenario, Task

        self.scenarios: Registry[Scenario] = Registry("scenario", self.failures)
        self.methods: Registry[Method] = Registry("method", self.failures)
        self.tasks: Registry[Task] = Registry("task", self.failures)
        self.models: Registry[ModelEntry] = Registry("built-in model", self.failures)
        self.model_sources: Registry[ModelSource] = Registry("model source", self.failures)
