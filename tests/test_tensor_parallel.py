"""The GPTQ group size that vLLM tensor parallelism needs, at the released 33B's widths (FFN 27,392 = 2^8 × 107)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exaone_edge.errors import InputError
from exaone_edge.memory_source import load_source
from exaone_edge.tensor_parallel import group_size_for_tp, row_parallel_widths, supported_tp, tp_problem


@pytest.fixture(scope="module")
def decoder():
    return load_source("exaone-4.5-33b").spec.decoder


def test_the_released_widths(decoder):
    assert {s.layer: s.width for s in row_parallel_widths(decoder)} == {"self_attn.o_proj": 5120, "mlp.down_proj": 27392}


@pytest.mark.parametrize(("tp", "chosen", "refused"), [(1, 128, ()), (2, 128, ()), (4, 64, (128,)), (8, 32, (128, 64))])
def test_group_size_per_degree(decoder, tp, chosen, refused):
    assert group_size_for_tp(decoder, tp) == chosen
    assert group_size_for_tp(decoder, tp, chosen) == chosen
    for size in refused:
        per_gpu = 27392 // tp
        assert tp_problem(decoder, tp, size) == (f"mlp.down_proj's input width 27,392 is {per_gpu:,} per GPU at TP {tp}, "
                                                 f"not a multiple of group size {size}")
        with pytest.raises(InputError, match=f"Use --group-size {chosen} "):
            group_size_for_tp(decoder, tp, size)


def test_supported_degrees(decoder):
    assert supported_tp(decoder, 128) == (1, 2)
    assert supported_tp(decoder, 64) == (1, 2, 4)
    assert supported_tp(decoder, 32) == (1, 2, 4, 8)
    assert supported_tp(decoder, -1) == (1, 2, 4, 8)  # per-channel: no groups to straddle


def test_heads_limit_the_degree(decoder):
    assert tp_problem(decoder, 3, 32) == "40 attention heads do not split over 3 GPUs"
    odd = replace(decoder, num_heads=48, num_kv_heads=6)
    assert tp_problem(odd, 4, 32) == "6 KV heads do not split (or replicate evenly) over 4 GPUs"
    with pytest.raises(InputError, match="Use one of --tp 1, 2"):
        group_size_for_tp(odd, 4)
