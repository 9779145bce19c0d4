"""The DuckDB results store: one file per results directory, written only by the driver.

Every write opens its own short-lived connection instead of holding one for the whole
suite, because DuckDB locks the file per process: ``harness query`` and the report builder
can then read it between two runs. Readers open it read-only, so a stray ``DELETE`` typed
into ``harness query`` is refused by DuckDB itself rather than by parsing the SQL.

The schema is versioned: ``MIGRATIONS[i]`` brings a file from version ``i`` to ``i + 1``,
and opening an older file applies the missing steps in one transaction, so results kept
from an earlier harness stay readable after an upgrade.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from harness.api import STATUSES
from harness.canonical import canonical_json, config_key
from harness.layout import Layout

__all__ = [
    "MIGRATIONS",
    "DriverLock",
    "ReadOnlyError",
    "Store",
    "StoreError",
    "StoreInUse",
    "connect_readonly",
    "export_parquet",
    "query",
    "suite_id_for",
]


class StoreError(Exception):
    """A store file can't be opened, migrated or queried (the message names the file)."""


class ReadOnlyError(StoreError):
    """A statement tried to write through a read-only connection (``harness query``)."""


class StoreInUse(StoreError):
    """Another ``harness run`` holds the store (:class:`DriverLock`)."""


class DriverLock:
    """One ``harness run`` per store: an exclusive ``flock`` on ``<store>.lock``, whose
    content names the holder (pid, host, command, start time).

    Two drivers on one store would run every configuration twice and overwrite each other's
    rows. The kernel drops the lock when its holder dies, however it dies, so a killed
    driver never blocks the next one; its leftover content is how the next one notices.
    Readers (query, report, export) never take it.
    """

    def __init__(self, store: str | Path) -> None:
        store = Path(store)
        self.store = store
        self.path = store.parent / f"{store.name}.lock"
        self._fd: int | None = None

    def acquire(self, command: str, *, wait: bool = False) -> str | None:
        """Take the lock (waiting for it if ``wait``); return a notice when it was left
        behind by a driver that died, else None. Raises :class:`StoreInUse` when held."""
        import fcntl
        import os
        import socket

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreInUse(f"store {self.store} is in use by {_describe_holder(holder)}; "
                             "wait for it, pass --wait, or use another --db") from None
        left = _holder(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        if left:
            return (f"took over the lock of store {self.store}: its holder, "
                    f"{_describe_holder(left)}, ended without releasing it")
        return None

    def release(self) -> None:
        import fcntl
        import os

        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # no holder named: the next driver owes no notice
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> dict[str, Any]:
    import os

    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe_holder(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "another harness run (it has not said which yet)"
    since = datetime.fromtimestamp(holder.get("since", 0)).strftime("%Y-%m-%d %H:%M")
    return (f"`{holder.get('command', 'harness run')}` (pid {holder.get('pid')} on host "
            f"{holder.get('host')}, since {since})")


#: A migration is SQL (may hold several statements) or a function given the connection,
#: for steps that need Python (e.g. rewriting JSON). It runs inside the migration's
#: transaction.
Migration = str | Callable[[duckdb.DuckDBPyConnection], None]

_SCHEMA_V1 = """
CREATE TABLE suites (
    suite_id TEXT PRIMARY KEY,
    name TEXT,
    path TEXT,
    description TEXT,
    text TEXT,
    first_seen TIMESTAMP,
    last_run TIMESTAMP
);
CREATE TABLE runs (
    run_key TEXT PRIMARY KEY,
    suite_id TEXT,
    scenario TEXT,
    model TEXT,
    model_config JSON,
    task TEXT,
    task_params JSON,
    method TEXT,
    method_version TEXT,
    method_plugin TEXT,
    params JSON,
    seed INTEGER,
    device TEXT,
    hardware TEXT,
    config JSON,
    status TEXT,
    error TEXT,
    traceback TEXT,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    wall_s DOUBLE,
    env_id TEXT,
    harness_version TEXT
);
CREATE TABLE suite_runs (
    suite_id TEXT,
    run_key TEXT,
    PRIMARY KEY (suite_id, run_key)
);
CREATE TABLE metrics (
    run_key TEXT,
    phase TEXT,
    metric TEXT,
    stat TEXT,
    value DOUBLE,
    unit TEXT,
    reason TEXT,
    higher_is_better BOOLEAN
);
CREATE TABLE samples (
    run_key TEXT,
    phase TEXT,
    metric TEXT,
    unit TEXT,
    "values" DOUBLE[]
);
CREATE TABLE environments (
    env_id TEXT PRIMARY KEY,
    hostname TEXT,
    platform TEXT,
    python TEXT,
    cpu TEXT,
    cpu_count INTEGER,
    ram_bytes BIGINT,
    gpu TEXT,
    gpu_count INTEGER,
    gpu_memory_bytes BIGINT,
    driver TEXT,
    cuda TEXT,
    torch TEXT,
    transformers TEXT,
    harness_version TEXT,
    git_sha TEXT,
    details JSON
);
CREATE INDEX metrics_run_key ON metrics (run_key);
CREATE INDEX samples_run_key ON samples (run_key);
"""

# v2: what each scenario declares about its leaderboard columns (harness.columns), kept with
# the results so a site shows them without loading the scenario's plugin.
_SCENARIO_COLUMNS_V2 = """
CREATE TABLE scenario_columns (
    scenario TEXT PRIMARY KEY,
    columns JSON,
    recorded_at TIMESTAMP
);
"""


def _rekey_without_validity_settings(con: duckdb.DuckDBPyConnection) -> None:
    """v3: run keys stop hashing the measure settings that only decide validity.

    ``max_cv`` (deprecated) and ``rel_precision`` change no measurement, only its verdict,
    so a stored run keyed with them is re-keyed from its stored config without them: a
    suite run again resumes instead of measuring everything anew. Runs whose configs now
    coincide (they differed only in ``max_cv``) keep the latest finished one.
    """
    dropped = ("max_cv", "rel_precision")
    moves: dict[str, tuple[str, str]] = {}
    latest: dict[str, tuple[Any, str]] = {}
    for key, text, finished in con.execute(
        "SELECT run_key, CAST(config AS VARCHAR), finished_at FROM runs"
    ).fetchall():
        config = json.loads(text) if text else None
        measure = config.get("measure") if isinstance(config, dict) else None
        if not isinstance(measure, dict) or not set(measure) & set(dropped):
            continue
        config["measure"] = {k: v for k, v in measure.items() if k not in dropped}
        new_key = config_key(config)
        moves[key] = (new_key, canonical_json(config))
        rank = (finished is not None, finished or datetime.min, key)
        if new_key not in latest or rank > latest[new_key][0]:
            latest[new_key] = (rank, key)
    if not moves:
        return
    keep = {old for _, old in latest.values()}
    con.execute("CREATE TEMP TABLE rekey (old TEXT, new TEXT, config JSON, keep BOOLEAN)")
    con.executemany("INSERT INTO rekey VALUES (?, ?, ?, ?)",
                    [(old, new, config, old in keep) for old, (new, config) in moves.items()])
    # Rows are moved by insert-then-delete: DuckDB does not update indexed key columns.
    con.execute("INSERT INTO runs SELECT r.* REPLACE (k.new AS run_key, k.config AS config) "
                "FROM runs AS r JOIN rekey AS k ON r.run_key = k.old WHERE k.keep")
    for table in ("metrics", "samples"):
        con.execute(f"INSERT INTO {table} SELECT t.* REPLACE (k.new AS run_key) "
                    f"FROM {table} AS t JOIN rekey AS k ON t.run_key = k.old WHERE k.keep")
    con.execute("INSERT INTO suite_runs SELECT DISTINCT s.suite_id, k.new FROM suite_runs AS s "
                "JOIN rekey AS k ON s.run_key = k.old ON CONFLICT DO NOTHING")
    for table in ("runs", "metrics", "samples", "suite_runs"):
        con.execute(f"DELETE FROM {table} WHERE run_key IN (SELECT old FROM rekey)")
    con.execute("DROP TABLE rekey")


# v4: the suite's leaderboard layout (harness.layout: roles and pivot views), kept with it.
_SUITE_LAYOUT_V4 = "ALTER TABLE suites ADD COLUMN layout JSON"

#: ``MIGRATIONS[i]`` upgrades a file from schema version ``i`` to ``i + 1``; the code's
#: version is ``len(MIGRATIONS)``. Append new steps; never edit a released one.
MIGRATIONS: list[Migration] = [
    _SCHEMA_V1, _SCENARIO_COLUMNS_V2, _rekey_without_validity_settings, _SUITE_LAYOUT_V4,
]

_RUN_COLUMNS = (
    "run_key", "scenario", "model", "model_config", "task", "task_params", "method",
    "method_version", "method_plugin", "params", "seed", "device", "hardware", "config",
    "harness_version",
)  # fmt: skip
_REQUIRED_RUN = ("run_key", "scenario", "model", "task", "method", "seed")
_JSON_RUN_COLUMNS = frozenset({"model_config", "task_params", "params", "config"})
_ENV_COLUMNS = (
    "hostname", "platform", "python", "cpu", "cpu_count", "ram_bytes", "gpu", "gpu_count",
    "gpu_memory_bytes", "driver", "cuda", "torch", "transformers", "harness_version",
    "git_sha",
)  # fmt: skip

_METRICS_SCHEMA = pa.schema(
    [
        ("run_key", pa.string()),
        ("phase", pa.string()),
        ("metric", pa.string()),
        ("stat", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("reason", pa.string()),
        ("higher_is_better", pa.bool_()),
    ]
)
_SAMPLES_SCHEMA = pa.schema(
    [
        ("run_key", pa.string()),
        ("phase", pa.string()),
        ("metric", pa.string()),
        ("unit", pa.string()),
        ("values", pa.list_(pa.float64())),
    ]
)

# Another process (a report, ``harness query``) may hold the file for a moment; wait up
# to about two seconds in total before giving up.
_LOCK_ATTEMPTS = 8
_LOCK_BACKOFF_S = 0.05
_LOCK_BACKOFF_MAX_S = 0.5


def suite_id_for(name: str, text: str) -> str:
    """The id of a suite: the same name and YAML source always map to the same row."""
    return hashlib.sha256(f"{name}\0{text}".encode()).hexdigest()[:16]


def _json_or_none(value: Any) -> str | None:
    """A JSON column's text: canonical JSON, a value it can't hold kept as its ``str``."""
    return None if value is None else canonical_json(value, default=str)


def _utc(epoch_s: float | None) -> datetime | None:
    """Epoch seconds as a naive UTC timestamp (TIMESTAMP columns hold UTC, no zone)."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, timezone.utc).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _open(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds DuckDB's file lock."""
    delay = _LOCK_BACKOFF_S
    attempt = 1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise StoreError(f"cannot open store {path}: {_first_line(exc)}") from exc
            if attempt == _LOCK_ATTEMPTS:
                raise StoreError(
                    f"store {path} is locked by another process (tried {attempt} times): "
                    f"{_first_line(exc)}"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, _LOCK_BACKOFF_MAX_S)
        attempt += 1


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


def _migrate(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Bring the file to ``len(MIGRATIONS)``; refuse a file written by a newer harness."""
    target = len(MIGRATIONS)
    with _transaction(con):
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)"
        )
        (current,) = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        if current > target:
            raise StoreError(
                f"store {path} has schema version {current}, but this harness only knows up "
                f"to version {target}; upgrade harness to open it"
            )
        for version in range(current + 1, target + 1):
            step = MIGRATIONS[version - 1]
            try:
                if isinstance(step, str):
                    con.execute(step)
                else:
                    step(con)
            except duckdb.Error as exc:
                raise StoreError(
                    f"migrating store {path} to schema version {version} failed (nothing was "
                    f"changed): {_first_line(exc)}"
                ) from exc
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])


class Store:
    """The writer side of a store file; creates or migrates it on construction.

    No connection is kept between calls (see the module docstring), so a ``Store`` is cheap
    to hold for a whole suite while readers come and go.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            _migrate(con, self.path)

    @contextlib.contextmanager
    def _connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = _open(self.path, read_only=read_only)
        try:
            yield con
        finally:
            con.close()

    def record_suite(self, name: str, path: str, description: str, text: str,
                     layout: str | None = None) -> str:
        """Upsert a suite by its id (name + YAML source) and mark it run now.

        ``layout`` is its leaderboard layout (:meth:`harness.layout.Layout.to_json`); the
        latest replaces an earlier one (a plugin may have changed a method's role), but the
        roles of runs it no longer has are kept: a plugin that re-keys a reference's or
        bound's runs leaves the old ones in the store, and they stay pinned, never ranked."""
        suite_id = suite_id_for(name, text)
        now = _now()
        with self._connect() as con:
            if layout is not None:
                (earlier,) = con.execute(
                    "SELECT CAST(layout AS VARCHAR) FROM suites WHERE suite_id = ?", [suite_id]
                ).fetchone() or (None,)
                if earlier:
                    layout = Layout.from_json(layout).over(Layout.from_json(earlier)).to_json()
            con.execute(
                """
                INSERT INTO suites VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (suite_id) DO UPDATE SET
                    path = excluded.path,
                    description = excluded.description,
                    last_run = excluded.last_run,
                    layout = excluded.layout
                """,
                [suite_id, name, path, description, text, now, now, layout],
            )
        return suite_id

    def record_columns(self, scenario: str, columns_json: str) -> None:
        """Keep what ``scenario`` declares about its leaderboard columns (its
        ``ResultColumns.to_json()``); the latest declaration replaces an earlier one."""
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO scenario_columns VALUES (?, ?, ?)",
                [scenario, columns_json, _now()],
            )

    def record_environment(self, env: Mapping[str, Any]) -> str:
        """Store a machine description once; its id is a hash of its canonical JSON.

        Known keys fill the columns of the same name so reports can filter on them; the
        whole mapping is kept in ``details`` so nothing a probe found is lost.
        """
        details = canonical_json(env, default=str)
        env_id = hashlib.sha256(details.encode()).hexdigest()[:16]
        columns = ", ".join(_ENV_COLUMNS)
        marks = ", ".join("?" for _ in range(len(_ENV_COLUMNS) + 2))
        with self._connect() as con:
            con.execute(
                f"INSERT INTO environments (env_id, {columns}, details) VALUES ({marks}) "
                "ON CONFLICT (env_id) DO NOTHING",
                [env_id, *(env.get(c) for c in _ENV_COLUMNS), details],
            )
        return env_id

    def commit_run(self, suite_id: str, run: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Store one finished run atomically, replacing any earlier result for its key.

        A rerun must not leave the old run's metrics behind, and a reader must never see a
        run row without its metrics, so everything happens in one transaction.
        """
        missing = [c for c in _REQUIRED_RUN if run.get(c) is None]
        if missing:
            raise ValueError(f"run lacks required fields: {', '.join(missing)}")
        status = result.get("status")
        if status not in STATUSES:
            raise ValueError(f"run {run['run_key']}: status {status!r} is not one of {STATUSES}")
        run_key = run["run_key"]
        row = {
            c: _json_or_none(run.get(c)) if c in _JSON_RUN_COLUMNS else run.get(c)
            for c in _RUN_COLUMNS
        }
        row.update(
            suite_id=suite_id,
            status=status,
            error=result.get("error"),
            traceback=result.get("traceback"),
            started_at=_utc(result.get("started_at")),
            finished_at=_utc(result.get("finished_at")),
            wall_s=result.get("wall_s"),
            env_id=result.get("env_id"),
        )
        metrics = pa.Table.from_pylist(
            [
                {
                    "run_key": run_key,
                    "phase": m["phase"],
                    "metric": m["metric"],
                    "stat": m.get("stat", "value"),
                    "value": m["value"],
                    "unit": m["unit"],
                    "reason": m.get("reason"),
                    "higher_is_better": m.get("higher_is_better"),
                }
                for m in result.get("metrics", ())
            ],
            schema=_METRICS_SCHEMA,
        )
        samples = pa.Table.from_pylist(
            [
                {
                    "run_key": run_key,
                    "phase": s["phase"],
                    "metric": s["metric"],
                    "unit": s["unit"],
                    "values": list(s["values"]),
                }
                for s in result.get("samples", ())
            ],
            schema=_SAMPLES_SCHEMA,
        )
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._connect() as con, _transaction(con):
            con.execute(
                f"INSERT OR REPLACE INTO runs ({columns}) VALUES ({marks})", list(row.values())
            )
            con.execute("DELETE FROM metrics WHERE run_key = ?", [run_key])
            con.execute("DELETE FROM samples WHERE run_key = ?", [run_key])
            con.register("metrics_in", metrics)
            con.register("samples_in", samples)
            con.execute(
                "INSERT INTO metrics SELECT run_key, phase, metric, stat, value, unit, reason, "
                "higher_is_better FROM metrics_in"
            )
            con.execute(
                'INSERT INTO samples SELECT run_key, phase, metric, unit, "values" FROM samples_in'
            )
            con.execute(
                "INSERT INTO suite_runs VALUES (?, ?) ON CONFLICT DO NOTHING", [suite_id, run_key]
            )

    def statuses(self, run_keys: Iterable[str] | None = None) -> dict[str, str]:
        """Current status per stored run key (all, or only ``run_keys``); for resume/skip."""
        with self._connect(read_only=True) as con:
            if run_keys is None:
                rows = con.execute("SELECT run_key, status FROM runs").fetchall()
            else:
                rows = con.execute(
                    "SELECT run_key, status FROM runs WHERE list_contains(?, run_key)",
                    [list(run_keys)],
                ).fetchall()
        return dict(rows)


def connect_readonly(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection for reports and queries; the caller closes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path} (run a suite first, or pass --db)")
    con = _open(path, read_only=True)
    try:
        (version,) = con.execute("SELECT coalesce(max(version), 0) FROM schema_version"
                                 ).fetchone()
    except duckdb.Error:
        version = 0  # no schema table yet: an empty or foreign database, read as it is
    if version > len(MIGRATIONS):
        con.close()
        raise StoreError(f"store {path} has schema version {version}, but this harness only "
                         f"knows up to version {len(MIGRATIONS)}; upgrade harness to read it")
    return con


def query(path: str | Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` read-only and return ``(column names, rows)``.

    DuckDB refuses writes on a read-only connection; that refusal becomes a
    ``ReadOnlyError`` saying why, and any other SQL error a ``StoreError``.
    """
    con = connect_readonly(path)
    try:
        try:
            cursor = con.execute(sql)
        except duckdb.Error as exc:
            if "read-only" in str(exc):
                raise ReadOnlyError(
                    "harness query opens the store read-only; statements that write are "
                    f"refused: {_first_line(exc)}"
                ) from exc
            raise StoreError(f"query on {path} failed: {_first_line(exc)}") from exc
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()
    finally:
        con.close()


def export_parquet(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every table of the store as ``<out_dir>/<table>.parquet``; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = connect_readonly(path)
    try:
        tables = [
            name
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "ORDER BY table_name"
            ).fetchall()
        ]
        files = []
        for table in tables:
            target = out / f"{table}.parquet"
            literal = str(target).replace("'", "''")
            con.execute(f"COPY \"{table}\" TO '{literal}' (FORMAT parquet)")
            files.append(target)
        return files
    finally:
        con.close()
