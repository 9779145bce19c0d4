"""One contract every KV-cache method of the family meets, on the same prompts and model.

Each method needs an entry in the tables below (a test checks that), so a new method is
exercised as soon as it is registered: a fresh cache per call, the requested number of greedy
tokens, ``get_seq_length()`` = tokens seen, positive resident bytes below the full cache's
when compressing, ``full``'s exact tokens when its settings lose nothing, and ``Unsupported``
where it cannot run on CPU.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from harness_plugins.kvcache import harness_add_methods
from transformers.cache_utils import Cache

from harness.api import Method, Unsupported
from harness.scenarios.kv_protocol import GreedyDecoder, resident_kv_bytes

METHODS = {m.name: m for m in harness_add_methods()}
CPU_UNSUPPORTED = {"offload"}
#: Settings that keep every token's K/V exactly: greedy tokens must equal ``full``'s.
LOSSLESS: dict[str, list[dict[str, Any]]] = {
    "full": [{}],
    "kivi": [{"residual": 512}],
    "streaming": [{"sinks": 4, "window": 512}],
    "h2o": [{"heavy": 256, "recent": 256}],
    "specache": [
        {"bits": 16, "group_size": 16, "residual": 8},
        {"bits": 1, "group_size": 16, "residual": 8, "topk": 512},
    ],
}
#: Settings that keep less than the full cache on these prompts.
COMPRESSING: dict[str, list[dict[str, Any]]] = {
    "kivi": [
        {"bits": 2, "group_size": 16, "residual": 8},
        {"bits": 1, "group_size": 16, "residual": 0, "levels": "quartile"},
    ],
    "streaming": [{"sinks": 2, "window": 16}],
    "h2o": [{"heavy": 8, "recent": 8}],
    "specache": [
        {"bits": 1, "group_size": 16, "residual": 8, "topk": 4},
        {"bits": 2, "group_size": 16, "residual": 8, "topk": 4, "speculative": False},
    ],
}
#: (context tokens, question tokens): the question is fed after the prefilled context.
PROMPTS = [(48, 3), (75, 1), (33, 5)]
NEW_TOKENS = 6
RUNNABLE = sorted(set(METHODS) - CPU_UNSUPPORTED)


def cases(table: dict[str, list[dict[str, Any]]], label: str) -> list[Any]:
    return [
        pytest.param(name, settings, id=f"{name}-{label}{i}")
        for name, all_settings in table.items()
        for i, settings in enumerate(all_settings)
    ]


def generate(model, method, params: dict[str, Any], ctx, context_len: int, question_len: int):
    """Greedy tokens and the cache after them, through the method's decoder when it has one."""
    ids = torch.randint(
        0,
        128,
        (1, context_len + question_len),
        generator=torch.Generator().manual_seed(context_len),
    )
    cache = method.make_cache(model, params, ctx)
    make_decoder = getattr(method, "make_decoder", None)
    decoder = (
        make_decoder(model, cache, params, ctx) if make_decoder else GreedyDecoder(model, cache)
    )
    calls = []
    decoder.prefill(ids[:, :context_len])
    tokens = decoder.decode(ids[:, context_len:], NEW_TOKENS, lambda: calls.append(1))
    assert len(tokens) == len(calls) == NEW_TOKENS
    return tokens, cache


def test_every_method_has_conformance_settings() -> None:
    assert set(METHODS) == set(LOSSLESS) | CPU_UNSUPPORTED
    assert set(METHODS) - {"full"} - CPU_UNSUPPORTED == set(COMPRESSING)
    for method in METHODS.values():
        assert isinstance(method, Method)
        assert method.scenarios[0] == "generate"
        assert set(method.scenarios) <= {"generate", "lm_eval"}
        # lm-eval generates with transformers' generate: only a cache, not a decode loop.
        assert ("lm_eval" in method.scenarios) == (not hasattr(method, "make_decoder"))
        assert callable(method.make_cache)


def test_registering_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "from harness_plugins.kvcache import harness_add_methods\n"
        "harness_add_methods()\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(CPU_UNSUPPORTED))
def test_methods_that_need_a_gpu_say_so_on_cpu(name, tiny_llama, ctx) -> None:
    with pytest.raises(Unsupported):
        METHODS[name].make_cache(tiny_llama, {}, ctx)


@pytest.mark.parametrize("name", RUNNABLE)
def test_each_call_gets_a_fresh_cache(name, tiny_llama, ctx) -> None:
    first = METHODS[name].make_cache(tiny_llama, {}, ctx)
    second = METHODS[name].make_cache(tiny_llama, {}, ctx)
    assert isinstance(first, Cache) and isinstance(second, Cache)
    assert first is not second
    assert first.get_seq_length() == 0


@pytest.mark.parametrize(
    ("name", "params"),
    [pytest.param(name, {}, id=f"{name}-defaults") for name in RUNNABLE]
    + cases(COMPRESSING, "compressing")
    + cases(LOSSLESS, "lossless"),
)
def test_generation_counts_seen_tokens_and_resident_bytes(name, params, tiny_llama, ctx) -> None:
    for context_len, question_len in PROMPTS:
        _, cache = generate(tiny_llama, METHODS[name], params, ctx, context_len, question_len)
        # Every token fed is seen; the last generated one is not fed.
        assert cache.get_seq_length() == context_len + question_len + NEW_TOKENS - 1
        assert resident_kv_bytes(cache, "cpu") > 0


@pytest.mark.parametrize(("name", "params"), cases(LOSSLESS, "lossless"))
def test_lossless_settings_reproduce_full(name, params, tiny_llama, ctx) -> None:
    for context_len, question_len in PROMPTS:
        want, _ = generate(tiny_llama, METHODS["full"], {}, ctx, context_len, question_len)
        got, _ = generate(tiny_llama, METHODS[name], params, ctx, context_len, question_len)
        assert got == want


@pytest.mark.parametrize(("name", "params"), cases(COMPRESSING, "compressing"))
def test_compressing_settings_keep_fewer_bytes_than_full(name, params, tiny_llama, ctx) -> None:
    for context_len, question_len in PROMPTS:
        _, full = generate(tiny_llama, METHODS["full"], {}, ctx, context_len, question_len)
        _, cache = generate(tiny_llama, METHODS[name], params, ctx, context_len, question_len)
        assert 0 < resident_kv_bytes(cache, "cpu") < resident_kv_bytes(full, "cpu")
