"""GPU memory of a deployment: decoder, vision encoder and KV cache at a context (what `plan` reports and what
`--ctx auto` / `--gpu-layers auto` fit).

Weights come from the real artifact when a bundle is given (file sizes), otherwise from the
checkpoint's parameter counts at each level's bits per weight; of a checkpoint only config.json is
needed, so one can plan before downloading (pages then default to the released pixel limit). KV cache
follows llama.cpp's layout: global layers hold the whole context, sliding-window layers at most the
window (padded as llama.cpp pads it), once per parallel sequence (`serve --parallel`: llama.cpp's
non-unified cache gives each a full context). Compute buffers and the runtimes' CUDA overhead are
allowances, labelled as such. The token-embedding table is host memory, not GPU memory: llama.cpp
never offloads the input layer. Pages are sized by the preprocessor's max_pixels, or by
`--image-max-tokens` as run/serve enforce it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from exaone_edge import bundle as bundle_format
from exaone_edge.budgets import GIB, MIB, UBATCH
from exaone_edge.errors import InputError
from exaone_edge.levels import GGML_TYPE_BITS, LEVELS, embedding_bytes, estimated_bytes
from exaone_edge.llama import ALL_LAYERS, KV_TYPES
from exaone_edge.memory_source import Source, load_source, with_draft, with_page_budget  # noqa: F401 (re-exported)
from exaone_edge.spec import DecoderSpec, ModelSpec

# Best quality first: the planner recommends the first level that fits.
QUALITY_ORDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "IQ4_XS")
RUNTIME_OVERHEAD = 800 * MIB  # two CUDA contexts (ONNX Runtime + llama.cpp) with their BLAS workspaces
HEADROOM = 0.05  # fragmentation and driver reserve
# Vision weight bytes per parameter for a checkpoint plan, by export precision (a bundle's file is measured):
# int8w and int4 are MatMulNBits with block 32 (8 or 4 bits + an fp16 scale per block), which ONNX Runtime's CUDA EP
# runs (8 bits since ORT 1.22).
VISION_WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int8w": 8.5 / 8, "int4": 4.5 / 8}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    bandwidth_gbs: float | None
    fp16_tflops: float | None = None  # dense tensor-core FP16 with FP32 accumulate (spec sheet)
    fp32_tflops: float | None = None  # non-tensor FP32 (spec sheet): GPTQ's Hessians and solves
    pcie_gbs: float | None = None  # host link, one direction: PCIe 4.0 x16 is 16 GT/s × 16 lanes × 128/130 bits


PCIE4_X16_GBS = 31.5
# Spec sheets: NVIDIA Ada Lovelace architecture whitepaper (RTX 4090: 165.2 FP16-tensor TFLOPS with FP32 accumulate,
# 82.6 FP32, 1008 GB/s); NVIDIA A10 datasheet (125 FP16-tensor, 31.2 FP32, 600 GB/s; AWS publishes no separate
# figures for its A10G variant); NVIDIA A100 datasheet (312 FP16-tensor, 19.5 FP32; 1555 GB/s at 40 GB, 2039 at 80 GB).
GPUS: dict[str, Gpu] = {
    gpu.name: gpu
    for gpu in (
        Gpu("rtx4090", 24564 * MIB, 1008.0, 165.2, 82.6, PCIE4_X16_GBS),
        Gpu("a10g", 23028 * MIB, 600.0, 125.0, 31.2, PCIE4_X16_GBS),
        Gpu("a100-40", 40960 * MIB, 1555.0, 312.0, 19.5, PCIE4_X16_GBS),
        Gpu("a100-80", 81920 * MIB, 2039.0, 312.0, 19.5, PCIE4_X16_GBS),
    )
}


@dataclass(frozen=True)
class Plan:
    gpu: str
    gpu_bytes: int
    context: int
    kv_type: str
    parallel: int  # sequences decoded together, each with its own `context` of KV cache
    level: str
    components: dict[str, int]  # GPU memory
    total_bytes: int  # GPU memory: the components and the headroom
    host_components: dict[str, int]  # weights llama.cpp keeps in host memory even with every layer on the GPU
    host_bytes: int
    token_embedding_from: str  # "read from decoder.gguf", or the estimate: vocab × hidden at a ggml type
    fits: bool
    max_context: int  # largest context per sequence that fits at this level (0 if none)
    best_level: str | None  # best-quality level that fits the requested context
    vision_on_gpu: bool
    placement: dict  # where each part runs: exaone_edge.device.Placement.as_dict(), as the runtime would decide
    decode_tokens_per_s_ceiling: float | None  # all `parallel` sequences together; None unless the decoder is all on the GPU
    weights_measured: bool  # decoder/vision sizes are real file sizes, not estimates
    max_pixels: int  # the largest page the vision activations are sized for
    pixels_from: str  # where max_pixels came from: --image-max-tokens, preprocessor_config.json, transformers' default
    image_max_tokens: int | None  # the page budget asked for (run/serve --image-max-tokens); None: the preprocessor's
    vision_attention_fused: bool  # full-attention blocks hold no [heads, patches, patches] score matrix
    vision_precision: str  # the export precision the vision weights are sized at ("measured": a bundle's file)
    # The best level, KV type, vision precision and page budget that fit `context` (exaone_edge.fit.recommend);
    # None when nothing does.
    recommended: dict | None = None
    # (repeating layers, MTP blocks) in the decoder file: n_gpu_layers places the MTP blocks right after the output layer
    decoder_blocks: tuple[int, int] = (0, 0)


def parse_gpu(value: str) -> Gpu:
    key = value.strip().lower()
    if key in GPUS:
        return GPUS[key]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*gi?b", key)
    if match:
        return Gpu(f"{match.group(1)}GiB", int(float(match.group(1)) * GIB), None)
    raise InputError(
        f"unknown GPU '{value}'", fix=f"Use one of {', '.join(GPUS)} or a size such as 48GiB."
    )


def kv_cache_bytes(decoder: DecoderSpec, context: int, kv_type: str) -> int:
    per_token_layer = 2 * decoder.num_kv_heads * decoder.head_dim * KV_TYPES[kv_type].bytes_per_element
    window = decoder.sliding_window or context
    swa_tokens = min(context, -(-(window + UBATCH) // 256) * 256)
    tokens = sum(context if kind == "G" else swa_tokens for kind in decoder.pattern)
    return int(tokens * per_token_layer)


def compute_buffer_bytes(decoder: DecoderSpec) -> int:
    """Logits and FFN activations for one micro-batch (flash attention on: no KQ matrix)."""
    return UBATCH * (decoder.vocab_size + 3 * decoder.intermediate_size + 4 * decoder.hidden_size) * 4


def vision_activation_bytes(spec: ModelSpec, max_pixels: int, fused: bool = False) -> int:
    """Peak of one vision block on the largest page, float32. Unfused full attention materialises
    [heads, patches, patches] scores; fused (CUDA's flash / memory-efficient kernels) holds none, and the
    peak is then a windowed block's scores and probabilities, [heads, patches, patches per window] each."""
    vision = spec.vision
    patches = max_pixels // vision.patch_size**2
    rows = patches * (4 * vision.hidden_size + 3 * vision.intermediate_size) * 4
    window = (vision.window_size // vision.patch_size) ** 2
    window_scores = 2 * vision.num_heads * patches * window * 4
    full_scores = 0 if fused else vision.num_heads * patches * patches * 4
    return rows + max(window_scores, full_scores)


def _token_embedding(source: Source, level: str) -> tuple[int, str]:
    """token_embd's bytes at `level`, and where they came from (the bundle's GGUF, or an estimate)."""
    if source.measured_level == level and source.measured_embedding_bytes is not None:
        return source.measured_embedding_bytes, f"read from {bundle_format.DECODER_FILE}"
    decoder = source.spec.decoder
    estimate = f"estimated: {decoder.vocab_size:,} × {decoder.hidden_size:,} at {LEVELS[level].embedding_type}"
    return embedding_bytes(decoder.vocab_size, decoder.hidden_size, level), estimate


def output_layer_bytes(source: Source, level: str) -> int:
    """The output layer's bytes at `level`: output.weight, or the token table that a tied model loads again as it.
    llama.cpp's quantizer stores output.weight as Q6_K for every K/IQ level here, as is for F32/BF16/F16/Q8_0
    (src/llama-quant.cpp, llama_tensor_get_type: category OUTPUT)."""
    decoder = source.spec.decoder
    if decoder.tie_word_embeddings:
        return _token_embedding(source, level)[0]
    if source.measured_level == level and source.measured_output_bytes is not None:
        return source.measured_output_bytes
    kind = LEVELS[level].embedding_type if level in ("F32", "BF16", "F16", "Q8_0") else "Q6_K"
    return int(decoder.vocab_size * decoder.hidden_size * GGML_TYPE_BITS[kind] / 8)


def mtp_head_bytes(source: Source, level: str) -> int:
    """The MTP head's weights at `level`: measured in a bundle's decoder.gguf, else its parameters at the level's bits."""
    if source.measured_level == level and source.measured_mtp_bytes is not None:
        return source.measured_mtp_bytes
    return estimated_bytes(source.spec.decoder.mtp_params, level)


def head_blocks(source: Source) -> int:
    """MTP blocks in the decoder's GGUF file, which llama.cpp's n_gpu_layers counts: a bundle's as read, a
    checkpoint's as `quantize` writes them (it keeps the head)."""
    if source.measured_mtp_bytes is not None:
        return source.spec.decoder.nextn_layers if source.measured_mtp_bytes else 0
    return source.spec.decoder.nextn_layers


def mtp_kv_bytes(decoder: DecoderSpec, context: int, kv_type: str) -> int:
    """The MTP context's KV cache: one layer of layer 0's kind (the head runs as layer_types[0])."""
    first = replace(decoder, layer_types=decoder.layer_types[:1])
    return kv_cache_bytes(first, context, kv_type)


def _components(
    source: Source, level: str, context: int, kv_type: str, vision_on_gpu: bool, parallel: int = 1,
    gpu_layers: int = ALL_LAYERS, vision_precision: str = "fp16",
) -> tuple[dict[str, int], bool]:
    """GPU bytes per part, with llama.cpp's `gpu_layers` (n_gpu_layers) placing the output layer, then the file's MTP
    blocks, then the last repeating layers (their weights and KV) on the GPU (exaone_edge.device.gpu_layer_split)."""
    from exaone_edge.device import gpu_layer_split

    decoder = source.spec.decoder
    measured = source.measured_level == level and source.measured_decoder_bytes is not None
    # llama.cpp loads the MTP head only with --draft mtp: the file holds it, the estimate (decoder_params) does not.
    head = mtp_head_bytes(source, level)
    weights = source.measured_decoder_bytes - head if measured else estimated_bytes(source.decoder_params, level)
    # llama.cpp keeps the input layer (token_embd) in host memory whatever -ngl says: src/llama-model.cpp,
    # load_tensors, "assign the input layer ... always keep it on the CPU" (dev_input = the CPU's buffer list).
    # A tied table is loaded a second time as the output layer, on the GPU.
    output = output_layer_bytes(source, level)
    body = weights - _token_embedding(source, level)[0] - (0 if decoder.tie_word_embeddings else output)
    repeating, head_on_gpu, output_on_gpu = gpu_layer_split(gpu_layers, decoder.num_layers, head_blocks(source))
    share = repeating / decoder.num_layers
    on_gpu = gpu_layers != 0
    # Host layers' matmuls over ≥ 32 rows still run on the GPU (op offload), each host weight copied into the compute
    # buffer in a split of its own (ggml-backend.cpp, ggml_backend_sched_split_graph: need_new_split), so the
    # largest one, an FFN matrix, is there at a time.
    copies = estimated_bytes(decoder.intermediate_size * decoder.hidden_size, level) if on_gpu and share < 1 else 0
    vision = source.measured_vision_bytes or source.vision_params * VISION_WEIGHT_BYTES[vision_precision]
    components = {
        "decoder_weights": int(output * output_on_gpu + body * share),
        "kv_cache": int(parallel * kv_cache_bytes(decoder, context, kv_type) * share),
        "decoder_compute_buffer": compute_buffer_bytes(decoder) + copies if on_gpu else 0,
        "vision_weights": int(vision) if vision_on_gpu else 0,
        "vision_activations": vision_activation_bytes(source.spec, source.max_pixels, source.fused) if vision_on_gpu else 0,
        "runtime_overhead": RUNTIME_OVERHEAD // 2 * (int(vision_on_gpu) + int(on_gpu)),
    }
    if source.drafting:  # the head's block, its own KV cache per sequence (on the block's device), a compute buffer
        head_share = head_on_gpu / max(decoder.nextn_layers, 1)
        components["mtp_head"] = int(head_share * (head + parallel * mtp_kv_bytes(decoder, context, kv_type))
                                     + (compute_buffer_bytes(decoder) if on_gpu else 0))
    return components, measured


def _total(components: dict[str, int], gpu: Gpu) -> int:
    return sum(components.values()) + int(HEADROOM * gpu.memory_bytes)


def plan(path: Path, gpu: str = "rtx4090", context: int | None = None, kv_type: str = "f16",
         level: str | None = None, vision_on_gpu: bool | None = None, parallel: int = 1, *, device: str = "auto",
         gpu_layers: int | None = None, vision_provider: str = "auto", vision_precision: str = "fp16",
         image_max_tokens: int | None = None, draft: str | None = None) -> Plan:
    """`device`, `gpu_layers`, `vision_provider`, `image_max_tokens`, `draft` as for `run`/`serve`; the placement is what the
    runtime decides on a GPU box set up as the README says (exaone_edge.device.predicted_placement).
    `vision_on_gpu=False` is `vision_provider="cpu"`."""
    from exaone_edge.device import predicted_placement

    if vision_on_gpu is False:
        vision_provider = "cpu"
    auto = gpu_layers == "auto"  # as the engine fits --gpu-layers auto, on this card's whole memory
    placement = predicted_placement(device, None if auto else gpu_layers, vision_provider)
    source = with_draft(with_page_budget(load_source(path), image_max_tokens), draft)
    card = parse_gpu(gpu)
    if auto and placement.gpu_layers:
        from exaone_edge.fit import fit

        check_settings(kv_type, vision_precision, parallel)
        chosen = fit(source, card, placement, ctx=context or _default_context(source), gpu_layers="auto",
                     kv_type=kv_type, parallel=parallel, vision_precision=vision_precision, level=level)
        placement = replace(placement, gpu_layers=chosen.gpu_layers)
    return plan_source(source, card, context, kv_type, level, placement, parallel, vision_precision, image_max_tokens)


def _default_context(source: Source) -> int:
    return min(source.spec.decoder.max_position_embeddings, 32768)


def check_settings(kv_type: str, vision_precision: str, parallel: int) -> None:
    if parallel < 1:
        raise InputError(f"parallel must be at least 1, got {parallel}")
    if vision_precision not in VISION_WEIGHT_BYTES:
        raise InputError(f"unknown vision precision '{vision_precision}'", fix=f"Use one of {', '.join(VISION_WEIGHT_BYTES)}.")
    if kv_type not in KV_TYPES:
        raise InputError(f"unknown KV cache type '{kv_type}'", fix=f"Use one of {', '.join(KV_TYPES)}.")


def gpu_bytes(source: Source, card: Gpu, level: str, context: int, kv_type: str, placement, parallel: int = 1,
              vision_precision: str = "fp16") -> int:
    """GPU memory of one setting, headroom included (what `fits` compares with the card)."""
    components = _components(source, level, context, kv_type, placement.vision_on_gpu, parallel,
                             placement.gpu_layers, vision_precision)[0]
    return _total(components, card)


def largest_context(fits: Callable[[int], bool], limit: int) -> int:
    """The largest context ≤ `limit`, a multiple of 256, for which `fits` holds (0 if none)."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 256) // 512 * 256
        if mid <= low:
            break
        low, high = (mid, high) if fits(mid) else (low, mid - 256)
    return low


def plan_source(source: Source, card: Gpu, context: int | None, kv_type: str, level: str | None, placement,
                parallel: int = 1, vision_precision: str = "fp16", image_max_tokens: int | None = None) -> Plan:
    """`plan` for a loaded source, a card and a placement (exaone_edge.device.Placement)."""
    check_settings(kv_type, vision_precision, parallel)
    decoder = source.spec.decoder
    context = context or _default_context(source)
    if not 0 < context <= decoder.max_position_embeddings:
        raise InputError(
            f"context {context} is outside 1..{decoder.max_position_embeddings} (the model's limit)",
            fix="Pass a smaller --context.",
        )
    level = level or source.measured_level or "Q4_K_M"
    if level not in LEVELS:
        raise InputError(f"unknown level '{level}'", fix=f"Use one of {', '.join(LEVELS)}.")

    def fits(lvl: str, ctx: int) -> bool:
        return gpu_bytes(source, card, lvl, ctx, kv_type, placement, parallel, vision_precision) <= card.memory_bytes

    vision_on_gpu = placement.vision_on_gpu
    components, measured = _components(source, level, context, kv_type, vision_on_gpu, parallel, placement.gpu_layers,
                                       vision_precision)
    total = _total(components, card)
    embedding, embedding_from = _token_embedding(source, level)
    host = {"token_embedding": embedding}
    everything = _components(source, level, context, kv_type, vision_on_gpu, parallel, ALL_LAYERS, vision_precision)[0]
    if everything["decoder_weights"] > components["decoder_weights"]:
        host["decoder_weights_not_offloaded"] = everything["decoder_weights"] - components["decoder_weights"]
    low = largest_context(lambda ctx: fits(level, ctx), decoder.max_position_embeddings)
    best = next((lvl for lvl in QUALITY_ORDER if fits(lvl, context)), None)
    # One decode step reads the weights once and every sequence's KV cache, and yields `parallel` tokens.
    bytes_per_step = components["decoder_weights"] + components["kv_cache"]
    all_on_gpu = components["decoder_weights"] == everything["decoder_weights"]
    from exaone_edge.fit import recommend

    recommended = recommend(source, card, context, placement, parallel)
    ceiling = parallel * card.bandwidth_gbs * 1e9 / bytes_per_step if card.bandwidth_gbs and all_on_gpu else None
    return Plan(
        gpu=card.name, gpu_bytes=card.memory_bytes, context=context, kv_type=kv_type, parallel=parallel, level=level,
        components=components, total_bytes=total, host_components=host, host_bytes=sum(host.values()),
        token_embedding_from=embedding_from, fits=total <= card.memory_bytes, max_context=low,
        best_level=best, vision_on_gpu=vision_on_gpu, placement=placement.as_dict(), decode_tokens_per_s_ceiling=ceiling,
        weights_measured=measured,
        max_pixels=source.max_pixels, pixels_from=source.pixels_from, image_max_tokens=image_max_tokens,
        vision_attention_fused=source.fused,
        vision_precision="measured" if source.measured_vision_bytes else vision_precision,
        recommended=asdict(recommended) if recommended else None, decoder_blocks=(decoder.num_layers, head_blocks(source)),
    )
