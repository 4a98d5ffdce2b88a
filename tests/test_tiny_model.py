"""The shared fixture: a real-class EXAONE 4.5 checkpoint with the structure every stage depends on."""

from __future__ import annotations

import json

import pytest

from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.files import sha256_file
from exaone_edge.spec import RELEASED_33B_CONFIG
from exaone_edge.fixtures.tiny_model import build_tiny_model


def test_structure_matches_what_llama_cpp_and_the_stages_need(tiny_model_dir):
    checkpoint = open_checkpoint(tiny_model_dir)
    decoder, vision = checkpoint.spec.decoder, checkpoint.spec.vision
    assert decoder.num_layers == 64  # llama.cpp enables sliding-window attention only at 64
    assert decoder.pattern == "LLLG" * 16
    assert decoder.hidden_size % 256 == 0 and decoder.intermediate_size % 256 == 0
    assert decoder.num_heads * decoder.head_dim % 256 == 0
    assert decoder.rope["rope_type"] == "llama3"
    assert decoder.nextn_layers == 1 and "mtp.layers.0.self_attn.q_proj.weight" in checkpoint.tensors
    assert not decoder.tie_word_embeddings
    assert decoder.rope["factor"] == 16 and decoder.rope["low_freq_factor"] == 1 and decoder.rope["high_freq_factor"] == 4
    assert decoder.bos_token_id == 1 and decoder.eos_token_id == 53 and decoder.pad_token_id == 0
    spec = checkpoint.spec
    assert (spec.image_token_id, spec.video_token_id, spec.vision_start_token_id, spec.vision_end_token_id) == (67, 68, 73, 74)
    # the released tower's shape at tiny widths (exaone_edge/data/exaone45_33b_config.json)
    assert vision.num_heads == 4 * vision.num_kv_heads  # GQA 4:1, as 32 / 8
    assert (vision.patch_size, vision.window_size, vision.spatial_merge_size) == (14, 112, 2)
    full = vision.fullatt_block_indexes
    assert full[-1] == vision.depth - 1 and len(full) >= 2  # the last block is full, as block 27 of 28
    assert len({b - a for a, b in zip((-1, *full), full)}) == 1  # evenly spaced, as every 7th
    assert full[0] >= 2  # each full block follows a run of windowed ones
    assert checkpoint.image.patch_size == vision.patch_size
    assert checkpoint.image.min_pixels % 28**2 == 0 and checkpoint.image.max_pixels % 28**2 == 0
    assert all(name in checkpoint.tensors for name in ("mtp.fc.weight", "mtp.norm.weight", "mtp.pre_fc_norm_hidden.weight"))
    assert sum(path.stat().st_size for path in tiny_model_dir.iterdir()) < 60 * 2**20


def test_bench_preset_has_the_released_widths():
    """Built on the meta device (no memory): every per-block width is the released one, only depths differ."""
    import torch
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration, PreTrainedTokenizerFast

    from exaone_edge.spec import model_spec
    from exaone_edge.fixtures.tiny_model import PRESETS, _hf_tokenizer, preset_config

    path = RELEASED_33B_CONFIG
    released = model_spec(json.loads(path.read_text()), path)
    config = preset_config(PRESETS["bench"], _hf_tokenizer(PreTrainedTokenizerFast), Exaone4_5_Config)
    bench = model_spec(config.to_dict(), path)
    same = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")
    assert all(getattr(bench.decoder, f) == getattr(released.decoder, f) for f in same)
    assert bench.decoder.rope == released.decoder.rope
    assert bench.decoder.nextn_layers == released.decoder.nextn_layers == 1  # the MTP head, for timing drafts
    assert bench.decoder.mtp_params == released.decoder.mtp_params
    for field in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "patch_size", "temporal_patch_size",
                  "spatial_merge_size", "window_size", "out_hidden_size"):
        assert getattr(bench.vision, field) == getattr(released.vision, field), field
    assert bench.vision.fullatt_block_indexes == (6,) and bench.vision.depth == 7  # one period of 6, 13, 20, 27
    with torch.device("meta"):
        model = Exaone4_5_ForConditionalGeneration(config)
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.visual.")) == bench.vision.params
    # 7 of the released 28 blocks: the difference is exactly 21 released blocks. One block: fused qkv
    # 2048 × (32 + 2·8)·64 + bias, proj 2048² + bias, gate/up 2 × (2048 × 5120 + 5120), down 5120 × 2048 + 2048,
    # two norms 2 × 2048.
    block = 2048 * 3072 + 3072 + 2048 * 2048 + 2048 + 2 * (2048 * 5120 + 5120) + 5120 * 2048 + 2048 + 2 * 2048
    assert released.vision.params - bench.vision.params == 21 * block == 21 * 41_964_544
    assert bench.decoder.max_position_embeddings == released.decoder.max_position_embeddings


def test_norms_are_randomised_so_swaps_show(tiny_model_dir):
    from safetensors import safe_open

    checkpoint = open_checkpoint(tiny_model_dir)
    name = "model.language_model.layers.0.post_attention_layernorm.weight"
    with safe_open(checkpoint.tensors[name].file, framework="pt") as shard:
        weight = shard.get_tensor(name).float()
    assert weight.std() > 0.05


def test_tokenizer_has_exaone_special_tokens_and_hangul(tiny_model_dir):
    from transformers import AutoTokenizer

    from exaone_edge.quantize.gguf_vocab import pre_tokenizer_name

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"] == 67
    assert tokenizer.convert_tokens_to_ids("<vision>") == config["vision_start_token_id"] == 73
    assert tokenizer.eos_token == "<|endofturn|>" and tokenizer.eos_token_id == 53
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id) == (1, 0)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|assistant|>")] == [50, 51, 52]
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>")] == [54, 55]
    pre = json.loads((tiny_model_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre_tokenizer_name(pre, tiny_model_dir) == "exaone-moe"  # EXAONE 4.5's, see tiny_tokenizer.py
    text = "합계 금액 1,823,250원 — Total due 18,232.50"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "합계는?"}]}]
    # EXAONE 4.5's format (a newline after `</vision>`); thinking is on unless enable_thinking=False
    # (exact strings and their sources: tests/test_chat_template.py).
    rendered = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>\n<vision><|image_pad|></vision>\n합계는?<|endofturn|>\n<|assistant|>\n<think>\n"
    rendered = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert rendered == "<|user|>\n<vision><|image_pad|></vision>\n합계는?<|endofturn|>\n<|assistant|>\n<think>\n\n</think>\n\n"


def test_loads_and_runs_in_transformers(tiny_model_dir):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    model = Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 200, 300, 400]])).logits
    assert logits.shape == (1, 4, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all() and logits[0, -1].std() > 0


@pytest.mark.parametrize("seed", [0])
def test_same_seed_gives_identical_files(tiny_model_dir, tmp_path, seed):
    again = build_tiny_model(tmp_path / "again", seed=seed).path
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert sha256_file(tiny_model_dir / name) == sha256_file(again / name), name
