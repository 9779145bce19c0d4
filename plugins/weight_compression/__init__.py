"""Weight compression: methods that change how a model *stores* its weights.

Baselines of the weight-only quantization and pruning literature, for the ``perplexity``
scenario, which asks each method to ``apply`` itself to a model and to say how many bytes
the transformed weights take (``storage_bytes``):

* ``dense`` — no change; the reference for quality and bytes;
* ``rtn`` — round-to-nearest group quantization (the RTN baseline of GPTQ and AWQ);
* ``magnitude`` — unstructured magnitude pruning (the baseline of SparseGPT and Wanda).

Both compressors are simulated (dequantized values, explicit zeros), so they show the
quality/storage trade-off honestly and, equally honestly, no speed-up.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .dense import Dense
from .magnitude import Magnitude
from .rtn import RTN

__all__ = ["RTN", "Dense", "Magnitude", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [Dense(), RTN(), Magnitude()]
