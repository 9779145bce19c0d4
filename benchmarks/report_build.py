"""Leaderboard build time on a large store: 100,000 runs must build in < 30 s, index < 2 MB.

Writes a synthetic store straight into the real schema (``harness.store.Store`` creates
it; DuckDB SQL fills it, because committing 100k runs one by one would take longer than the
thing measured): 2 suites × 4 tasks × 2 hardware groups × 2 models × N method/params
configurations × 5 seeds, about 17 metric rows per run (quality, latency statistics,
throughput, memory peaks per phase, energy, parameter and storage counts; nulls with a
reason on the CPU group as the real probes write them), 20 raw latency samples per run,
and every status (mostly ok). Then times ``harness.report.build_site`` on it.

    python benchmarks/report_build.py [--runs 100000] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from harness.report import build_site
from harness.store import Store

TARGET_SECONDS = 30.0
TARGET_INDEX_BYTES = 2 * 2**20
SEEDS, MODELS, HARDWARE, TASKS, SUITES = 5, 2, 2, 4, 2

# (phase, metric, stat, unit, value SQL, reason SQL, higher_is_better SQL)
METRICS = [
    ("eval", "perplexity", "value", "", "ppl", "NULL", "false"),
    ("forward", "latency", "median", "ms", "lat", "NULL", "NULL"),
    ("forward", "latency", "iqr", "ms", "lat * 0.08", "NULL", "NULL"),
    ("forward", "latency", "p10", "ms", "lat * 0.95", "NULL", "NULL"),
    ("forward", "latency", "p90", "ms", "lat * 1.07", "NULL", "NULL"),
    ("forward", "latency", "cold", "ms", "lat * 3", "NULL", "NULL"),
    ("forward", "latency", "n", "count", "20", "NULL", "NULL"),
    ("forward", "throughput", "median", "token/s", "1024 / (lat / 1000)", "NULL", "NULL"),
    ("load", "host_rss_peak", "max", "bytes", "host * 0.9", "NULL", "NULL"),
    ("forward", "host_rss_peak", "max", "bytes", "host", "NULL", "NULL"),
    ("load", "cuda_allocated_peak", "max", "bytes", "CASE WHEN gpu THEN vram * 0.8 END",
     "CASE WHEN NOT gpu THEN 'device is cpu: no CUDA allocator' END", "NULL"),
    ("forward", "cuda_allocated_peak", "max", "bytes", "CASE WHEN gpu THEN vram END",
     "CASE WHEN NOT gpu THEN 'device is cpu: no CUDA allocator' END", "NULL"),
    ("forward", "energy_per_item", "value", "J/token", "CASE WHEN gpu THEN lat * 0.2 END",
     "CASE WHEN NOT gpu THEN 'device is cpu: NVML measures CUDA devices only' END", "NULL"),
    ("model", "params_total", "value", "count", "124000000", "NULL", "NULL"),
    ("model", "params_trainable", "value", "count", "124000000 / (1 + cfg % 7)", "NULL",
     "NULL"),
    ("model", "storage_bytes", "value", "bytes", "248000000 / (1 + bits)", "NULL", "NULL"),
    ("forward", "seconds", "value", "s", "lat * 0.02", "NULL", "NULL"),
]


def generate(path: Path, runs: int) -> None:
    """Fill a fresh store at ``path`` with ``runs`` synthetic runs (DuckDB SQL only)."""
    Store(path)  # the real schema, migrations applied
    per_cfg = SEEDS * MODELS * HARDWARE * TASKS * SUITES
    configs = max(1, runs // per_cfg)
    con = duckdb.connect(str(path))
    try:
        con.execute("SELECT setseed(0.42)")
        con.execute("""
            INSERT INTO suites VALUES
              ('suite0', 'compression', 'suites/compression.yaml',
               'Weight compression at scale (synthetic benchmark data).',
               'name: compression', now(), now()),
              ('suite1', 'kv-cache', 'suites/kv-cache.yaml',
               'KV-cache methods at scale (synthetic benchmark data).',
               'name: kv-cache', now(), now())
        """)
        con.execute("""
            INSERT INTO environments (env_id, hostname, cpu, cpu_count, ram_bytes, gpu,
                                      gpu_count, gpu_memory_bytes, driver, cuda, torch)
            VALUES ('env-cpu', 'cpu-box', 'AMD EPYC', 2, 25000000000, NULL, 0, NULL, NULL,
                    NULL, '2.13.0+cpu'),
                   ('env-gpu', 'gpu-box', 'Intel Xeon', 16, 137000000000,
                    'NVIDIA H100 80GB HBM3', 1, 85000000000, '550.54', '12.4',
                    '2.13.0+cu124')
        """)
        con.execute(f"""
            CREATE TEMP TABLE gen AS
            SELECT i, md5(i::VARCHAR)[:16] AS run_key,
                   i % {SEEDS} AS seed,
                   (i // {SEEDS}) % {configs} AS cfg,
                   (i // ({SEEDS} * {configs})) % {MODELS} AS model_i,
                   (i // ({SEEDS} * {configs} * {MODELS})) % {HARDWARE} = 1 AS gpu,
                   (i // ({SEEDS} * {configs} * {MODELS} * {HARDWARE})) % {TASKS} AS task_i,
                   (i // ({SEEDS} * {configs} * {MODELS} * {HARDWARE} * {TASKS}))
                       % {SUITES} AS suite_i,
                   random() AS r
            FROM range({runs}) AS t(i)
        """)
        con.execute("""
            CREATE TEMP TABLE run AS
            SELECT *,
                   ['dense', 'rtn', 'magnitude', 'gptq', 'awq'][cfg % 5 + 1] AS method,
                   [2, 3, 4, 8, 16][(cfg // 5) % 5 + 1] AS bits,
                   [32, 64, 128, 256, 512][(cfg // 25) % 5 + 1] AS group_size,
                   5 + (5 - (cfg // 5) % 5) * 0.4 + model_i * 0.5 + r * 0.3 AS ppl,
                   (CASE WHEN gpu THEN 2 ELSE 60 END) * (1 + (cfg % 11) / 10) * (0.97 + r * 0.06)
                       AS lat,
                   (400 + cfg % 97) * 1048576.0 AS host,
                   (1024 + (cfg % 89) * 20) * 1048576.0 AS vram,
                   CASE WHEN r < 0.93 THEN 'ok' WHEN r < 0.965 THEN 'invalid'
                        WHEN r < 0.98 THEN 'oom' WHEN r < 0.99 THEN 'failed'
                        WHEN r < 0.995 THEN 'timeout' ELSE 'crashed' END AS status
            FROM gen
        """)
        con.execute("""
            INSERT INTO runs (run_key, suite_id, scenario, model, model_config, task,
                              task_params, method, method_version, method_plugin, params,
                              seed, device, hardware, config, status, error, traceback,
                              started_at, finished_at, wall_s, env_id, harness_version)
            SELECT run_key, 'suite' || suite_i, 'perplexity',
                   'builtin:model-' || model_i, json_object('ref', 'builtin:model-' || model_i),
                   'task-' || task_i, json_object('seq_len', 128),
                   method, '1', 'bench 0.1',
                   json_object('bits', bits, 'group_size', group_size, 'variant', cfg // 125),
                   seed, CASE WHEN gpu THEN 'cuda:0' ELSE 'cpu' END,
                   CASE WHEN gpu THEN 'gpu: NVIDIA H100 80GB HBM3' ELSE 'cpu: AMD EPYC x2' END,
                   json_object('method', json_object('name', method, 'params',
                               json_object('bits', bits, 'group_size', group_size)),
                               'seed', seed, 'task', 'task-' || task_i),
                   status,
                   CASE status WHEN 'invalid'
                                   THEN 'forward: median not within 5 % after 60.0 s: '
                                        || '95 % CI 6.10–7.90 ms (±13 %, n=812)'
                               WHEN 'oom' THEN 'CUDA out of memory. Tried to allocate 2.00 GiB'
                               WHEN 'failed' THEN 'RuntimeError: shape mismatch <1, 2>'
                               WHEN 'timeout' THEN 'timed out after 600 s'
                               WHEN 'crashed' THEN 'worker died: signal 11 (SIGSEGV)' END,
                   CASE WHEN status = 'failed' THEN 'Traceback (most recent call last):' || chr(10)
                        || '  File "run.py", line 1, in <module>' || chr(10)
                        || 'RuntimeError: shape mismatch <1, 2>' END,
                   TIMESTAMP '2026-01-01' + to_seconds(i * 7),
                   TIMESTAMP '2026-01-01' + to_seconds(i * 7 + 5), 5.0,
                   CASE WHEN gpu THEN 'env-gpu' ELSE 'env-cpu' END, '0.1.0'
            FROM run
        """)
        con.execute("INSERT INTO suite_runs SELECT 'suite' || suite_i, run_key FROM run")
        selects = [
            f"SELECT run_key, '{phase}', '{metric}', '{stat}', {value}, '{unit}', {reason}, "
            f"{hib} FROM run"
            for phase, metric, stat, unit, value, reason, hib in METRICS
        ]
        con.execute("INSERT INTO metrics " + " UNION ALL ".join(selects))
        con.execute("""
            INSERT INTO samples
            SELECT run_key, 'forward', 'latency', 'ms',
                   list(lat * (0.9 + ((k * 7919 + i) % 100) / 500) ORDER BY k)
            FROM run, range(20) AS s(k)
            GROUP BY run_key, i, lat
        """)
    finally:
        con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store and the site")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="harness-report-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db, site = folder / "bench.duckdb", folder / "site"
    db.unlink(missing_ok=True)
    try:
        start = time.perf_counter()
        generate(db, args.runs)
        with duckdb.connect(str(db), read_only=True) as con:
            runs, metrics = con.execute(
                "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics)"
            ).fetchone()
        print(f"store: {runs:,} runs, {metrics:,} metric rows, "
              f"{db.stat().st_size / 2**20:.0f} MiB, generated in "
              f"{time.perf_counter() - start:.1f} s")
        summary = build_site(db, site, title="report benchmark")
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(f"build: {summary.seconds:.1f} s (target < {TARGET_SECONDS:.0f} s)")
        print(f"pages: {summary.pages:,} ({summary.leaderboards} leaderboards, "
              f"{summary.run_pages:,} run pages, 1 index); site {size / 2**20:.0f} MiB")
        print(f"index: {summary.index_bytes:,} bytes (target < {TARGET_INDEX_BYTES:,})")
        ok = summary.seconds < TARGET_SECONDS and summary.index_bytes < TARGET_INDEX_BYTES
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
