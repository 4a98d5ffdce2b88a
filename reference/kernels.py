"""GPTQModel's kernels run eagerly where the reference runs GPTQ layers (validate, quantize's fidelity step)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def eager_gptq_kernels() -> Iterator[None]:
    """GPTQModel torch.compiles every TorchLinear's dequantization; on CPU each new sequence length
    recompiles until dynamo's limit (validating 6 questions took > 16 min). Eager takes seconds."""
    import torch

    with torch._dynamo.config.patch(disable=True):
        yield
