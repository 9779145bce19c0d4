"""Connecting a frozen vision encoder to a frozen LM, for the ``vqa`` scenario.

* ``memvp`` — Memory-space Visual Prompting (Jie et al., ICML 2024): projected visual
  features join the key-value memory of every FFN of the LM, so the text sequence stays short;
* ``prefix`` — input-space prompting (LLaVA-style): projected visual tokens prepended to the
  LM's input, with LoRA on the LM through PEFT;
* ``text-only`` — the same LoRA training without the image: what the question alone gives.

Registering imports neither torch nor transformers: the modules do, on first use.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .input_space import Prefix, TextOnly
from .memvp import MemVP

__all__ = ["MemVP", "Prefix", "TextOnly", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [MemVP(), Prefix(), TextOnly()]
