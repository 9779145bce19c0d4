"""A suite's ``exclude:`` list: cells of the matrix not to run, and why an entry matched none.

An exclude entry names a model, task, method, seed or some parameters; every run that
matches all of them is dropped. Entries are checked like the rest of the suite, and since
an entry that matches no run is almost always a typo, it is an issue that says which of its
keys matches nothing (with the values the suite does have) or that the combination does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.api import RunSpec
from harness.canonical import describe
from harness.registry import did_you_mean
from harness.suite.checker import Loc, SuiteChecker, is_int, plain, quoted, yaml_value

#: Keys an ``exclude`` entry may have.
EXCLUDE_KEYS = ("model", "task", "method", "seed", "params", "task_params")


@dataclass
class Exclude:
    """One valid ``exclude`` entry: where it is, and its keys as plain values."""

    loc: Loc
    keys: dict[str, Any]


def read_excludes(checker: SuiteChecker) -> list[Exclude]:
    """Check the ``exclude:`` list; the entries without mistakes, in order."""
    raw = checker.data.get("exclude")
    if raw is None:
        return []
    if not isinstance(raw, list):
        checker.error(("exclude",), "expected a list of mappings like {method: rtn, seed: 1}, "
                      f"got {describe(raw)}")
        return []
    entries: list[Exclude] = []
    for i, entry in enumerate(raw):
        loc: Loc = ("exclude", i)
        if not isinstance(entry, dict):
            checker.error(loc, f"expected a mapping with keys among {quoted(EXCLUDE_KEYS)}, "
                          f"got {describe(entry)}")
            continue
        ok = checker.check_keys(loc, entry, EXCLUDE_KEYS, "exclude key")
        if not entry:
            checker.error(loc, "an empty exclude entry would exclude every run; give "
                          f"{quoted(EXCLUDE_KEYS)}")
            ok = False
        for key in ("model", "task", "method"):
            if key in entry and not isinstance(entry[key], str):
                checker.error((*loc, key), f"expected a {key} name, got {describe(entry[key])}")
                ok = False
        if "seed" in entry and not is_int(entry["seed"]):
            checker.error((*loc, "seed"),
                          f"expected an integer seed, got {describe(entry['seed'])}")
            ok = False
        for key, example in (("params", "{bits: 4}"), ("task_params", "{context_len: 1024}")):
            if key in entry and not isinstance(entry[key], dict):
                checker.error((*loc, key), f"expected a mapping like {example}, got "
                              f"{describe(entry[key])}")
                ok = False
        if ok:
            entries.append(Exclude(loc, {k: plain(v) for k, v in entry.items()}))
    return entries


def _matches(run: RunSpec, key: str, value: Any) -> bool:
    if key == "model":
        return value in (run.model["ref"], f"{run.model['source']}:{run.model['id']}")
    if key == "task":
        return run.task == value
    if key == "method":
        return run.method == value
    if key == "seed":
        return run.seed == value
    params = run.task_params if key == "task_params" else run.params
    return all(k in params and params[k] == v for k, v in value.items())


def apply_excludes(
    checker: SuiteChecker, runs: list[RunSpec], excludes: list[Exclude]
) -> list[RunSpec]:
    """Drop runs matched by an ``exclude`` entry; an entry matching none is an issue."""
    for entry in excludes:
        if any(all(_matches(run, k, v) for k, v in entry.keys.items()) for run in runs):
            continue
        _explain_no_match(checker, runs, entry)
    kept = [
        run for run in runs
        if not any(all(_matches(run, k, v) for k, v in e.keys.items()) for e in excludes)
    ]
    if runs and not kept:
        checker.error(("exclude",), f"excludes all {len(runs)} runs of the suite")
    return kept


def _explain_no_match(checker: SuiteChecker, runs: list[RunSpec], entry: Exclude) -> None:
    """Say which key of an exclude entry matches nothing (probably a typo), or that the
    combination does."""
    values: dict[str, list[Any]] = {
        "model": [run.model["ref"] for run in runs],
        "task": [run.task for run in runs],
        "method": [run.method for run in runs],
        "seed": [run.seed for run in runs],
    }
    blamed = False
    for key, value in entry.keys.items():
        if key in ("params", "task_params"):
            for pkey, pvalue in value.items():
                loc: Loc = (*entry.loc, key, pkey)
                given = [run.task_params if key == "task_params" else run.params for run in runs]
                present = [params[pkey] for params in given if pkey in params]
                if not present:
                    kind = "task parameter" if key == "task_params" else "parameter"
                    names = sorted({k for params in given for k in params})
                    checker.error(loc, f"no run of this suite has a {kind} '{pkey}'"
                                  + did_you_mean(str(pkey), names)
                                  + f" ({kind}s in this suite: {', '.join(names) or 'none'})")
                    blamed = True
                elif pvalue not in present:
                    shown = ", ".join(dict.fromkeys(yaml_value(v) for v in present))
                    checker.error(loc, f"no run has {pkey}={yaml_value(pvalue)} "
                                  f"(values in this suite: {shown})")
                    blamed = True
        elif not any(_matches(run, key, value) for run in runs):
            present = list(dict.fromkeys(values[key]))
            message = f"no run has {key} {yaml_value(value)}"
            if isinstance(value, str):
                message += did_you_mean(value, [str(v) for v in present])
            shown = ", ".join(yaml_value(v) for v in present)
            checker.error((*entry.loc, key), f"{message} (this suite's {key}s: {shown})")
            blamed = True
    if not blamed:
        given = ", ".join(f"{k}={yaml_value(v)}" for k, v in entry.keys.items())
        checker.error(entry.loc, f"matches no run: no run combines {given}; fix or remove it")
