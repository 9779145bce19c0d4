from __future__ import annotations

import subprocess
import sys

from harness import builtin


def test_registers_the_core_components() -> None:
    assert [s.name for s in builtin.harness_add_scenarios()] == [
        "perplexity", "generate", "adapt", "continual", "lm_train", "lm_eval", "merge",
        "vqa",
    ]  # fmt: skip
    assert [t.name for t in builtin.harness_add_tasks()] == [
        "stdlib-text", "needle", "passkey", "kv-recall", "decode-throughput",
        "digits-shift", "shapes-count", "shapes-position", "shapes-orientation", "image-folder",
        "hf-images",
        "split-digits", "split-shapes", "split-images", "stdlib-lm", "lm_eval",
        "digits-merge", "shapes-count-merge", "digit-grid-vqa",
    ]  # fmt: skip
    assert [m.name for m in builtin.harness_add_models()] == [
        "tiny-byte-lm", "tiny-llama-retrieval", "tiny-llama-vqa", "tiny-vit", "tiny-vit-p4",
    ]  # fmt: skip
    sources = [s.name for s in builtin.harness_add_model_sources()]
    assert sources == ["hf", "hf-config", "builtin"]
    assert builtin.harness_add_probes(device="cpu")


def test_importing_and_registering_needs_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "from harness import builtin\n"
        "for hook in (builtin.harness_add_scenarios, builtin.harness_add_tasks,\n"
        "             builtin.harness_add_models, builtin.harness_add_model_sources):\n"
        "    hook()\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
