from __future__ import annotations

import pytest

from harness.registry import Registry, RegistryError, suggest


def test_unknown_name_suggests_near_misses_and_lists_available():
    registry: Registry[object] = Registry("method")
    for name in ("rtn", "dense", "magnitude"):
        registry.add(name, object(), "weight-compression")
    with pytest.raises(RegistryError) as err:
        registry.get("rnt")
    message = str(err.value)
    assert "unknown method 'rnt'" in message
    assert "did you mean 'rtn'" in message
    assert "(available: dense, magnitude, rtn)" in message


def test_duplicate_name_names_both_plugins():
    registry: Registry[object] = Registry("method")
    registry.add("rtn", object(), "first")
    with pytest.raises(RegistryError, match="both plugin 'first' and plugin 'second'"):
        registry.add("rtn", object(), "second")


def test_unknown_name_mentions_failed_plugins():
    registry: Registry[object] = Registry("task", {"vision": "ImportError: no module named x"})
    with pytest.raises(RegistryError, match="plugin 'vision' failed to load"):
        registry.get("digits")


def test_suggest_prefers_prefixes():
    assert suggest("mag", ["magnitude", "dense"]) == ["magnitude"]
    assert suggest("zzz", ["magnitude", "dense"]) == []
