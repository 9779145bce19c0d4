"""The store's fault battery: each fault is a sentence and an exit code, never a traceback,
and nothing measured is lost (after SQLite's "How SQLite Is Tested")."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from harness import store as store_module
from harness.cli import main
from harness.store import DriverLock, Store, StoreError, StoreInUse, query
from tests.test_runner import harness_cli, write_suite


def stored_count(db: Path) -> int:
    return query(db, "SELECT count(*) FROM runs")[1][0][0]


def has_runs_table(db: Path) -> bool:
    """Whether a driver has created the store's tables (False while it can't be read)."""
    try:
        query(db, "SELECT count(*) FROM runs")
    except (StoreError, FileNotFoundError):
        return False
    return True


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_a_second_driver_on_one_store_exits_2_at_once_naming_the_first(tmp_path):
    suite = write_suite(tmp_path, "[hang, steady]", limits="{timeout: 30}")
    db = tmp_path / "h.duckdb"
    first = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite), "--db",
                              str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        lock_file = tmp_path / "h.duckdb.lock"
        for _ in range(300):  # the first takes the lock before anything else
            if lock_file.exists() and lock_file.read_text():
                break
            time.sleep(0.05)
        start = time.monotonic()
        second = harness_cli("run", str(suite), "--db", str(db))
        elapsed = time.monotonic() - start
        assert second.returncode == 2, second.stderr
        assert elapsed < 10  # "within 2 s" of its own start-up (a Python with rich)
        text = " ".join(second.stderr.split())
        assert f"store {db} is in use by `harness run {suite}` (pid {first.pid} on host" in text
        assert "wait for it, pass --wait, or use another --db" in text
        no_traceback(second)
        # The first driver, refused nothing, gets as far as its store before it is stopped
        # (under load it may still be loading plugins when the second one is done).
        for _ in range(600):
            if first.poll() is not None or has_runs_table(db):
                break
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    # No configuration ran twice: only the first driver's rows, each once.
    _, rows = query(db, "SELECT count(*), count(DISTINCT run_key) FROM runs")
    assert rows[0][0] == rows[0][1]


def test_wait_takes_the_store_when_the_first_driver_is_done(tmp_path):
    db = tmp_path / "h.duckdb"
    holder = DriverLock(db)
    holder.acquire("harness run other.yaml")
    suite = write_suite(tmp_path, "[steady]")
    waiter = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite), "--db",
                               str(db), "--executor", "inline", "--wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert waiter.poll() is None  # still waiting
    holder.release()
    _, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert stored_count(db) == 1


def test_a_lock_left_by_a_killed_driver_is_taken_over_with_a_notice(tmp_path):
    db = tmp_path / "h.duckdb"
    lock_file = tmp_path / "h.duckdb.lock"
    # What a driver killed with -9 leaves: its name in the file, and no flock (the kernel
    # dropped it with the process).
    lock_file.write_text(json.dumps({"pid": 999999, "host": "gone", "command":
                                     "harness run old.yaml", "since": time.time()}))
    proc = harness_cli("run", str(write_suite(tmp_path, "[steady]")), "--db", str(db),
                       "--executor", "inline")
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock" in proc.stderr and "harness run old.yaml" in proc.stderr
    assert lock_file.read_text() == ""  # released, naming no holder
    with pytest.raises(StoreInUse):  # and a held lock is refused in-process too
        first = DriverLock(db)
        first.acquire("a")
        try:
            DriverLock(db).acquire("b")
        finally:
            first.release()


def test_readers_work_while_a_driver_holds_the_store(tmp_path):
    db = tmp_path / "h.duckdb"
    assert main(["run", str(write_suite(tmp_path, "[steady]")), "--db", str(db),
                 "--executor", "inline"]) == 0
    lock = DriverLock(db)
    lock.acquire("harness run busy.yaml")
    try:
        assert stored_count(db) == 1
        proc = harness_cli("query", "SELECT count(*) FROM runs", "--db", str(db))
        assert proc.returncode == 0, proc.stderr
    finally:
        lock.release()


def test_a_foreign_file_as_the_store_is_a_sentence(tmp_path):
    db = tmp_path / "notes.duckdb"
    db.write_text("these are my notes, not a database\n" * 100)
    proc = harness_cli("run", str(write_suite(tmp_path, "[steady]")), "--db", str(db))
    assert proc.returncode == 2
    assert f"cannot open store {db}" in " ".join(proc.stderr.split())
    no_traceback(proc)
    assert db.read_text().startswith("these are my notes")  # untouched


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_store_folder_is_a_sentence(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    proc = harness_cli("run", str(write_suite(tmp_path, "[steady]")), "--db",
                       str(folder / "h.duckdb"))
    assert proc.returncode == 2
    assert "cannot write the store" in proc.stderr
    no_traceback(proc)


def test_a_store_path_under_a_file_is_a_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = harness_cli("run", str(write_suite(tmp_path, "[steady]")), "--db",
                       str(blocker / "h.duckdb"))  # a folder that can't exist
    assert proc.returncode == 2
    assert "cannot write the store" in proc.stderr and "pass --db in a folder" in proc.stderr
    no_traceback(proc)


def test_a_directory_as_the_suite_is_a_sentence_on_one_line(tmp_path):
    folder = tmp_path / ("long-folder-name-" * 6)  # past 80 columns: a log must not wrap it
    folder.mkdir()
    proc = harness_cli("run", str(folder), "--db", str(tmp_path / "h.duckdb"))
    assert proc.returncode == 2
    assert f"{folder} is a directory: pass a suite's YAML file" in proc.stderr.splitlines()[0]
    no_traceback(proc)


def test_a_store_from_a_newer_harness_is_refused_by_every_command(tmp_path):
    db = tmp_path / "h.duckdb"
    assert main(["run", str(write_suite(tmp_path, "[steady]")), "--db", str(db),
                 "--executor", "inline"]) == 0
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())",
                [len(store_module.MIGRATIONS) + 1])
    con.close()
    for args in (["run", str(write_suite(tmp_path, "[steady]")), "--db", str(db)],
                 ["query", "SELECT 1", "--db", str(db)],
                 ["report", str(db), "--out", str(tmp_path / "site")],
                 ["export", "--parquet", str(tmp_path / "pq"), "--db", str(db)]):
        proc = harness_cli(*args)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        # The message is wrapped at the terminal's width, where the store's path puts it.
        assert "upgrade harness" in " ".join(proc.stderr.split()), (args, proc.stderr)
        no_traceback(proc)
    assert not (tmp_path / "site").exists()


def test_a_driver_killed_in_the_middle_of_a_commit_leaves_every_committed_run(tmp_path):
    """kill -9 of a process while it commits, over and over: each time the store opens
    afterwards with every run whose commit returned."""
    db = tmp_path / "h.duckdb"
    script = tmp_path / "commit.py"
    script.write_text(f"""
import sys, time
from harness.store import Store
store = Store({str(db)!r})
suite = store.record_suite("s", "s.yaml", "", "text")
i = int(sys.argv[1])
while True:
    run = {{"run_key": f"{{i:08d}}", "scenario": "x", "model": "m", "task": "t",
           "method": "m", "method_version": "1", "method_plugin": "p", "params": {{}},
           "seed": 0, "device": "cpu", "hardware": "h", "config": {{}}}}
    result = {{"run_key": run["run_key"], "status": "ok", "error": None, "traceback": None,
              "started_at": time.time(), "finished_at": time.time(), "wall_s": 0.0,
              "metrics": [{{"phase": "p", "metric": "m", "value": float(k), "unit": "",
                           "stat": "value", "reason": None, "higher_is_better": None}}
                          for k in range(200)], "samples": [], "env_id": None}}
    store.commit_run(suite, run, result)
    print(run["run_key"], flush=True)
    i += 1
""")
    committed: set[str] = set()
    start = 0
    for delay in (0.8, 1.1, 1.3):
        proc = subprocess.Popen([sys.executable, str(script), str(start)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.kill()  # SIGKILL, most likely inside a commit (they follow one another)
        out, _ = proc.communicate()
        committed |= set(out.split())
        start += 10_000
        _, rows = query(db, "SELECT run_key FROM runs")
        stored = {key for (key,) in rows}
        assert committed <= stored  # every commit that returned is there
        _, partial = query(db, "SELECT run_key, count(*) FROM metrics GROUP BY run_key "
                               "HAVING count(*) != 200")
        assert partial == []  # and no run half-stored
    assert committed


def full_disk(n: int):
    """``Store.commit_run`` failing with ENOSPC from the ``n``-th commit on."""
    real, calls = Store.commit_run, [0]

    def commit_run(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    return commit_run


def test_a_full_disk_stops_the_suite_keeps_what_it_has_and_the_rerun_recovers(
        tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path, "[steady]", seeds="[0, 1, 2, 3, 4, 5]")
    db = tmp_path / "h.duckdb"
    run = ["run", str(suite), "--db", str(db), "--executor", "inline"]
    monkeypatch.setattr(Store, "commit_run", full_disk(3))
    assert main(run) == 1
    err = " ".join(capsys.readouterr().err.split())
    spool = tmp_path / "h.duckdb.unsaved"
    assert f"disk full: 2 run(s) stored, 1 spooled to {spool}, 3 not run; free space and " \
           "rerun" in err
    assert "Traceback" not in err
    assert stored_count(db) == 2
    [spooled] = spool.glob("*.json")
    (spool / "cut-short.json").write_text('{"suite_id": "x", "run"')  # a partial spool file

    monkeypatch.undo()  # space freed
    assert main(run) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"recovered 1 result(s) from {spool}" in err
    assert "set aside cut-short.json: it holds no whole result" in err
    assert "3 resumed from the store" in err  # 2 stored + 1 recovered; the other 3 ran now
    assert stored_count(db) == 6
    assert not spooled.exists() and (spool / "set-aside" / "cut-short.json").exists()


def test_a_result_that_cannot_be_spooled_is_said_to_run_again(tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path, "[steady]", seeds="[0, 1]")
    db = tmp_path / "h.duckdb"
    monkeypatch.setattr(Store, "commit_run", full_disk(1))
    (tmp_path / "h.duckdb.unsaved").write_text("a file where the spool folder goes")
    assert main(["run", str(suite), "--db", str(db), "--executor", "inline"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "0 run(s) stored, 0 spooled" in err and "could not be spooled either" in err
