"""Achieved bandwidth and its share of the worker's measured peak."""

from __future__ import annotations

import pytest
import torch

from harness.api import Recorder
from harness.probes import bandwidth
from harness.probes.bandwidth import peak_bandwidth, record_bandwidth, weight_bytes_per_token


def test_the_cpu_peak_is_a_plausible_memory_bandwidth() -> None:
    peaks = peak_bandwidth("cpu")
    assert set(peaks) == {"memory"}  # no host-to-device link without a GPU
    assert 1e8 < peaks["memory"] < 1e13  # between 100 MB/s and 10 TB/s


def test_bytes_moved_become_bandwidth_and_a_share_of_peak(monkeypatch) -> None:
    monkeypatch.setattr(bandwidth, "peak_bandwidth", lambda device: {"memory": 10e9})
    recorder = Recorder()
    recorder.record("decode", "latency", 2.0, "ms", stat="median")
    recorder.record("decode", "bytes_moved", 5e6, "bytes", stat="memory")
    recorder.record("decode", "bytes_moved", 1e6, "bytes", stat="h2d")
    record_bandwidth(recorder, "cpu")
    assert recorder.value("decode", "bandwidth", "memory") == pytest.approx(2.5e9)  # 5 MB/2 ms
    assert recorder.value("decode", "bandwidth_share", "memory") == pytest.approx(25.0)
    assert recorder.value("baseline", "peak_bandwidth", "memory") == 10e9
    [h2d] = [r for r in recorder.metrics if (r.metric, r.stat) == ("bandwidth_share", "h2d")]
    assert h2d.value is None and h2d.reason == "no h2d link on cpu"


def test_no_bytes_moved_no_measurement(monkeypatch) -> None:
    monkeypatch.setattr(bandwidth, "peak_bandwidth", lambda device: pytest.fail("measured"))
    recorder = Recorder()
    recorder.record("decode", "latency", 2.0, "ms", stat="median")
    record_bandwidth(recorder, "cpu")
    assert len(recorder.metrics) == 1


def test_a_phase_without_latency_says_so(monkeypatch) -> None:
    monkeypatch.setattr(bandwidth, "peak_bandwidth", lambda device: {"memory": 10e9})
    recorder = Recorder()
    recorder.record("train", "bytes_moved", 5e6, "bytes", stat="memory")
    record_bandwidth(recorder, "cpu")
    [row] = [r for r in recorder.metrics if r.metric == "bandwidth"]
    assert row.value is None and "no median latency" in row.reason


def test_a_decode_step_reads_every_weight_but_the_input_embedding_table() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    untied = LlamaForCausalLM(config)
    every = sum(p.numel() * p.element_size() for p in untied.parameters())
    assert weight_bytes_per_token(untied) == every - 100 * 16 * 4
    tied = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "tie_word_embeddings": True}))
    assert weight_bytes_per_token(tied) == sum(
        p.numel() * p.element_size() for p in tied.parameters())  # the table is the output
    assert torch.is_tensor(tied.get_input_embeddings().weight)
