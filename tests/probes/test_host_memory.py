"""Host RAM probe: own allocations, children's memory, and failure as a null with reason."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.api import Recorder
from harness.probes.host_memory import HostMemoryProbe

MiB = 2**20


def _row(rec: Recorder, metric: str):
    (row,) = [r for r in rec.metrics if r.metric == metric]
    return row


def test_sees_own_allocation() -> None:
    rec = Recorder()
    with HostMemoryProbe().measure("load", rec):
        buf = bytearray(200 * MiB)  # zero-filled: every page is touched
        time.sleep(0.05)
        del buf
    start = rec.value("load", "host_rss_start")
    peak = rec.value("load", "host_rss_peak", stat="max")
    assert start is not None and peak is not None
    assert peak >= start + 190 * MiB
    assert _row(rec, "host_rss_peak").unit == "bytes"


def test_sees_child_process_memory() -> None:
    code = "import time; b = bytearray(150 * 2**20); print('ready', flush=True); time.sleep(30)"
    rec = Recorder()
    child = None
    try:
        with HostMemoryProbe().measure("train", rec):
            child = subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.2)  # a few sampler ticks while the child holds its memory
    finally:
        if child is not None:
            child.kill()
            child.wait()
    start = rec.value("train", "host_rss_start")
    peak = rec.value("train", "host_rss_peak", stat="max")
    assert start is not None and peak is not None
    assert peak >= start + 140 * MiB


def test_records_even_when_the_phase_raises() -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"), HostMemoryProbe().measure("eval", rec):
        raise RuntimeError("boom")
    assert rec.value("eval", "host_rss_peak", stat="max") is not None


def test_psutil_failure_is_a_null_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise psutil.AccessDenied(0)

    monkeypatch.setattr(psutil, "Process", broken)
    rec = Recorder()
    with HostMemoryProbe().measure("load", rec):
        pass
    assert {r.metric for r in rec.metrics} == {"host_rss_start", "host_rss_peak"}
    for row in rec.metrics:
        assert row.value is None
        assert row.reason and row.reason.startswith("psutil failed")
    assert _row(rec, "host_rss_peak").stat == "max"


def test_default_probes_follow_the_probe_protocol_and_import_lightly() -> None:
    from harness.api import Probe
    from harness.probes import default_probes

    probes = default_probes("cpu")
    assert [p.name for p in probes] == ["host_memory", "host_load", "cuda_memory", "nvml"]
    assert all(isinstance(p, Probe) for p in probes)
    code = (
        "import sys, harness.probes; "
        "print(sorted(m for m in ('torch', 'pynvml', 'numpy') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
