"""Plugin discovery and per-plugin isolation around pluggy.

Plugins come from three places, in this order: the entry-point group ``harness`` (the
built-in plugins use it too), modules named with ``-p`` on the command line, and a suite's
``plugins:`` list. pluggy stops a hook call at the first exception, so every registration
hook is called one implementation at a time here: a plugin that fails to import, fails
pluggy's validation or raises in a hook is recorded by name in ``failures`` and the others
carry on.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.registry import Components, RegistryError

ENTRY_POINT_GROUP = "harness"
#: Set to 1 to load only the plugins of this distribution, not third-party entry points.
DISABLE_AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "harness-bench"

#: Attributes each kind of component must have (the Protocols in :mod:`harness.api`).
REQUIRED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "scenarios": ("name", "description", "method_protocol", "run"),
    "methods": ("name", "version", "description", "scenarios", "params"),
    "tasks": ("name", "description", "scenario", "params", "data"),
    "models": ("name", "description", "kinds", "prepare"),
    "model_sources": ("name", "description", "load"),
}
REGISTRATION_HOOKS = {
    "scenarios": "harness_add_scenarios",
    "methods": "harness_add_methods",
    "tasks": "harness_add_tasks",
    "models": "harness_add_models",
    "model_sources": "harness_add_model_sources",
}


@dataclass
class PluginSet:
    """A plugin manager with everything registered, and what failed on the way."""

    manager: pluggy.PluginManager
    failures: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: The ``-p``/suite module specs, so worker processes can load the same set.
    modules: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()


def _import_module_spec(spec: str, base_dir: Path | None) -> ModuleType:
    """Import ``spec``: a dotted module name or a path to a ``.py`` file."""
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"no plugin file {path}")
        name = f"harness_local_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:
        # Like pytest's rootdir insertion: `-p myplugin` finds ./myplugin.py.
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(spec)


def _plugin_name(spec: str) -> str:
    return Path(spec).stem if spec.endswith(".py") else spec


def load_plugins(
    modules: Sequence[str] = (),
    *,
    blocked: Sequence[str] = (),
    base_dir: Path | None = None,
) -> PluginSet:
    """Build the plugin manager: entry points, then ``modules``; never raises for a plugin.

    :param modules: ``-p`` arguments and suite ``plugins:`` entries (module names or
        ``.py`` paths, the latter relative to ``base_dir``).
    :param blocked: plugin names not to load (``-p no:NAME``).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager, modules=tuple(modules), blocked=tuple(blocked))
    for name in blocked:
        manager.set_blocked(name)

    own_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        if own_only and dist != OWN_DISTRIBUTION:
            continue
        if manager.is_blocked(ep.name) or manager.has_plugin(ep.name):
            continue
        try:
            _register(plugins, ep.load(), ep.name)
        except Exception as exc:  # any failure is this plugin's, not ours
            plugins.failures[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if ep.dist is not None:
            plugins.versions[ep.name] = ep.dist.version

    for spec in modules:
        name = _plugin_name(spec)
        if manager.is_blocked(name) or manager.has_plugin(name):
            continue
        try:
            module = _import_module_spec(spec, base_dir)
            _register(plugins, module, name)
        except Exception as exc:
            plugins.failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        plugins.versions[name] = str(getattr(module, "__version__", "local"))

    _check_pending(plugins)
    return plugins


def _register(plugins: PluginSet, plugin: object, name: str) -> None:
    plugins.manager.register(plugin, name=name)


def _check_pending(plugins: PluginSet) -> None:
    """pluggy's ``check_pending`` names one plugin at a time: drop each offender in turn."""
    while True:
        try:
            plugins.manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = plugins.manager.get_name(exc.plugin) or repr(exc.plugin)
            plugins.manager.unregister(exc.plugin)
            plugins.failures[name] = f"PluginValidationError: {exc}"


def call_each(
    plugins: PluginSet, hook_name: str, on_error: Callable[[str, str], None], **kwargs: Any
) -> Iterator[tuple[str, Any]]:
    """Call ``hook_name`` once per implementation, yielding ``(plugin, result)``.

    An exception is passed to ``on_error(plugin, message)`` and that plugin's result is
    skipped; the other implementations still run.
    """
    hook = getattr(plugins.manager.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):  # registration order
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as exc:  # a plugin's failure is named, not fatal
            on_error(impl.plugin_name, f"{hook_name}: {type(exc).__name__}: {exc}")
            continue
        yield impl.plugin_name, result


def load_components(plugins: PluginSet) -> Components:
    """Fill every registry from the registration hooks of every plugin."""
    components = Components(failures=plugins.failures, versions=plugins.versions)
    failures = plugins.failures
    for kind, hook_name in REGISTRATION_HOOKS.items():
        registry = getattr(components, kind)
        for plugin, items in call_each(plugins, hook_name, failures.__setitem__):
            for item in items or ():
                missing = [a for a in REQUIRED_ATTRIBUTES[kind] if not hasattr(item, a)]
                if missing:
                    failures[plugin] = (
                        f"{hook_name}: {item!r} lacks {', '.join(missing)} "
                        f"(see harness.api for the {kind[:-1].replace('_', ' ')} protocol)"
                    )
                    continue
                try:
                    registry.add(item.name, item, plugin)
                except RegistryError as exc:
                    failures[plugin] = str(exc)
    return components


def probes_for(plugins: PluginSet, device: str) -> list[Any]:
    """Every plugin's probes for a run on ``device``; a failing plugin is skipped, named."""
    probes: list[Any] = []
    for _, items in call_each(plugins, "harness_add_probes", plugins.failures.__setitem__,
                              device=device):
        probes.extend(items or ())
    return probes


def notify(plugins: PluginSet, hook_name: str, **kwargs: Any) -> list[str]:
    """Call a lifecycle hook on every plugin; return one message per plugin that raised."""
    errors: list[str] = []
    for _ in call_each(
        plugins, hook_name, lambda plugin, error: errors.append(f"plugin '{plugin}': {error}"),
        **kwargs,
    ):
        pass
    return errors
