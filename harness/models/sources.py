"""Model sources: what turns a suite's ``SOURCE:ID`` model reference into a torch model.

* ``hf`` — ``from_pretrained`` on a hub id or a local directory;
* ``hf-config`` — a config (hub id or local directory) with ``overrides``, randomly
  initialised: real shapes for systems timing without downloading weights; its kind
  ``config`` returns the overridden transformers config itself (no weights), for scenarios
  that build and train the model (``lm_train``);
* ``builtin`` — a model the project makes itself (:class:`harness.api.ModelEntry`), prepared
  under the cache dir and then read by the very same code as ``hf``.

Every source puts the model on the run's device in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import Params, RunContext, Unsupported
from harness.registry import did_you_mean

if TYPE_CHECKING:
    import torch

__all__ = ["BuiltinSource", "HFConfigSource", "HFSource", "default_sources"]

#: Model kind -> the transformers auto class that loads it.
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "base": "AutoModel",
}


class HFOptions(Params):
    """Options of an ``hf`` or ``builtin`` model entry."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    """Dtype the weights are loaded in; auto keeps the one the checkpoint or config names."""


class HFConfigOptions(HFOptions):
    """Options of an ``hf-config`` model entry: ``overrides`` are set on the loaded config."""

    overrides: dict[str, Any] = Field(default_factory=dict)
    """Config fields to set before initialising, e.g. num_hidden_layers (each must exist)."""


def _auto_class(kind: str, source: str) -> Any:
    if kind not in AUTO_CLASSES:
        raise Unsupported(
            f"model source '{source}' cannot load kind '{kind}' "
            f"(supported: {', '.join(AUTO_CLASSES)})"
        )
    import transformers

    return getattr(transformers, AUTO_CLASSES[kind])


def _torch_dtype(dtype: str) -> torch.dtype | str:
    import torch

    return dtype if dtype == "auto" else getattr(torch, dtype)


def load_pretrained(id: str, kind: str, options: HFOptions, device: str, source: str) -> Any:
    """``from_pretrained`` of ``kind``'s auto class, on ``device``, in eval mode."""
    auto = _auto_class(kind, source)
    model = auto.from_pretrained(id, dtype=_torch_dtype(options.dtype))
    return model.to(device).eval()


def load_pretrained_tokenizer(id: str) -> Any:
    """The tokenizer saved with a model (hub id or local directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(id)


class HFSource:
    """``hf:ID`` — a pretrained transformers model from the hub or a local directory."""

    name = "hf"
    description = "from_pretrained on a hub id or local path (option dtype, default float32)"
    params = HFOptions

    def load(self, id: str, kind: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        return load_pretrained(id, kind, HFOptions(**options), ctx.device, self.name)

    def load_tokenizer(self, id: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        return load_pretrained_tokenizer(id)


class HFConfigSource:
    """``hf-config:ID`` — a randomly initialised model of a real architecture's shape."""

    name = "hf-config"
    description = (
        "AutoConfig of a hub id or local dir, with option overrides, randomly initialised "
        "(systems timing at real shapes; quality numbers are meaningless)"
    )
    params = HFConfigOptions

    def load(self, id: str, kind: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        """A randomly initialised model of ``kind``, or for kind ``config`` the config alone."""
        import torch

        opts = HFConfigOptions(**options)
        if kind == "config":
            return self.config(id, opts)
        auto = _auto_class(kind, self.name)
        config = self.config(id, opts)
        # "auto" keeps the dtype the config names (float32 when it names none).
        dtype = {} if opts.dtype == "auto" else {"dtype": _torch_dtype(opts.dtype)}
        # Random weights still follow the run's seed, so timings are of the same model.
        torch.manual_seed(ctx.spec.seed)
        with torch.device(ctx.device):
            model = auto.from_config(config, **dtype)
        return model.eval()

    def config(self, id: str, opts: HFConfigOptions) -> Any:
        """``AutoConfig`` of ``id`` with ``opts.overrides`` set (each must be a config field)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(id)
        known = sorted(config.to_dict())
        for key, value in opts.overrides.items():
            if key not in known:
                raise ValueError(
                    f"hf-config override '{key}' is not a field of {id}'s config"
                    + did_you_mean(key, known)
                )
            setattr(config, key, value)
        return config

    def load_tokenizer(self, id: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(id, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise Unsupported(
                f"hf-config:{id} has no tokenizer available locally (it only needs a config); "
                f"use the hf source for a scenario that tokenizes text ({exc})"
            ) from exc


class BuiltinSource:
    """``builtin:NAME`` — a built-in model, made on first use and cached under the cache dir."""

    name = "builtin"
    description = "a model the project trains on the fly and caches, keyed by recipe hash"
    params = HFOptions

    def prepare(self, id: str, options: Mapping[str, Any], ctx: RunContext) -> str:
        """Make the model (train it on first use); returns the directory ``hf`` code reads."""
        return ctx.components.models.get(id).prepare(ctx.cache_dir)

    def load(self, id: str, kind: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        kinds = ctx.components.models.get(id).kinds
        if kind not in kinds:
            raise Unsupported(f"built-in model '{id}' is of kind {', '.join(kinds)}, not '{kind}'")
        path = self.prepare(id, options, ctx)
        return load_pretrained(path, kind, HFOptions(**options), ctx.device, self.name)

    def load_tokenizer(self, id: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        return load_pretrained_tokenizer(self.prepare(id, options, ctx))


def default_sources() -> list[Any]:
    """The core's model sources."""
    return [HFSource(), HFConfigSource(), BuiltinSource()]
