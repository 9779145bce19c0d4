"""``mole``: Mixture of Lookup Experts (Jie et al., ICML 2025), as the official code does it.

Training form (:class:`~.modeling.MoLEForCausalLM`): a Llama decoder whose every layer's FFN
output is ``mlp(x) + Σ_j softmax(router(x))_j · FFN_j(RMSNorm_ℓ(e))`` — ``x`` the
post-attention-normed state (what ``LlamaMLP`` receives), ``e`` the raw embedding of the
token (shared by all layers), a dense softmax over all ``experts`` routed experts of hidden
``expert_hidden`` (default the shared FFN's), the shared FFN's gated activation, no
auxiliary loss. The model's ``forward`` embeds the step's ``input_ids`` itself, stashes the
embeddings for the layers and hands them to Llama as ``inputs_embeds``, so incremental
decode with a cache gives the experts the current tokens only.

Inference form (:class:`~.modeling.MoLELookupForCausalLM`): re-parameterised — the routed
experts become one table ``LUT[v] = [FFN_j^ℓ(RMSNorm_ℓ(E[v]))]_{ℓ,j}`` of shape
``[V, L·N·d]`` stored as ``lut_dtype`` (fp32/fp16/bf16, or quantized after training as the
paper's post-training LUT quantization does: bitsandbytes' blockwise int8 or NF4, one fp32
absmax per ``lut_block`` values), kept in host memory (pinned with CUDA; ``lut_device:
host``) or on the device. Each forward gathers the step's rows once and (CUDA, host table)
copies them non-blocking from pinned staging buffers on a side stream, decoding them there,
the layers waiting on its event; layer ℓ adds ``Σ_j g_j · LUT_ℓ[id, j]``. The router still
runs on the contextual state. Costs: ``device_bytes`` the shared weights (plus the table
when on the device), ``host_bytes`` the table when on host (``V`` × row bytes; a row is
``L·N·d`` × element size, or for int8/nf4 its codes plus scales), counter ``h2d_bytes`` =
``B·T`` × row bytes per forward when the table is on host (on a CPU-only run: the bytes that
would cross PCIe; nothing is copied). Figures: the stored table's relative RMS and max
error against the fp32 expert outputs; the scenario scores held-out loss in this form too.
The table's storage params (``lut_*``) do not change the trained model (``trained_as``).

``active_params``: the parameters that compute for a token at inference — the total
minus the routed experts and their input norms (which the lookup table replaces), for
either form; it equals the inference model's parameter count (dense model + routers). The
training form computes every expert for every token; that is its total.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from harness.api import RunContext
from harness.scenarios.lm_train_protocol import LMTrainParams

__all__ = ["MoLE", "MoLEParams"]


class MoLEParams(LMTrainParams):
    """Routed experts, their width and where the inference form's lookup table lives."""

    experts: int = Field(4, ge=1, description="routed experts per layer (N)")
    expert_hidden: int | None = Field(
        None, ge=1, description="routed experts' FFN width (None: the shared FFN's)"
    )
    lut_dtype: Literal["float32", "float16", "bfloat16", "int8", "nf4"] = Field(
        "float16",
        description="how the lookup table is stored: a float dtype, or quantized after "
        "training by bitsandbytes (int8: blockwise 8-bit, nf4: 4-bit NormalFloat)",
    )
    lut_block: int = Field(
        128, description="int8/nf4: values sharing one absmax scale (a power of two, 64-4096)"
    )
    lut_device: Literal["host", "device"] = Field(
        "host", description="host: table in (pinned) host memory, rows copied per step"
    )

    @field_validator("lut_block")
    @classmethod
    def _power_of_two(cls, block: int) -> int:
        if block < 64 or block > 4096 or block & (block - 1):
            raise ValueError(f"lut_block must be a power of two from 64 to 4096, not {block}")
        return block


#: Params that only change the inference form: runs differing in them share a trained model.
INFERENCE_ONLY = frozenset({"lut_dtype", "lut_block", "lut_device"})


class MoLE:
    """MoLE: embedding-input routed experts, re-parameterised to a lookup table."""

    name = "mole"
    version = "1"
    description = (
        "Mixture of Lookup Experts: routed FFNs on the token embedding, trained densely, "
        "re-parameterised to a [V, L·N·d] lookup table in host memory at inference"
    )
    scenarios = ("lm_train", "lm_eval")
    params = MoLEParams

    def build(self, config: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        from .modeling import MoLEForCausalLM, as_llama

        p = MoLEParams(**params)
        model = MoLEForCausalLM(as_llama(config), p.experts, p.expert_hidden)
        return model.to(ctx.device).train()

    def inference(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        from .lookup import codec
        from .modeling import MoLELookupForCausalLM

        p = MoLEParams(**params)
        return MoLELookupForCausalLM.from_trained(
            model, codec(p.lut_dtype, p.lut_block), p.lut_device
        )

    def trained_as(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trained model does not depend on how its table is stored or where."""
        kept = {k: v for k, v in params.items() if k not in INFERENCE_ONLY}
        return {"name": self.name, "version": self.version, "params": kept}

    def active_params(self, model: Any, params: Mapping[str, Any]) -> int:
        total = sum(p.numel() for p in model.parameters())
        routed = getattr(model, "routed_expert_params", None)
        return total - routed() if routed is not None else total
