"""What an EXAONE 4.5 checkpoint is, read from its config files: sizes, patterns and parameter counts.

Nothing here is hard-coded for the 33B model; every number comes from config.json and
preprocessor_config.json, so the tiny test model and the real one go through the same code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.errors import CheckpointError

MODEL_TYPE = "exaone4_5"
NEXTN_KEY = "num_nextn_predict_layers"
# The released 33B's config.json, assembled from public sources (each value's source: exaone45_33b_SOURCES.md beside it).
RELEASED_33B_CONFIG = Path(__file__).parent / "data" / "exaone45_33b_config.json"


@dataclass(frozen=True)
class DecoderSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int | None
    max_position_embeddings: int
    rope: dict[str, Any]
    rms_norm_eps: float
    nextn_layers: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    pad_token_id: int | None

    @property
    def pattern(self) -> str:
        """One letter a layer: L for sliding-window (local), G for full (global)."""
        return "".join("L" if kind == "sliding_attention" else "G" for kind in self.layer_types)

    @property
    def layer_params(self) -> int:
        hidden, heads_out, kv_out = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = hidden * heads_out * 2 + hidden * kv_out * 2 + 2 * self.head_dim  # q, o, k, v, qk-norms
        mlp = 3 * hidden * self.intermediate_size
        return attention + mlp + 2 * hidden  # post-attention and post-feed-forward norms

    @property
    def embedding_params(self) -> int:
        tables = 1 if self.tie_word_embeddings else 2
        return tables * self.vocab_size * self.hidden_size

    @property
    def body_params(self) -> int:
        """Transformer layers and final norm, without embeddings or the MTP head."""
        return self.num_layers * self.layer_params + self.hidden_size

    @property
    def mtp_params(self) -> int:
        per_head = self.layer_params + 2 * self.hidden_size * self.hidden_size + 3 * self.hidden_size
        return self.nextn_layers * per_head

    @property
    def kv_bytes_per_token_per_layer_f16(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * 2


@dataclass(frozen=True)
class VisionSpec:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    fullatt_block_indexes: tuple[int, ...]
    out_hidden_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def params(self) -> int:
        hidden, inter = self.hidden_size, self.intermediate_size
        patch_embed = self.in_channels * self.temporal_patch_size * self.patch_size**2 * hidden
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        attention = hidden * qkv_out + qkv_out + hidden * hidden + hidden
        mlp = 2 * (hidden * inter + inter) + inter * hidden + hidden
        block = attention + mlp + 2 * hidden
        merged = hidden * self.spatial_merge_size**2
        merger = hidden + merged * merged + merged + merged * self.out_hidden_size + self.out_hidden_size
        return patch_embed + self.depth * block + merger


@dataclass(frozen=True)
class ImageSpec:
    min_pixels: int
    max_pixels: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelSpec:
    decoder: DecoderSpec
    vision: VisionSpec
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int | None
    vision_end_token_id: int | None


def _field(section: dict[str, Any], key: str, source: Path, kind: type = int, default: Any = ...) -> Any:
    if key not in section:
        if default is not ...:
            return default
        raise CheckpointError(f"field '{key}' is missing", path=source, fix="Use the config.json shipped with the checkpoint.")
    value = section[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CheckpointError(f"field '{key}' must be an integer, got {value!r}", path=source)
    return value


_warned: set[tuple[str, str]] = set()


def _warn_once(source: Path, message: str) -> None:
    """One stderr line naming the file, once per file and message (configs are read more than once a run)."""
    if (str(source), message) not in _warned:
        _warned.add((str(source), message))
        sys.stderr.write(f"warning: {source}: {message}\n")


def _layer_types_from_pattern(pattern: Any, window: Any, layers: int) -> list[str]:
    """transformers' Exaone4Config rule: every `pattern`-th layer global (an int), or an "LLLG" string repeated."""
    if not window or not pattern:
        return ["full_attention"] * layers
    if isinstance(pattern, str):
        letters = (pattern * (layers // len(pattern) + 1))[:layers]
        return ["full_attention" if letter == "G" else "sliding_attention" for letter in letters]
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    return ["full_attention"] * layers


def decoder_spec(text: dict[str, Any], source: Path, nextn_layers: int | None = None) -> DecoderSpec:
    """The decoder from `text_config`; `nextn_layers` (MTP layers) when the caller read it elsewhere."""
    layers = _field(text, "num_hidden_layers", source)
    heads = _field(text, "num_attention_heads", source)
    hidden = _field(text, "hidden_size", source)
    layer_types = text.get("layer_types")
    if layer_types is None:
        layer_types = _layer_types_from_pattern(text.get("sliding_window_pattern"), text.get("sliding_window"), layers)
    nextn = _field(text, NEXTN_KEY, source, default=0) if nextn_layers is None else nextn_layers
    if 0 < len(layer_types) - layers <= max(nextn, 1):
        # Reported for the released FP8 repo (65 for 64): the MTP layer is listed too. The decoder is the first `layers`.
        _warn_once(source, f"text_config.layer_types has {len(layer_types)} entries for {layers} layers "
                           f"(the extra one is taken for the MTP layer); using the first {layers}")
        layer_types = layer_types[:layers]
    if len(layer_types) != layers:
        raise CheckpointError(
            f"text_config.layer_types has {len(layer_types)} entries for {layers} layers", path=source
        )
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("rope_theta", text.get("rope_theta", 10000.0))
    return DecoderSpec(
        vocab_size=_field(text, "vocab_size", source),
        hidden_size=hidden,
        intermediate_size=_field(text, "intermediate_size", source),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_field(text, "num_key_value_heads", source, default=heads),
        head_dim=_field(text, "head_dim", source, default=hidden // heads),
        layer_types=tuple(layer_types),
        sliding_window=text.get("sliding_window"),
        max_position_embeddings=_field(text, "max_position_embeddings", source),
        rope=rope,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
        nextn_layers=nextn,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        bos_token_id=text.get("bos_token_id"),
        eos_token_id=text.get("eos_token_id"),
        pad_token_id=text.get("pad_token_id"),
    )


def vision_spec(vision: dict[str, Any], source: Path) -> VisionSpec:
    heads = _field(vision, "num_heads", source)
    return VisionSpec(
        depth=_field(vision, "depth", source),
        hidden_size=_field(vision, "hidden_size", source),
        intermediate_size=_field(vision, "intermediate_size", source),
        num_heads=heads,
        num_kv_heads=_field(vision, "num_key_value_heads", source, default=heads),
        in_channels=_field(vision, "in_channels", source, default=3),
        patch_size=_field(vision, "patch_size", source),
        temporal_patch_size=_field(vision, "temporal_patch_size", source),
        spatial_merge_size=_field(vision, "spatial_merge_size", source),
        window_size=_field(vision, "window_size", source),
        fullatt_block_indexes=tuple(vision.get("fullatt_block_indexes") or ()),
        out_hidden_size=_field(vision, "out_hidden_size", source),
    )


def _nextn_layers(config: dict[str, Any], source: Path) -> int:
    """MTP layers, from `text_config` or the top level: vLLM reads the top level, transformers' layout nests it,
    some ports write both (shared/NOTES.md)."""
    values = {where: _field(section, NEXTN_KEY, source, default=None)
              for where, section in (("top level", config), ("text_config", config.get("text_config") or {}))}
    found = {value for value in values.values() if value is not None}
    if len(found) > 1:
        raise CheckpointError(f"{NEXTN_KEY} is {values['top level']} at the top level but {values['text_config']} in "
                              "text_config", path=source, fix="Make both say how many mtp.layers.* the checkpoint has.")
    return found.pop() if found else 0


def model_spec(config: dict[str, Any], source: Path) -> ModelSpec:
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"model_type is {config.get('model_type')!r}, expected '{MODEL_TYPE}'",
            path=source,
            fix="Point at an EXAONE 4.5 checkpoint (e.g. LGAI-EXAONE/EXAONE-4.5-33B).",
        )
    for section in ("text_config", "vision_config"):
        if not isinstance(config.get(section), dict):
            raise CheckpointError(f"field '{section}' is missing or not an object", path=source)
    return ModelSpec(
        decoder=decoder_spec(config["text_config"], source, _nextn_layers(config, source)),
        vision=vision_spec(config["vision_config"], source),
        image_token_id=_field(config, "image_token_id", source, default=67),
        video_token_id=_field(config, "video_token_id", source, default=68),
        vision_start_token_id=config.get("vision_start_token_id"),
        vision_end_token_id=config.get("vision_end_token_id"),
    )


def image_spec(preprocessor: dict[str, Any], source: Path) -> ImageSpec:
    size = preprocessor.get("size") or {}
    min_pixels = preprocessor.get("min_pixels", size.get("shortest_edge"))
    max_pixels = preprocessor.get("max_pixels", size.get("longest_edge"))
    if not isinstance(min_pixels, int) or not isinstance(max_pixels, int):
        raise CheckpointError("min/max pixels are missing (size.shortest_edge / size.longest_edge)", path=source)
    return ImageSpec(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=_field(preprocessor, "patch_size", source),
        merge_size=_field(preprocessor, "merge_size", source),
        temporal_patch_size=_field(preprocessor, "temporal_patch_size", source),
        image_mean=tuple(preprocessor.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
        image_std=tuple(preprocessor.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
    )
