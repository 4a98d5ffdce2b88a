"""Settings that fit a GPU, from `plan`'s memory model: `--ctx auto` / `--gpu-layers auto` for the engine (run,
serve, validate, bench), measured against the GPU's free memory as llama.cpp reports it, and `plan`'s
recommendation of decoder level, KV cache type, vision precision and page budget for a context.

Auto fitting follows llama.cpp's own `--fit` (common/fit.cpp at 0c1e570): keep every layer on the GPU and give the
context what is left; when even `MIN_CONTEXT` does not fit that way, set the context to it and move layers off the
GPU (llama.cpp's n_gpu_layers: the output layer first, exaone_edge.device.gpu_layer_split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from exaone_edge.device import describe_gpu_layers
from exaone_edge.errors import InputError
from exaone_edge.llama import ALL_LAYERS
from exaone_edge.memory import (GIB, QUALITY_ORDER, Gpu, Source, gpu_bytes, head_blocks, largest_context, load_source,
                              with_draft, with_page_budget)

AUTO = "auto"
MIN_CONTEXT = 4096  # llama.cpp's fit_params_min_ctx (common/common.h): the context is not shrunk below this first
# plan's recommendation tries, for each level best first, these (KV type, vision precision, page budget) steps, the
# least lossy first: pages cut to 1,280 rows (the EXAONE 4.5 processor's default max_pixels, 1280·28·28), a q8_0 KV
# cache (llama.cpp's near-lossless 8-bit cache), 8-bit vision weights (int8w: mean row cosine 0.99984 at the released
# widths, docs/export.md). Only when no level fits that way does it try a q4_0 cache. int4 vision weights are never
# recommended (cosine 0.962 at the released widths, under export's 0.98 bar), nor int8 (static QDQ: the CPU's).
STEPS = (("f16", "fp16", None), ("f16", "fp16", 1280), ("q8_0", "fp16", 1280), ("q8_0", "int8w", 1280))
LAST_RESORT = (("q4_0", "int8w", 1280),)


@dataclass(frozen=True)
class Fit:
    """What `--ctx auto` / `--gpu-layers auto` chose (Engine.fit; /health reports it)."""

    n_ctx: int
    gpu_layers: int  # llama.cpp's n_gpu_layers: -1 every layer, N the output layer and N - 1 blocks from the last
    asked: dict[str, int | str | None]  # the ctx and gpu_layers asked for
    free_bytes: int | None  # the GPU's free memory it was fitted to (None: the decoder has no GPU here)
    planned_bytes: int  # plan's GPU total for the choice, headroom included
    decoder_blocks: tuple[int, int] = (0, 0)  # (repeating layers, MTP blocks) in the decoder file

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decoder_blocks": list(self.decoder_blocks)}  # as JSON carries it (/health)

    def describe(self) -> str:
        layers = describe_gpu_layers(self.gpu_layers, *self.decoder_blocks)
        room = (f"{self.planned_bytes / GIB:.2f} GiB planned of {self.free_bytes / GIB:.2f} GiB free"
                if self.free_bytes is not None else "no GPU for the decoder")
        return f"context {self.n_ctx:,}, {layers} on the GPU ({room}; asked ctx={self.asked['ctx']}, " \
               f"gpu_layers={self.asked['gpu_layers']})"


def fit(source: Source, card: Gpu, placement, *, ctx: int | str, gpu_layers: int | str, kv_type: str,
        parallel: int = 1, vision_precision: str = "fp16", level: str | None = None) -> Fit:
    """The largest context and layer split of `source` that fit `card.memory_bytes` (the free memory) with
    `placement`'s vision encoder, as plan counts them; `ctx` / `gpu_layers` are a number or AUTO."""
    blocks = (source.spec.decoder.num_layers, head_blocks(source))
    layers_total = sum(blocks)
    limit = source.spec.decoder.max_position_embeddings
    level = level or source.measured_level or "Q4_K_M"

    def total(n_ctx: int, layers: int) -> int:
        return gpu_bytes(source, card, level, n_ctx, kv_type, replace(placement, gpu_layers=layers), parallel,
                         vision_precision)

    candidates = [ALL_LAYERS, *range(layers_total, -1, -1)] if gpu_layers == AUTO else [int(gpu_layers)]
    asked = {"ctx": ctx, "gpu_layers": gpu_layers}
    if ctx == AUTO:
        best = largest_context(lambda n: total(n, candidates[0]) <= card.memory_bytes, limit)
        if best >= min(MIN_CONTEXT, limit) or (best and len(candidates) == 1):
            return Fit(best, candidates[0], asked, card.memory_bytes, total(best, candidates[0]), blocks)
        n_ctx = min(MIN_CONTEXT, limit)
    else:
        n_ctx = int(ctx)
    layers = next((n for n in candidates if total(n_ctx, n) <= card.memory_bytes), None)
    if layers is None:
        least = total(n_ctx if ctx != AUTO else 256, candidates[-1])
        raise InputError(f"the GPU has {card.memory_bytes / GIB:.2f} GiB free; plan needs {least / GIB:.2f} GiB at "
                         f"context {n_ctx if ctx != AUTO else 256} with {candidates[-1]} GPU layers",
                         fix="Free GPU memory, lower --image-max-tokens, use --vision-provider cpu, or a smaller "
                             "--ctx or --gpu-layers.")
    return Fit(n_ctx, layers, asked, card.memory_bytes, total(n_ctx, layers), blocks)


def fit_engine(bundle_dir: Path, *, ctx: int | str | None, gpu_layers: int | str | None, device: str,
               vision_provider: str, has_vision: bool, image_max_tokens: int | None, kv_type: str, parallel: int,
               default_ctx: int, draft: str | None = None) -> Fit:
    """`fit` for an engine about to load `bundle_dir`, against the free memory llama.cpp reports for the GPU
    (exaone_edge.llama.gpu_memory, ggml_backend_dev_memory); measured before anything is loaded, so plan's model
    counts every part. Without a GPU for the decoder: the default context, no layer."""
    from exaone_edge import llama
    from exaone_edge.device import choose_placement

    asked = {"ctx": ctx, "gpu_layers": gpu_layers}
    placement = choose_placement(device, None if gpu_layers == AUTO else gpu_layers, vision_provider,
                                 has_vision=has_vision)
    memory = llama.gpu_memory() if placement.gpu_layers != 0 else None
    if memory is None:
        n_ctx = default_ctx if ctx in (None, AUTO) else int(ctx)
        return Fit(n_ctx, placement.gpu_layers, asked, None, 0)
    source = with_draft(with_page_budget(load_source(bundle_dir), image_max_tokens), draft)
    card = Gpu("free", memory[0], None)
    chosen = fit(source, card, placement, ctx=default_ctx if ctx is None else ctx,
                 gpu_layers=placement.gpu_layers if gpu_layers is None else gpu_layers, kv_type=kv_type,
                 parallel=parallel)
    return replace(chosen, asked=asked)


@dataclass(frozen=True)
class Recommendation:
    level: str
    kv_type: str
    vision_precision: str  # "measured" for a bundle's own export
    image_max_tokens: int | None  # None: the pages the source allows
    total_bytes: int
    max_context: int  # at this setting

    def flags(self) -> str:
        pages = f" --image-max-tokens {self.image_max_tokens}" if self.image_max_tokens else ""
        vision = "" if self.vision_precision == "measured" else f" --vision-precision {self.vision_precision}"
        return f"--level {self.level} --kv-type {self.kv_type}{vision}{pages}"


def recommend(source: Source, card: Gpu, context: int, placement, parallel: int = 1) -> Recommendation | None:
    """The best setting (STEPS, then LAST_RESORT, each over QUALITY_ORDER) that fits `context` on `card`; a bundle's
    level and vision export are what it holds."""
    levels = [source.measured_level] if source.measured_level else list(QUALITY_ORDER)
    vision_fixed = bool(source.measured_vision_bytes) or not placement.vision_on_gpu
    for steps in (STEPS, LAST_RESORT):
        for level in levels:
            for kv_type, precision, pages in steps:
                if vision_fixed and precision != "fp16":
                    continue
                budgeted = with_page_budget(source, pages)

                def used(n_ctx: int) -> int:
                    return gpu_bytes(budgeted, card, level, n_ctx, kv_type, placement, parallel, precision)

                if used(context) <= card.memory_bytes:
                    limit = source.spec.decoder.max_position_embeddings
                    most = largest_context(lambda n: used(n) <= card.memory_bytes, limit)
                    precision_name = "measured" if source.measured_vision_bytes else precision
                    return Recommendation(level, kv_type, precision_name, pages, used(context), most)
    return None
