from __future__ import annotations

import pytest
from harness_plugins.kvcache.offload import Offload

from harness.api import Unsupported


def test_unsupported_on_cpu(tiny_llama, ctx) -> None:
    with pytest.raises(Unsupported, match="CUDA"):
        Offload().make_cache(tiny_llama, {}, ctx)
