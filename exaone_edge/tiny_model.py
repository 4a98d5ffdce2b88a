"""Build a small random EXAONE 4.5 checkpoint with the real transformers classes, offline.

Both presets copy the released EXAONE 4.5 33B's structure (exaone_edge/data/exaone45_33b_config.json, sources
in exaone_edge/data/exaone45_33b_SOURCES.md). The decoder: exactly 64 layers (llama.cpp turns on sliding-window attention
only at 64), the LLLG pattern, llama3 rope with the released factor / low / high, QK-norm, an MTP head,
rows of 256 so K-quants apply. The vision tower: patch 14, GQA 4:1, window 112, a full-attention block
after every run of windowed ones with the last block full, and the merger. Special-token ids are the
released ones (tiny_tokenizer.py puts the tokens there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.errors import InputError, require
from exaone_edge.files import atomic_dir, check_output_dir
from exaone_edge.tiny_tokenizer import SPECIAL_ROLES, chat_template, train_tokenizer

# Sizes of the tiny model: small enough to build in seconds, shaped like the real one.
TEXT = dict(
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=64,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=64,
    sliding_window=32,
    sliding_window_pattern=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    num_nextn_predict_layers=1,
    # The released rope (llama3, θ 1e6, factor 16, low 1, high 4). Its original context is scaled with the
    # model: the release has 262144 / 8192 = 32× its original context, so 4096 / 32 = 128 here, and a tiny
    # prompt with one page (a few hundred positions) runs well past it, as a long document does on the 33B.
    # All three llama3 bands still hold frequencies at head_dim 64: 4 kept, 3 smoothed, 25 divided by 16.
    rope_parameters=dict(
        rope_type="llama3",
        rope_theta=1_000_000.0,
        factor=16.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=128,
    ),
)
VISION = dict(
    depth=6,
    hidden_size=128,
    intermediate_size=256,
    num_heads=8,
    num_key_value_heads=2,  # GQA 4:1, as the released 32 / 8
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,  # 4 × 4 merge units a window, as released
    # The release makes every 7th of 28 blocks full (6, 13, 20, 27): runs of windowed blocks, the last block
    # full. Scaled to 6 blocks: every 3rd, so each full block follows two windowed ones.
    fullatt_block_indexes=[2, 5],
    hidden_act="silu",
)
MERGED_PATCH = 28  # patch 14 × merge 2: one image row (vision token) per 28 × 28 pixels
IMAGE = dict(min_pixels=MERGED_PATCH**2 * 4, max_pixels=MERGED_PATCH**2 * 256)

# The bench preset: EXAONE 4.5's real per-layer widths (exaone_edge/data/exaone45_33b_config.json) with few
# layers, so speed and memory are dominated by real matrix shapes yet build and run in minutes. Two
# decoder layers can't carry llama.cpp's 64-layer sliding-window switch, so every layer is global
# (with RoPE) on both sides, which keeps llama.cpp and transformers computing the same thing.
BENCH_TEXT = dict(
    TEXT,
    hidden_size=5120,
    intermediate_size=27392,
    num_hidden_layers=2,
    num_attention_heads=40,
    num_key_value_heads=8,
    head_dim=128,
    sliding_window=None,
    sliding_window_pattern=None,
    layer_types=["full_attention"] * 2,
    # No MTP head: llama.cpp loads it but never runs it (NOTES.md), so it would add 0.54B parameters to
    # every build and conversion and nothing to any timing.
    num_nextn_predict_layers=0,
    max_position_embeddings=262144,  # the released context and rope
    rope_parameters=dict(TEXT["rope_parameters"], original_max_position_embeddings=8192),
)
BENCH_VISION = dict(
    VISION,
    depth=7,  # one period of the released tower (6 windowed blocks, then a full one): a page costs ¼ of 28 blocks
    hidden_size=2048,
    intermediate_size=5120,
    num_heads=32,
    num_key_value_heads=8,
    fullatt_block_indexes=[6],
)
# 1280 image rows at most (vLLM's EXAONE 4.5 example cap): an A4 page at 100 dpi (827 × 1169) fits unscaled.
BENCH_IMAGE = dict(min_pixels=MERGED_PATCH**2 * 4, max_pixels=MERGED_PATCH**2 * 1280)


@dataclass(frozen=True)
class Preset:
    text: dict
    vision: dict
    image: dict
    shard_size: str
    description: str


PRESETS = {
    "tiny": Preset(TEXT, VISION, IMAGE, "20MB", "64-layer hidden-256 decoder with MTP head, 6-block vision tower"),
    "bench": Preset(BENCH_TEXT, BENCH_VISION, BENCH_IMAGE, "1GB",
                    "real EXAONE 4.5 widths: 2 decoder layers (hidden 5120, FFN 27392), "
                    "7 vision blocks (hidden 2048, FFN 5120, 32 / 8 heads, patch 14)"),
}
VOCAB_SIZE = 2048
KIND = "tiny-model"  # in its output marker: a checkpoint has no manifest.json
NORM_JITTER = 0.2  # norms away from 1.0 so a swapped or dropped norm changes every output


@dataclass(frozen=True)
class TinyModelResult:
    path: Path
    parameters: int
    bytes_on_disk: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "parameters": self.parameters, "bytes": self.bytes_on_disk}

    def summary(self) -> str:
        return f"wrote {self.path} ({self.parameters:,} parameters, {self.bytes_on_disk / 2**20:.1f} MiB)"


def build_tiny_model(out: Path, seed: int = 0, overwrite: bool = False, preset: str = "tiny") -> TinyModelResult:
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}'", fix=f"Use one of: {', '.join(PRESETS)}.")
    chosen = PRESETS[preset]
    check_output_dir(Path(out), overwrite=overwrite, kind=KIND)  # before torch loads
    require("torch", "export")
    require("transformers", "export")
    import torch
    from transformers import (
        Exaone4_5_Config,
        Exaone4_5_ForConditionalGeneration,
        PreTrainedTokenizerFast,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _hf_tokenizer(PreTrainedTokenizerFast)
    config = preset_config(chosen, tokenizer, Exaone4_5_Config)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # the bench preset is 1.2B parameters: never hold it in fp32
    try:
        model = Exaone4_5_ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_norm(name):
                param.copy_(1.0 + NORM_JITTER * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=chosen.vision["patch_size"],
        temporal_patch_size=chosen.vision["temporal_patch_size"],
        merge_size=chosen.vision["spatial_merge_size"],
        size={"shortest_edge": chosen.image["min_pixels"], "longest_edge": chosen.image["max_pixels"]},
    )

    with atomic_dir(out, overwrite=overwrite, kind=KIND) as tmp:
        model.save_pretrained(tmp, max_shard_size=chosen.shard_size)
        # Exaone4_5_Processor cannot be built without torchvision (its video processor), so its
        # parts are saved the way the published checkpoint ships them.
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(chat_template(), encoding="utf-8")
        (tmp / "processor_config.json").write_text(json.dumps({"processor_class": "Exaone4_5_Processor"}) + "\n")
        mtp_params = _add_mtp_head(tmp, config.text_config, generator) if config.text_config.num_nextn_predict_layers else 0
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
    params = sum(p.numel() for p in model.parameters()) + mtp_params
    return TinyModelResult(path=Path(out), parameters=params, bytes_on_disk=size)


def preset_config(chosen: Preset, tokenizer, config_class):
    """The preset's `Exaone4_5_Config`, special-token ids taken from the tokenizer."""
    return config_class(
        text_config=dict(
            model_type="exaone4",
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            **chosen.text,
        ),
        vision_config=dict(out_hidden_size=chosen.text["hidden_size"], **chosen.vision),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<vision>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("</vision>"),
        tie_word_embeddings=False,
    )


def _is_norm(name: str) -> bool:
    module = name.rsplit(".", 2)[-2]
    return name.endswith(".weight") and ("norm" in module or module.startswith("ln_"))


def _hf_tokenizer(tokenizer_class):
    tokenizer = tokenizer_class(
        tokenizer_object=train_tokenizer(VOCAB_SIZE, pre_tokenizer="exaone-moe"),  # EXAONE 4.5's: see tiny_tokenizer
        **SPECIAL_ROLES,
        model_max_length=TEXT["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    return tokenizer  # added tokens keep the special flags tokenizer.json gives them


def _add_mtp_head(directory: Path, text_config, generator) -> int:
    """transformers does not model the MTP head, so write its tensors as the real checkpoint has them."""
    import torch
    from safetensors.torch import save_file

    hidden = text_config.hidden_size
    q_out = text_config.num_attention_heads * text_config.head_dim
    kv_out = text_config.num_key_value_heads * text_config.head_dim
    inter = text_config.intermediate_size
    head = text_config.head_dim

    def weight(*shape: int) -> torch.Tensor:
        return (0.02 * torch.randn(shape, generator=generator)).to(torch.bfloat16)

    def norm(size: int) -> torch.Tensor:
        return (1.0 + NORM_JITTER * torch.randn(size, generator=generator)).to(torch.bfloat16)

    layer = "mtp.layers.0."
    tensors = {
        "mtp.fc.weight": weight(hidden, 2 * hidden),
        "mtp.pre_fc_norm_embedding.weight": norm(hidden),
        "mtp.pre_fc_norm_hidden.weight": norm(hidden),
        "mtp.norm.weight": norm(hidden),
        layer + "self_attn.q_proj.weight": weight(q_out, hidden),
        layer + "self_attn.k_proj.weight": weight(kv_out, hidden),
        layer + "self_attn.v_proj.weight": weight(kv_out, hidden),
        layer + "self_attn.o_proj.weight": weight(hidden, q_out),
        layer + "self_attn.q_norm.weight": norm(head),
        layer + "self_attn.k_norm.weight": norm(head),
        layer + "mlp.gate_proj.weight": weight(inter, hidden),
        layer + "mlp.up_proj.weight": weight(inter, hidden),
        layer + "mlp.down_proj.weight": weight(hidden, inter),
        layer + "post_attention_layernorm.weight": norm(hidden),
        layer + "post_feedforward_layernorm.weight": norm(hidden),
    }
    shard = "model-mtp.safetensors"
    save_file(tensors, str(directory / shard), metadata={"format": "pt"})
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({name: shard for name in tensors})
    index_path.write_text(json.dumps(index, indent=2))
    return sum(t.numel() for t in tensors.values())
