"""`plan --engine vllm`: GPU memory per GPU when vLLM serves the GPTQ checkpoint with tensor parallelism.

vLLM 0.32.0 sizes its KV cache at start-up (vllm/v1/worker/gpu_worker.py `determine_available_memory`): it takes
`gpu_memory_utilization` (default 0.92, vllm/config/cache.py) of the card, subtracts the weights, the peak of a
profile run (a forward over `max_num_batched_tokens` tokens, the vision tower on the largest page, the sampler over
`max_num_seqs` rows), the memory outside torch (CUDA context, NCCL) and the profiled CUDA-graph memory, and gives the
rest to the KV cache; the other 8% is never used. On an A10G/A100/4090 `vllm serve` defaults to
max_num_batched_tokens 2048 and max_num_seqs 256 (vllm/engine/arg_utils.py, GPUs under 70 GiB or named A100).
Weights and the KV cache split over the N GPUs (the vision tower too: mm_encoder_tp_mode "weights"); KV heads split
while N ≤ num_kv_heads. A request's KV: global layers hold its whole length, sliding-window layers at most
window − 1 + max_num_batched_tokens tokens (vllm/v1/kv_cache_interface.py SlidingWindowSpec), in blocks of 16.
Weights and activations are computed from config.json; the CUDA context and CUDA graphs are allowances, labelled so.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exaone_edge.budgets import GIB, MIB
from exaone_edge.errors import InputError
from exaone_edge.memory import largest_context, parse_gpu
from exaone_edge.memory_source import Source, load_source, with_page_budget
from exaone_edge.spec import DecoderSpec
from exaone_edge.tensor_parallel import group_size_for_tp, supported_tp

GPU_MEMORY_UTILIZATION = 0.92  # vLLM 0.32.0 CacheConfig default
MAX_NUM_BATCHED_TOKENS = 2048  # `vllm serve` on GPUs under 70 GiB, or an A100
MAX_NUM_SEQS = 256
BLOCK_SIZE = 16  # tokens per KV block on CUDA
KV_BYTES = 2  # bf16 KV cache (--kv-cache-dtype auto: the model's dtype)
WEIGHT_BYTES = 2  # bf16 for everything GPTQ leaves unquantized (embeddings, head, norms, vision tower)
CUDA_CONTEXT = 600 * MIB  # allowance: CUDA context, cuBLAS workspace (not measured: no GPU here)
NCCL_BUFFERS = 300 * MIB  # allowance per GPU with TP > 1
CUDA_GRAPHS = 512 * MIB  # allowance: vLLM profiles it at start (0 with --enforce-eager)
NORMALIZE_FIX = "--no-mm-device-do-normalize"


@dataclass(frozen=True)
class VllmPlan:
    gpu: str
    gpu_bytes: int
    tp: int
    bits: int
    group_size: int
    supported_tp: tuple[int, ...]  # degrees this group size serves
    context: int
    components: dict[str, int]  # per GPU
    reserve_bytes: int  # (1 − gpu_memory_utilization) of the card: vLLM never uses it
    total_bytes: int
    fits: bool
    max_context: int  # largest single-request context (max_model_len) that fits
    requests_at_context: int  # requests of `context` tokens the KV pool holds at once
    max_pixels: int
    command: str

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def summary(self) -> str:
        gib = lambda n: f"{n / GIB:6.2f} GiB"  # noqa: E731
        lines = [f"vLLM, TP {self.tp} × {self.gpu} ({self.gpu_bytes / GIB:.2f} GiB each), GPTQ {self.bits}-bit group "
                 f"{self.group_size} (serves TP {', '.join(map(str, self.supported_tp))}), context {self.context:,}",
                 "per GPU:"]
        lines += [f"  {name:<50}{gib(size)}" for name, size in self.components.items()]
        lines.append(f"  {'vLLM reserve (1 − gpu_memory_utilization 0.92)':<50}{gib(self.reserve_bytes)}")
        lines.append(f"  {'total':<50}{gib(self.total_bytes)}  {'fits' if self.fits else 'DOES NOT FIT'}")
        lines.append(f"largest context (--max-model-len): {self.max_context:,}; requests of {self.context:,} tokens "
                     f"held at once: {self.requests_at_context}")
        lines.append(f"pages up to {self.max_pixels:,} pixels")
        lines.append(f"serve: {self.command}")
        return "\n".join(lines)


def gptq_linear_bytes(inputs: int, outputs: int, bits: int, group_size: int) -> int:
    """qweight, scales (fp16) and qzeros per group, g_idx per input row: GPTQ v1 as GPTQModel writes it."""
    groups = 1 if group_size == -1 else inputs // group_size
    return inputs * outputs * bits // 8 + groups * outputs * 2 + groups * outputs * bits // 8 + inputs * 4


def decoder_linear_bytes(decoder: DecoderSpec, bits: int, group_size: int) -> int:
    hidden, heads, kv = decoder.hidden_size, decoder.num_heads * decoder.head_dim, decoder.num_kv_heads * decoder.head_dim
    shapes = [(hidden, heads), (hidden, kv), (hidden, kv), (heads, hidden),
              (hidden, decoder.intermediate_size), (hidden, decoder.intermediate_size), (decoder.intermediate_size, hidden)]
    return decoder.num_layers * sum(gptq_linear_bytes(i, o, bits, group_size) for i, o in shapes)


def kv_bytes_per_gpu(decoder: DecoderSpec, context: int, tp: int) -> int:
    heads = max(1, decoder.num_kv_heads // tp)
    per_token_layer = 2 * heads * decoder.head_dim * KV_BYTES
    blocks = lambda tokens: -(-tokens // BLOCK_SIZE)  # noqa: E731
    global_blocks = blocks(context)
    window = decoder.sliding_window or context
    sliding_blocks = blocks(min(window - 1 + MAX_NUM_BATCHED_TOKENS, context)) + 1
    total = sum(global_blocks if kind == "G" else sliding_blocks for kind in decoder.pattern)
    return total * BLOCK_SIZE * per_token_layer


def activation_bytes(source: Source, tp: int) -> dict[str, int]:
    """Peaks of vLLM's profile run, bf16: the decoder over max_num_batched_tokens (residual, hidden, q/k/v, the
    FFN's gate-up and activation, split by TP), the sampler over max_num_seqs rows (fp32 logits and probabilities of
    the whole vocabulary), the vision tower on the largest page (attention fused: flash, no score matrix)."""
    decoder, vision = source.spec.decoder, source.spec.vision
    qkv = (decoder.num_heads + 2 * decoder.num_kv_heads) * decoder.head_dim // tp
    tokens = MAX_NUM_BATCHED_TOKENS * (3 * decoder.hidden_size + qkv + 3 * decoder.intermediate_size // tp) * 2
    sampler = MAX_NUM_SEQS * decoder.vocab_size * 4 * 2
    patches = source.max_pixels // vision.patch_size ** 2
    tower = patches * (4 * vision.hidden_size + 3 * vision.intermediate_size // tp) * 2
    return {"decoder": tokens, "sampler": sampler, "vision": tower}


def _gptq_config(model: Path) -> tuple[int | None, int | None]:
    path = Path(model) / "quantize_config.json"
    if not path.is_file():
        return None, None
    config = json.loads(path.read_text(encoding="utf-8"))
    return int(config["bits"]), int(config["group_size"])


def vllm_plan(model: Path, *, tp: int = 1, gpu: str = "a100-40", context: int | None = None, bits: int = 4,
              group_size: int | None = None, image_max_tokens: int | None = None) -> VllmPlan:
    """Per-GPU memory of `vllm serve MODEL --tensor-parallel-size TP` for a GPTQ checkpoint (or the checkpoint it
    will be made from: then the group size is the one `quantize --format gptq --tp TP` picks)."""
    card = parse_gpu(gpu)
    source = with_page_budget(load_source(model), image_max_tokens)
    decoder = source.spec.decoder
    measured_bits, measured_group = _gptq_config(model)
    bits = measured_bits or bits
    group_size = group_size_for_tp(decoder, tp, measured_group if measured_group is not None else group_size)
    context = context or min(decoder.max_position_embeddings, 32768)
    if not 0 < context <= decoder.max_position_embeddings:
        raise InputError(f"context {context} is outside 1..{decoder.max_position_embeddings} (the model's limit)",
                         fix="Pass a smaller --context.")
    embeddings = decoder.embedding_params * WEIGHT_BYTES
    norms = (decoder.num_layers * 2 + 1) * decoder.hidden_size * WEIGHT_BYTES
    activations = activation_bytes(source, tp)
    fixed = {
        f"decoder Linear weights (GPTQ {bits}-bit, 1/{tp})": decoder_linear_bytes(decoder, bits, group_size) // tp,
        f"embeddings + lm_head (bf16, 1/{tp})": embeddings // tp,
        "norms (bf16, on every GPU)": norms,
        f"vision tower (bf16, 1/{tp})": source.spec.vision.params * WEIGHT_BYTES // tp,
        "activations: decoder, 2,048-token batch": activations["decoder"],
        "activations: sampler, 256 rows": activations["sampler"],
        "activations: vision tower, largest page": activations["vision"],
        "CUDA context (allowance)": CUDA_CONTEXT,
        "CUDA graphs (allowance)": CUDA_GRAPHS,
    }
    if tp > 1:
        fixed["NCCL buffers (allowance)"] = NCCL_BUFFERS
    reserve = int((1 - GPU_MEMORY_UTILIZATION) * card.memory_bytes)
    kv_budget = card.memory_bytes - reserve - sum(fixed.values())
    kv = kv_bytes_per_gpu(decoder, context, tp)
    components = {**fixed, f"KV cache, one request of {context:,} tokens (bf16)": kv}
    total = sum(components.values()) + reserve
    limit = decoder.max_position_embeddings
    max_context = largest_context(lambda n: kv_bytes_per_gpu(decoder, n, tp) <= kv_budget, limit) if kv_budget > 0 else 0
    served = str(model) if measured_group is not None else "GPTQ_DIR"  # a checkpoint to quantize first
    command = shlex.join(["vllm", "serve", served, "--tensor-parallel-size", str(tp), "--max-model-len",
                          str(min(context, max_context) if max_context else context), NORMALIZE_FIX])
    return VllmPlan(
        gpu=card.name, gpu_bytes=card.memory_bytes, tp=tp, bits=bits, group_size=group_size,
        supported_tp=supported_tp(decoder, group_size), context=context, components=components, reserve_bytes=reserve,
        total_bytes=total, fits=total <= card.memory_bytes, max_context=max_context,
        requests_at_context=max(kv_budget, 0) // kv, max_pixels=source.max_pixels, command=command,
    )
