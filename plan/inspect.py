"""`exaone-edge inspect`: what a deployer needs to know about a checkpoint, read from its files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from exaone_edge.errors import CheckpointError
from exaone_edge.levels import estimated_bytes

SIZE_LEVELS = ("BF16", "Q8_0", "Q4_K_M")


@dataclass(frozen=True)
class ParameterCounts:
    vision: int
    decoder: int  # transformer layers + final norm
    embeddings: int  # input embeddings + output head
    mtp: int

    @property
    def total(self) -> int:
        return self.vision + self.decoder + self.embeddings + self.mtp


def tensor_group(name: str) -> str:
    if name.startswith("mtp."):
        return "mtp"
    if ".visual." in f".{name}":
        return "vision"
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embeddings"
    return "decoder"


def counts_from_tensors(tensors: dict[str, TensorInfo]) -> ParameterCounts:
    totals = {"vision": 0, "decoder": 0, "embeddings": 0, "mtp": 0}
    for info in tensors.values():
        totals[tensor_group(info.name)] += info.numel
    return ParameterCounts(**totals)


def counts_from_config(checkpoint: Checkpoint) -> ParameterCounts:
    decoder = checkpoint.spec.decoder
    return ParameterCounts(
        vision=checkpoint.spec.vision.params,
        decoder=decoder.body_params,
        embeddings=decoder.embedding_params,
        mtp=decoder.mtp_params,
    )


def _compress(pattern: str) -> str:
    """'LLLGLLLG…' → 'LLLG×16' when the pattern repeats, else the runs ('L×3 G×1 …')."""
    for period in range(1, len(pattern) // 2 + 1):
        unit = pattern[:period]
        if len(pattern) % period == 0 and unit * (len(pattern) // period) == pattern:
            return f"{unit}×{len(pattern) // period}"
    return " ".join(f"{key}×{len(list(run))}" for key, run in groupby(pattern))


@dataclass(frozen=True)
class DecoderSummary:
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    attention_pattern: str  # compressed: 'LLLG×16' (L = sliding window, G = global)
    sliding_window: int | None
    global_layers: int
    vocab_size: int
    context_length: int
    rope: dict[str, Any]  # the config's rope parameters as written
    mtp_layers: int
    kv_cache_bytes_per_token_f16: int  # all layers, before window caps


@dataclass(frozen=True)
class VisionSummary:
    depth: int
    hidden_size: int
    heads: int
    kv_heads: int
    patch_size: int
    spatial_merge_size: int
    temporal_patch_size: int
    window_size: int
    full_attention_blocks: tuple[int, ...]
    out_hidden_size: int
    min_pixels: int
    max_pixels: int
    pixels_per_vision_token: int


@dataclass(frozen=True)
class TokenIds:
    image: int
    video: int
    vision_start: int | None
    vision_end: int | None
    bos: int | None
    eos: int | list[int] | None


@dataclass(frozen=True)
class EstimatedBytes:
    decoder: dict[str, int]  # level → bytes (SIZE_LEVELS)
    vision: dict[str, int]


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[str, ...]
    bytes: int
    tensors: int


@dataclass(frozen=True)
class InspectReport:
    path: str
    parameters: ParameterCounts
    decoder: DecoderSummary
    vision: VisionSummary
    tokens: TokenIds
    estimated_bytes: EstimatedBytes
    weights: WeightFiles

    def summary(self) -> str:
        return render_text(self)

    def to_dict(self) -> dict[str, Any]:
        """What `inspect --json` prints: the fields, and the parameter total."""
        data = json.loads(json.dumps(asdict(self)))  # tuples become lists, as JSON has them
        data["parameters"]["total"] = self.parameters.total
        return data


def inspect_checkpoint(directory: Path) -> InspectReport:
    checkpoint = open_checkpoint(directory, read_weights=True)
    spec, image = checkpoint.spec, checkpoint.image
    from_config = counts_from_config(checkpoint)
    counts = counts_from_tensors(checkpoint.tensors) if checkpoint.tensors else from_config
    if checkpoint.tensors and counts != from_config:
        raise CheckpointError(
            f"tensor sizes disagree with config.json (tensors {asdict(counts)}, config {asdict(from_config)})",
            path=checkpoint.path / "config.json",
            fix="The config does not describe these weights: use the checkpoint's own config.json.",
        )
    decoder, vision = spec.decoder, spec.vision
    return InspectReport(
        path=str(checkpoint.path),
        parameters=counts,
        decoder=DecoderSummary(
            layers=decoder.num_layers, hidden_size=decoder.hidden_size, intermediate_size=decoder.intermediate_size,
            attention_heads=decoder.num_heads, kv_heads=decoder.num_kv_heads, head_dim=decoder.head_dim,
            attention_pattern=_compress(decoder.pattern), sliding_window=decoder.sliding_window,
            global_layers=decoder.pattern.count("G"), vocab_size=decoder.vocab_size,
            context_length=decoder.max_position_embeddings, rope=decoder.rope, mtp_layers=decoder.nextn_layers,
            kv_cache_bytes_per_token_f16=decoder.kv_bytes_per_token_per_layer_f16 * decoder.num_layers,
        ),
        vision=VisionSummary(
            depth=vision.depth, hidden_size=vision.hidden_size, heads=vision.num_heads, kv_heads=vision.num_kv_heads,
            patch_size=vision.patch_size, spatial_merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size, window_size=vision.window_size,
            full_attention_blocks=tuple(vision.fullatt_block_indexes), out_hidden_size=vision.out_hidden_size,
            min_pixels=image.min_pixels, max_pixels=image.max_pixels,
            pixels_per_vision_token=(image.patch_size * image.merge_size) ** 2,
        ),
        tokens=TokenIds(image=spec.image_token_id, video=spec.video_token_id, vision_start=spec.vision_start_token_id,
                        vision_end=spec.vision_end_token_id, bos=decoder.bos_token_id, eos=decoder.eos_token_id),
        estimated_bytes=EstimatedBytes(
            decoder={level: estimated_bytes(counts.decoder + counts.embeddings, level) for level in SIZE_LEVELS},
            vision={"BF16": estimated_bytes(counts.vision, "BF16")},
        ),
        weights=WeightFiles(files=tuple(path.name for path in checkpoint.shards),
                            bytes=sum(path.stat().st_size for path in checkpoint.shards),
                            tensors=len(checkpoint.tensors)),
    )


def _human(count: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(count) < 1000:
            return f"{count:.3g}{suffix}{unit}" if suffix else f"{count:.0f}{unit}"
        count /= 1000
    return f"{count:.3g}P{unit}"


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def render_text(report: InspectReport) -> str:
    p, d, v, w = report.parameters, report.decoder, report.vision, report.weights
    lines = [
        f"EXAONE 4.5 checkpoint: {report.path}",
        f"parameters   total {_human(p.total)}: vision {_human(p.vision)}, decoder {_human(p.decoder)}, "
        f"embeddings {_human(p.embeddings)}, MTP head {_human(p.mtp)}",
        f"decoder      {d.layers} layers, hidden {d.hidden_size}, FFN {d.intermediate_size}, "
        f"{d.attention_heads} heads / {d.kv_heads} KV heads × {d.head_dim}",
        f"attention    {d.attention_pattern} (L = sliding window {d.sliding_window}, G = global), "
        f"{d.global_layers} global layers",
        f"vocabulary   {d.vocab_size}, context {d.context_length} tokens, rope {d.rope.get('rope_type', 'default')} "
        f"θ={d.rope.get('rope_theta')}, MTP layers {d.mtp_layers}",
        f"KV cache     {_human(d.kv_cache_bytes_per_token_f16, 'B')} per token at f16 (all layers, before window caps)",
        f"vision       depth {v.depth}, hidden {v.hidden_size}, {v.heads} heads / {v.kv_heads} KV, "
        f"patch {v.patch_size}, merge {v.spatial_merge_size}, temporal {v.temporal_patch_size}, "
        f"window {v.window_size}, full-attention blocks {list(v.full_attention_blocks)}",
        f"images       {v.min_pixels}–{v.max_pixels} pixels, one vision token per "
        f"{v.pixels_per_vision_token} pixels",
        "decoder size " + ", ".join(f"{level} ≈ {_gib(size)}" for level, size in report.estimated_bytes.decoder.items())
        + " (estimated from bits per weight)",
        f"weights      {len(w.files)} files, {_gib(w.bytes)}, {w.tensors} tensors",
    ]
    return "\n".join(lines)
