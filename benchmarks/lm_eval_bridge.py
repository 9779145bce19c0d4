"""The lm_eval bridge's overhead (issue 12): ``simple_evaluate`` through harness's
``HarnessLM`` against lm-eval's plain ``HFLM``, same model, tasks and settings.

Loads ``builtin:tiny-byte-lm`` once (training it on first use), then alternates the two
model classes ``--repeats`` times in this process (plain first, then bridge, then plain…, so
drift of the machine's speed hits both alike), each a full ``simple_evaluate`` of the
project's offline tasks. Prints each pass's wall time, the medians, the bridge's overhead
as a share of lm-eval alone (target: at most 5 %, PASS/FAIL; exit status 1 on FAIL), and
whether every score was identical in every pass.

    python benchmarks/lm_eval_bridge.py [--limit 200] [--batch-size 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

TASKS = ["stdlib_next_line", "stdlib_next_chars"]
TARGET = 0.05


def _scores(results: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {
        (task, key): value
        for task, metrics in results["results"].items()
        for key, value in metrics.items()
        if isinstance(value, float)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import logging

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from harness.models import cache_dir
    from harness.models.sources import load_pretrained_tokenizer
    from harness.models.tiny_byte_lm import TinyByteLM
    from harness.scenarios.lm_eval import task_manager
    from harness.scenarios.lm_eval_bridge import HarnessLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM

    path = TinyByteLM().prepare(cache_dir())
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = load_pretrained_tokenizer(path)
    manager = task_manager(TASKS, None)

    def evaluate(lm: Any) -> tuple[float, dict[tuple[str, str], float]]:
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=TASKS, limit=args.limit, task_manager=manager, log_samples=False,
            bootstrap_iters=1000,
        )  # fmt: skip
        return time.perf_counter() - started, _scores(results)

    makers = {
        "lm-eval alone": lambda: HFLM(pretrained=model, tokenizer=tokenizer,
                                      batch_size=args.batch_size, add_bos_token=False),
        "harness bridge": lambda: HarnessLM(model, tokenizer, batch_size=args.batch_size,
                                            add_bos_token=False),
    }  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in makers}
    scores: list[dict[tuple[str, str], float]] = []
    evaluate(makers["lm-eval alone"]())  # warm-up: imports, task building, caches
    for i in range(args.repeats):
        for name, make in makers.items():
            wall, got = evaluate(make())
            walls[name].append(wall)
            scores.append(got)
            print(f"pass {i + 1} {name:>15}: {wall:7.2f} s")
    alone = statistics.median(walls["lm-eval alone"])
    bridge = statistics.median(walls["harness bridge"])
    overhead = bridge / alone - 1
    identical = all(s == scores[0] for s in scores)
    print(f"median: lm-eval alone {alone:.2f} s, bridge {bridge:.2f} s, "
          f"overhead {overhead * 100:+.1f} % (target ≤ {TARGET * 100:.0f} %)")  # fmt: skip
    print(f"scores identical in every pass: {identical}")
    ok = overhead <= TARGET and identical
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
