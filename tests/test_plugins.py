"""Plugin discovery: entry points, -p modules, per-plugin isolation, check_pending."""

from __future__ import annotations

from pathlib import Path

from harness.plugins import load_components, load_plugins, notify

FIXTURES = Path(__file__).parent / "fixtures"


def test_builtin_plugins_register_through_entry_points():
    plugins = load_plugins()
    names = {name for name, _ in plugins.manager.list_name_plugin()}
    assert {"core", "weight-compression"} <= names
    components = load_components(plugins)
    assert plugins.failures == {}
    assert "perplexity" in components.scenarios
    assert {"dense", "rtn", "magnitude"} <= set(components.methods.names())
    assert components.methods.plugin_of("rtn") == "weight-compression"
    assert {"hf", "hf-config", "builtin"} <= set(components.model_sources.names())


def test_module_by_path_registers_its_components():
    plugins = load_plugins([str(FIXTURES / "faulty_plugin.py")])
    components = load_components(plugins)
    assert components.methods.plugin_of("crash") == "faulty_plugin"
    assert "exercise" in components.scenarios


def test_failing_plugins_are_named_and_do_not_take_others_down():
    specs = [str(FIXTURES / name) for name in
             ("broken_import.py", "misspelt_hook.py", "raising_hook.py", "faulty_plugin.py")]
    plugins = load_plugins(specs)
    components = load_components(plugins)
    assert "ModuleNotFoundError" in plugins.failures["broken_import"]
    # check_pending() catches the misspelt hook and names the plugin
    assert "harness_add_method" in plugins.failures["misspelt_hook"]
    assert "cannot register" in plugins.failures["raising_hook"]
    # everything else still loaded
    assert "crash" in components.methods
    assert "rtn" in components.methods


def test_blocked_plugin_is_not_loaded():
    plugins = load_plugins(blocked=["weight-compression"])
    components = load_components(plugins)
    assert "rtn" not in components.methods
    assert "perplexity" in components.scenarios


def test_lifecycle_hook_errors_are_reported_per_plugin():
    plugins = load_plugins([str(FIXTURES / "raising_hook.py")])
    errors = notify(plugins, "harness_run_finish", run=None, result={})
    assert errors == ["plugin 'raising_hook': harness_run_finish: RuntimeError: observer broke"]


def test_a_task_without_data_is_refused_and_named(tmp_path: Path):
    module = tmp_path / "dataless_task.py"
    module.write_text(
        "from harness import hookimpl\n"
        "from harness.api import NoParams\n\n"
        "class OldStyle:\n"
        "    name = 'old-style'\n"
        "    description = 'yields its text through eval_text, not data'\n"
        "    scenario = 'perplexity'\n"
        "    params = NoParams\n\n"
        "    def eval_text(self, params):\n"
        "        return 'text'\n\n"
        "@hookimpl\n"
        "def harness_add_tasks():\n"
        "    return [OldStyle()]\n"
    )
    plugins = load_plugins([str(module)])
    components = load_components(plugins)
    assert "lacks data" in plugins.failures["dataless_task"]
    assert "old-style" not in components.tasks
    assert "stdlib-text" in components.tasks
