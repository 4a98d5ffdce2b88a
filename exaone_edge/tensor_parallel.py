"""Which tensor-parallel degrees a GPTQ decoder can be served at (vLLM), and the group size a degree needs.

vLLM splits a column-parallel Linear (q/k/v, gate/up) by its outputs and a row-parallel one (o_proj, down_proj) by
its inputs. GPTQ groups run along the inputs, so every row-parallel layer's per-GPU input width must hold a whole
number of groups: vLLM 0.32.0 refuses the shard otherwise (`verify_group_size_divides_partition` in
vllm/distributed/utils.py; Marlin's `can_implement` says "in_features per partition … is not divisible by
group_size"). Attention heads split whole (vllm/model_executor/models/exaone4.py): num_heads % tp == 0, and
num_kv_heads % tp == 0 up to tp = num_kv_heads, tp % num_kv_heads == 0 above it (KV heads replicated). For EXAONE 4.5 33B the FFN width 27,392 = 2^8 × 107
gives 13,696 per GPU at TP 2, 6,848 at TP 4 and 3,424 at TP 8: group size 128 serves TP 1–2, 64 up to TP 4, 32 up to 8.
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_edge.errors import InputError
from exaone_edge.spec import DecoderSpec

TP_DEGREES = (1, 2, 4, 8)  # GPUs in one box
GROUP_SIZES = (128, 64, 32)  # Marlin's group sizes besides per-channel (-1), largest (smallest file) first
PER_CHANNEL = -1


@dataclass(frozen=True)
class ShardedWidth:
    layer: str
    width: int  # the whole input width


def row_parallel_widths(decoder: DecoderSpec) -> tuple[ShardedWidth, ...]:
    """The quantized layers vLLM splits along their inputs (where groups must not straddle GPUs)."""
    return (ShardedWidth("self_attn.o_proj", decoder.num_heads * decoder.head_dim),
            ShardedWidth("mlp.down_proj", decoder.intermediate_size))


def tp_problem(decoder: DecoderSpec, tp: int, group_size: int) -> str | None:
    """Why the decoder cannot be served at `tp` GPUs with this group size (None: it can)."""
    if tp < 1:
        return f"tensor-parallel degree {tp} is not a GPU count"
    if decoder.num_heads % tp:
        return f"{decoder.num_heads} attention heads do not split over {tp} GPUs"
    kv = decoder.num_kv_heads
    if (kv % tp if tp <= kv else tp % kv):
        return f"{kv} KV heads do not split (or replicate evenly) over {tp} GPUs"
    for shard in row_parallel_widths(decoder):
        if shard.width % tp:
            return f"{shard.layer}'s input width {shard.width:,} does not split over {tp} GPUs"
        per_gpu = shard.width // tp
        if group_size != PER_CHANNEL and per_gpu % group_size:
            return (f"{shard.layer}'s input width {shard.width:,} is {per_gpu:,} per GPU at TP {tp}, "
                    f"not a multiple of group size {group_size}")
    return None


def supported_tp(decoder: DecoderSpec, group_size: int) -> tuple[int, ...]:
    """The degrees of TP_DEGREES this group size serves."""
    return tuple(tp for tp in TP_DEGREES if tp_problem(decoder, tp, group_size) is None)


def group_size_for_tp(decoder: DecoderSpec, tp: int, group_size: int | None = None) -> int:
    """The group size to quantize with for serving at `tp` GPUs: `group_size` checked when given, else the largest
    of GROUP_SIZES that fits. A refusal names the fix."""
    if group_size is not None:
        problem = tp_problem(decoder, tp, group_size)
        if problem:
            fits = [size for size in GROUP_SIZES if tp_problem(decoder, tp, size) is None]
            fix = (f"Use --group-size {fits[0]} (it serves TP {tp}), or a lower --tp."
                   if fits else f"Use a lower --tp ({', '.join(map(str, supported_tp(decoder, PER_CHANNEL))) or 'none'} fit).")
            raise InputError(f"--tp {tp} with --group-size {group_size}: {problem}", fix=fix)
        return group_size
    for size in GROUP_SIZES:
        if tp_problem(decoder, tp, size) is None:
            return size
    problem = tp_problem(decoder, tp, PER_CHANNEL) or tp_problem(decoder, tp, GROUP_SIZES[-1])
    degrees = ", ".join(map(str, supported_tp(decoder, GROUP_SIZES[-1]))) or "1"
    raise InputError(f"--tp {tp}: {problem}", fix=f"Use one of --tp {degrees}.")
