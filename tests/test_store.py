"""Tests of the DuckDB results store: round trips, replacement, read-only access, migrations."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from harness import store as store_mod
from harness.store import (
    ReadOnlyError,
    Store,
    StoreError,
    connect_readonly,
    export_parquet,
    query,
)

T0 = 1_700_000_000.0


def make_run(run_key: str = "k1", **overrides: Any) -> dict[str, Any]:
    run = {
        "run_key": run_key,
        "scenario": "perplexity",
        "model": "builtin:tiny-byte-lm",
        "model_config": {"ref": "builtin:tiny-byte-lm", "dtype": "float32"},
        "task": "tiny-text",
        "task_params": {"max_tokens": 256},
        "method": "baseline",
        "method_version": "1",
        "method_plugin": "core",
        "params": {},
        "seed": 0,
        "device": "cpu",
        "hardware": "x86_64",
        "config": {"scenario": "perplexity", "seed": 0},
        "harness_version": "0.1.0",
    }
    run.update(overrides)
    return run


def make_result(status: str = "ok", **overrides: Any) -> dict[str, Any]:
    result = {
        "status": status,
        "error": None,
        "traceback": None,
        "started_at": T0,
        "finished_at": T0 + 2.5,
        "wall_s": 2.5,
        "env_id": "e" * 16,
        "metrics": [
            {"phase": "eval", "metric": "perplexity", "stat": "value", "value": 12.5,
             "unit": "ppl", "reason": None, "higher_is_better": False},
            {"phase": "eval", "metric": "latency", "stat": "p50", "value": 0.01,
             "unit": "s", "reason": None, "higher_is_better": None},
            {"phase": "eval", "metric": "gpu_memory", "stat": "peak", "value": None,
             "unit": "bytes", "reason": "no CUDA device", "higher_is_better": None},
        ],
        "samples": [
            {"phase": "eval", "metric": "latency", "unit": "s", "values": [0.01, 0.011, 0.009]},
        ],
    }  # fmt: skip
    result.update(overrides)
    return result


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results" / "harness.duckdb"


@pytest.fixture
def store(db: Path) -> Store:
    return Store(db)


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = connect_readonly(db)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_new_store_is_at_current_schema_version(db: Path) -> None:
    Store(db)
    assert rows(db, "SELECT max(version) FROM schema_version") == [(len(store_mod.MIGRATIONS),)]
    tables = {t for (t,) in rows(db, "SELECT table_name FROM duckdb_tables()")}
    assert tables == {
        "schema_version", "suites", "runs", "suite_runs", "metrics", "samples", "environments",
        "scenario_columns",
    }  # fmt: skip


def test_run_round_trip(store: Store, db: Path) -> None:
    suite_id = store.record_suite("smoke", "suites/smoke.yaml", "a smoke test", "name: smoke\n")
    store.commit_run(suite_id, make_run(), make_result())

    (run,) = rows(
        db,
        "SELECT suite_id, model, model_config, params, seed, status, started_at, finished_at, "
        "wall_s, env_id, harness_version FROM runs",
    )
    assert run[0] == suite_id
    assert run[1] == "builtin:tiny-byte-lm"
    assert json.loads(run[2]) == {"ref": "builtin:tiny-byte-lm", "dtype": "float32"}
    assert json.loads(run[3]) == {}
    assert run[4:6] == (0, "ok")
    assert run[6] == datetime(2023, 11, 14, 22, 13, 20)  # T0 in UTC
    assert (run[7] - run[6]).total_seconds() == 2.5
    assert run[8:] == (2.5, "e" * 16, "0.1.0")
    assert rows(db, "SELECT config->>'scenario' FROM runs") == [("perplexity",)]

    metrics = rows(
        db,
        "SELECT metric, stat, value, unit, reason, higher_is_better FROM metrics "
        "WHERE run_key = 'k1' ORDER BY metric",
    )
    assert metrics == [
        ("gpu_memory", "peak", None, "bytes", "no CUDA device", None),
        ("latency", "p50", 0.01, "s", None, None),
        ("perplexity", "value", 12.5, "ppl", None, False),
    ]
    assert rows(db, 'SELECT run_key, phase, metric, unit, "values" FROM samples') == [
        ("k1", "eval", "latency", "s", [0.01, 0.011, 0.009])
    ]


def test_failed_run_without_metrics(store: Store, db: Path) -> None:
    result = make_result(
        "failed", error="boom", traceback="Traceback ...", metrics=[], samples=[], wall_s=None
    )
    store.commit_run("s", make_run(), result)
    assert rows(db, "SELECT status, error, traceback, wall_s FROM runs") == [
        ("failed", "boom", "Traceback ...", None)
    ]
    assert rows(db, "SELECT count(*) FROM metrics") == [(0,)]


def test_recommit_replaces_run_and_drops_old_metrics(store: Store, db: Path) -> None:
    store.commit_run("s", make_run(), make_result())
    store.commit_run("s", make_run("other"), make_result())
    new_metrics = [
        {"phase": "eval", "metric": "perplexity", "value": 9.0, "unit": "ppl"},
    ]
    store.commit_run("s", make_run(), make_result("invalid", metrics=new_metrics, samples=[]))

    assert rows(db, "SELECT run_key, status FROM runs ORDER BY run_key") == [
        ("k1", "invalid"), ("other", "ok"),
    ]  # fmt: skip
    assert rows(db, "SELECT metric, stat, value FROM metrics WHERE run_key = 'k1'") == [
        ("perplexity", "value", 9.0)
    ]
    assert rows(db, "SELECT count(*) FROM samples WHERE run_key = 'k1'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM metrics WHERE run_key = 'other'") == [(3,)]
    assert rows(db, "SELECT count(*) FROM suite_runs") == [(2,)]


def test_one_key_linked_to_two_suites(store: Store, db: Path) -> None:
    a = store.record_suite("a", "a.yaml", "", "name: a\n")
    b = store.record_suite("b", "b.yaml", "", "name: b\n")
    assert a != b
    store.commit_run(a, make_run(), make_result())
    store.commit_run(b, make_run(), make_result())
    store.commit_run(a, make_run(), make_result())
    assert rows(db, "SELECT suite_id, run_key FROM suite_runs ORDER BY suite_id") == sorted(
        [(a, "k1"), (b, "k1")]
    )
    assert rows(db, "SELECT count(*), any_value(suite_id) FROM runs") == [(1, a)]


def test_record_suite_upserts(store: Store, db: Path) -> None:
    first = store.record_suite("smoke", "old/path.yaml", "v1", "name: smoke\n")
    second = store.record_suite("smoke", "new/path.yaml", "v2", "name: smoke\n")
    assert first == second
    assert len(first) == 16
    int(first, 16)
    ((path, description, first_seen, last_run),) = rows(
        db, "SELECT path, description, first_seen, last_run FROM suites"
    )
    assert (path, description) == ("new/path.yaml", "v2")
    assert last_run >= first_seen
    assert store.record_suite("smoke", "p", "", "name: smoke\nx: 1\n") != first


def test_environment_is_idempotent(store: Store, db: Path) -> None:
    env = {
        "hostname": "box", "platform": "Linux", "python": "3.11.7", "cpu": "x86", "cpu_count": 16,
        "ram_bytes": 128 * 2**30, "gpu": None, "gpu_count": 0, "torch": "2.4.0",
        "harness_version": "0.1.0", "git_sha": "abc123", "extra": {"numa": 2},
    }  # fmt: skip
    env_id = store.record_environment(env)
    assert len(env_id) == 16
    assert store.record_environment(dict(reversed(env.items()))) == env_id
    assert store.record_environment({**env, "hostname": "other"}) != env_id

    assert rows(db, "SELECT count(*) FROM environments") == [(2,)]
    ((hostname, cpu_count, ram, gpu, cuda, details),) = rows(
        db,
        "SELECT hostname, cpu_count, ram_bytes, gpu, cuda, details FROM environments "
        "WHERE env_id = ?",
        [env_id],
    )
    assert (hostname, cpu_count, ram, gpu, cuda) == ("box", 16, 128 * 2**30, None, None)
    assert json.loads(details) == env


def test_statuses(store: Store) -> None:
    assert store.statuses() == {}
    store.commit_run("s", make_run("a"), make_result("ok"))
    store.commit_run("s", make_run("b"), make_result("oom", metrics=[], samples=[]))
    store.commit_run("s", make_run("c"), make_result("timeout", metrics=[], samples=[]))
    assert store.statuses() == {"a": "ok", "b": "oom", "c": "timeout"}
    assert store.statuses(iter(["b", "c", "missing"])) == {"b": "oom", "c": "timeout"}
    assert store.statuses([]) == {}


@pytest.mark.parametrize("status", ["success", None, "OK"])
def test_invalid_status_rejected(store: Store, db: Path, status: str | None) -> None:
    with pytest.raises(ValueError, match="status"):
        store.commit_run("s", make_run(), make_result(status))
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_missing_run_field_rejected(store: Store) -> None:
    run = make_run()
    del run["seed"]
    with pytest.raises(ValueError, match="seed"):
        store.commit_run("s", run, make_result())


def test_query_reads(store: Store, db: Path) -> None:
    store.commit_run("s", make_run(), make_result())
    columns, result = query(db, "SELECT run_key, status FROM runs")
    assert columns == ["run_key", "status"]
    assert result == [("k1", "ok")]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO runs (run_key) VALUES ('x')",
        "CREATE TABLE t (a INTEGER)",
        "DELETE FROM runs",
    ],
)
def test_query_refuses_writes(store: Store, db: Path, sql: str) -> None:
    store.commit_run("s", make_run(), make_result())
    with pytest.raises(ReadOnlyError, match="opens the store read-only") as info:
        query(db, sql)
    assert "\n" not in str(info.value)
    assert store.statuses() == {"k1": "ok"}


def test_query_bad_sql_is_store_error(store: Store, db: Path) -> None:
    with pytest.raises(StoreError, match="no_such_table") as info:
        query(db, "SELECT * FROM no_such_table")
    assert not isinstance(info.value, ReadOnlyError)


def test_query_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(FileNotFoundError, match=r"nope\.duckdb"):
        query(missing, "SELECT 1")
    assert not missing.exists()


def test_export_parquet(store: Store, db: Path, tmp_path: Path) -> None:
    suite_id = store.record_suite("smoke", "smoke.yaml", "", "name: smoke\n")
    store.record_environment({"hostname": "box"})
    store.commit_run(suite_id, make_run("a"), make_result())
    store.commit_run(suite_id, make_run("b"), make_result())

    out = tmp_path / "export"
    files = export_parquet(db, out)
    assert {f.name for f in files} == {
        f"{t}.parquet"
        for t in ("schema_version", "suites", "runs", "suite_runs", "metrics", "samples",
                  "environments", "scenario_columns")
    }  # fmt: skip
    expected = {
        "schema_version": len(store_mod.MIGRATIONS), "suites": 1, "runs": 2, "suite_runs": 2,
        "metrics": 6, "samples": 2, "environments": 1, "scenario_columns": 0,
    }  # fmt: skip
    for f in files:
        ((count,),) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{f}')").fetchall()
        assert count == expected[f.stem], f.name
    values = duckdb.sql(f"""SELECT "values" FROM read_parquet('{out / "samples.parquet"}')""")
    assert values.fetchall()[0][0] == [0.01, 0.011, 0.009]


def test_migrations_apply_once_and_keep_data(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db).commit_run("s", make_run(), make_result())
    current = len(store_mod.MIGRATIONS)
    assert rows(db, "SELECT max(version) FROM schema_version") == [(current,)]

    calls: list[int] = []

    def backfill_note(con: duckdb.DuckDBPyConnection) -> None:
        calls.append(1)
        con.execute("UPDATE runs SET note = 'migrated ' || run_key")

    monkeypatch.setattr(
        store_mod,
        "MIGRATIONS",
        [*store_mod.MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT", backfill_note],
    )
    upgraded = Store(db)
    Store(db)  # an up-to-date file is left alone
    assert calls == [1]
    assert rows(db, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, current + 3)]
    assert rows(db, "SELECT run_key, status, note FROM runs") == [("k1", "ok", "migrated k1")]
    assert rows(db, "SELECT count(*) FROM metrics") == [(3,)]
    upgraded.commit_run("s", make_run("k2"), make_result())
    assert upgraded.statuses() == {"k1": "ok", "k2": "ok"}


def test_failed_migration_rolls_back(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db)
    current = len(store_mod.MIGRATIONS)
    monkeypatch.setattr(
        store_mod,
        "MIGRATIONS",
        [*store_mod.MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT", "SELECT * FROM nope"],
    )
    with pytest.raises(StoreError, match=rf"schema version {current + 2} failed \(nothing was "
                                         r"changed\)"):
        Store(db)
    assert rows(db, "SELECT max(version) FROM schema_version") == [(current,)]
    columns = [c for (c,) in rows(db, "SELECT column_name FROM duckdb_columns() "
                                      "WHERE table_name = 'runs'")]  # fmt: skip
    assert "note" not in columns


def test_newer_schema_is_refused(db: Path) -> None:
    Store(db)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade harness"):
        Store(db)


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Start another process that holds the store's write lock for ``seconds``."""
    code = (
        "import duckdb, sys, time\n"
        f"con = duckdb.connect({str(db)!r})\n"
        "print('ready', flush=True)\n"
        f"time.sleep({seconds})\n"
        "con.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_locked_file_raises_after_retries(
    store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "_LOCK_ATTEMPTS", 3)
    monkeypatch.setattr(store_mod, "_LOCK_BACKOFF_S", 0.01)
    proc = _hold_lock(db, 30)
    try:
        with pytest.raises(StoreError, match=rf"{db.name} is locked by another process"):
            store.commit_run("s", make_run(), make_result())
        with pytest.raises(StoreError, match="locked"):
            query(db, "SELECT 1")
    finally:
        proc.kill()
        proc.wait()
    store.commit_run("s", make_run(), make_result())
    assert store.statuses() == {"k1": "ok"}


def test_write_waits_for_a_short_lock(store: Store) -> None:
    proc = _hold_lock(store.path, 0.3)
    try:
        store.commit_run("s", make_run(), make_result())
    finally:
        proc.wait()
    assert store.statuses() == {"k1": "ok"}


def test_suite_layout_migrates_and_upserts(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:  # a store written before stores kept layouts
        patch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:3])
        Store(db)
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO suites VALUES (?, 'smoke', 's.yaml', '', ?, now(), now())",
                    [store_mod.suite_id_for("smoke", "name: smoke\n"), "name: smoke\n"])
    con = store_mod.connect_readonly(db)
    try:
        from harness.report.query import stored_layouts

        con.execute("CREATE TEMP TABLE member AS SELECT 'smoke' AS suite, 'k' AS run_key")
        assert stored_layouts(con) == {}  # read as it is: no layouts, no error
    finally:
        con.close()
    store = Store(db)
    assert rows(db, "SELECT name, layout FROM suites") == [("smoke", None)]
    store.record_suite("smoke", "s.yaml", "", "name: smoke\n", '{"roles":{"k":"reference"}}')
    assert rows(db, "SELECT CAST(layout AS VARCHAR) FROM suites") == [
        ('{"roles":{"k":"reference"}}',)]


def test_a_rerun_keeps_the_roles_of_runs_the_suite_no_longer_has(store: Store, db: Path) -> None:
    """A plugin that re-keys a bound's runs leaves the old runs in the store: they keep
    their role (pinned, never ranked), while a run the suite still has takes its latest."""
    text = "name: smoke\n"
    store.record_suite("smoke", "s.yaml", "", text,
                       '{"roles":{"old":"upper-bound","kept":"reference"}}')
    store.record_suite("smoke", "s.yaml", "", text,
                       '{"roles":{"new":"upper-bound","kept":"lower-bound"},"views":[]}')
    [(layout,)] = rows(db, "SELECT CAST(layout AS VARCHAR) FROM suites")
    assert json.loads(layout)["roles"] == {"old": "upper-bound", "new": "upper-bound",
                                           "kept": "lower-bound"}

