"""``prefix`` and ``text-only``: input-space prompting and the prior it must beat.

``prefix`` (LLaVA-style): the encoder's patch features, projected to the LM's width
(``Linear → GELU → Linear``), are prepended to the LM's input as ``visual_tokens`` extra
positions, and the LM is tuned with LoRA on ``q_proj`` and ``v_proj`` through PEFT. The LM's
sequence is ``visual_tokens`` longer on every layer, in training and at inference, and the
KV cache holds them while decoding. ``text-only`` trains the same LoRA on the same questions
without the image: the accuracy a question alone allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.vqa_protocol import (
    VisualParams,
    VQAMethodParams,
    patch_features,
    position_ids,
)

from .projector import like, projector

__all__ = ["Prefix", "PrefixParams", "TextOnly", "TextOnlyParams"]


class TextOnlyParams(VQAMethodParams):
    """LoRA on the LM through PEFT."""

    #: 3e-3 and 3e-2 tie on a validation seed (9) of digit-grid-vqa.
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate")
    rank: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale alpha / rank)")
    targets: tuple[str, ...] = Field(("q_proj", "v_proj"), description="LM modules given LoRA")


class PrefixParams(TextOnlyParams, VisualParams):
    """LoRA on the LM and the projector of the visual tokens prepended to its input."""

    #: Best of 1e-3, 3e-3 and 1e-2 on a validation seed (9) of digit-grid-vqa at 64 tokens.
    lr: float = Field(1e-2, gt=0, description="peak AdamW learning rate")
    projector_hidden: int = Field(128, gt=0, description="the projector's hidden width")


def _connector() -> type:
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn

    class InputSpaceConnector(nn.Module):
        """The LM with LoRA, and visual tokens before its input when the method has them
        (``prefix``); ``text-only`` owns the encoder too, unused, so its counts compare."""

        def __init__(self, lm: nn.Module, encoder: nn.Module, p: TextOnlyParams) -> None:
            super().__init__()
            config = LoraConfig(r=p.rank, lora_alpha=p.alpha, target_modules=list(p.targets))
            self.lm, self.encoder, self.p = inject_adapter_in_model(config, lm), encoder, p
            self.projector = None
            if isinstance(p, VisualParams):
                width, features = lm.config.hidden_size, encoder.config.hidden_size
                self.projector = like(projector(features, p.projector_hidden, width, "gelu"), lm)

        def encode(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
            if self.projector is None:
                return None
            features = patch_features(self.encoder, pixel_values, self.p.visual_tokens)
            return self.projector(features.to(self.projector[0].weight.dtype))

        def forward(self, visual: torch.Tensor | None, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, past_key_values: Any = None) -> Any:  # fmt: skip
            new = input_ids.shape[1]
            common = {"past_key_values": past_key_values, "use_cache": past_key_values is not None}
            if visual is None:
                positions = position_ids(attention_mask, new)
                return self.lm(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=positions, **common)  # fmt: skip
            seen = visual.new_ones(visual.shape[:2], dtype=attention_mask.dtype)
            mask = torch.cat([seen, attention_mask], dim=1)
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                return self.lm(input_ids=input_ids, attention_mask=mask,
                               position_ids=position_ids(mask, new), **common)  # fmt: skip
            embeds = torch.cat([visual, self.lm.get_input_embeddings()(input_ids)], dim=1)
            return self.lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=new,
                           position_ids=position_ids(mask, embeds.shape[1]), **common)  # fmt: skip

    return InputSpaceConnector


class Prefix:
    """Projected visual tokens prepended to the LM's input, LoRA on the LM."""

    name = "prefix"
    version = "1"
    description = (
        "input-space visual prompting (LLaVA-style): projected patch features prepended to "
        "the frozen LM's input as visual tokens, LoRA on q/v through PEFT"
    )
    scenarios = ("vqa",)
    params = PrefixParams

    def connect(self, lm: Any, encoder: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        return _connector()(lm, encoder, PrefixParams(**params))


class TextOnly:
    """The question alone: LoRA on the LM, the image never seen."""

    name = "text-only"
    role = "lower-bound"
    version = "1"
    description = "LoRA on the frozen LM trained on the questions without the image: the prior"
    scenarios = ("vqa",)
    params = TextOnlyParams

    def connect(self, lm: Any, encoder: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        return _connector()(lm, encoder, TextOnlyParams(**params))
