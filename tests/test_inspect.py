"""`exaone-edge inspect`: correct counts, published sizes, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.plan.inspect import inspect_checkpoint
from exaone_edge.spec import RELEASED_33B_CONFIG

DATA = RELEASED_33B_CONFIG.parent


def test_counts_equal_the_sum_of_tensor_sizes(tiny_model_dir):
    report = inspect_checkpoint(tiny_model_dir)
    checkpoint = open_checkpoint(tiny_model_dir)
    assert report.parameters.total == sum(info.numel for info in checkpoint.tensors.values())
    vision = sum(i.numel for n, i in checkpoint.tensors.items() if n.startswith("model.visual."))
    mtp = sum(i.numel for n, i in checkpoint.tensors.items() if n.startswith("mtp."))
    embeddings = sum(i.numel for n, i in checkpoint.tensors.items() if "embed_tokens" in n or n == "lm_head.weight")
    assert report.parameters.vision == vision
    assert report.parameters.mtp == mtp
    assert report.parameters.embeddings == embeddings
    assert report.decoder.attention_pattern == "LLLG×16"


# `inspect --json`'s keys, pinned: scripts and users read them.
JSON_KEYS = {
    "path": None,
    "parameters": {"vision", "decoder", "embeddings", "mtp", "total"},
    "decoder": {"layers", "hidden_size", "intermediate_size", "attention_heads", "kv_heads", "head_dim",
                "attention_pattern", "sliding_window", "global_layers", "vocab_size", "context_length", "rope",
                "mtp_layers", "kv_cache_bytes_per_token_f16"},
    "vision": {"depth", "hidden_size", "heads", "kv_heads", "patch_size", "spatial_merge_size", "temporal_patch_size",
               "window_size", "full_attention_blocks", "out_hidden_size", "min_pixels", "max_pixels",
               "pixels_per_vision_token"},
    "tokens": {"image", "video", "vision_start", "vision_end", "bos", "eos"},
    "estimated_bytes": {"decoder", "vision"},
    "weights": {"files", "bytes", "tensors"},
}


def test_json_keys_and_values_are_the_typed_report(tiny_model_dir):
    report = inspect_checkpoint(tiny_model_dir)
    data = report.to_dict()
    assert list(data) == list(JSON_KEYS)
    assert {key: set(value) if isinstance(value, dict) else None for key, value in data.items()} == JSON_KEYS
    assert data == json.loads(json.dumps(data))  # plain JSON types already
    assert data["parameters"]["total"] == report.parameters.total
    assert data["vision"]["full_attention_blocks"] == list(report.vision.full_attention_blocks)
    assert data["estimated_bytes"] == {"decoder": report.estimated_bytes.decoder, "vision": report.estimated_bytes.vision}
    assert list(data["estimated_bytes"]["decoder"]) == ["BF16", "Q8_0", "Q4_K_M"]
    assert data["weights"]["files"] == list(report.weights.files) and len(report.weights.files) == 4


def test_cli_text_and_json(tiny_model_dir):
    text = run_cli("inspect", str(tiny_model_dir), check=True).stdout
    assert "64 layers" in text and "LLLG×16" in text and "Q4_K_M" in text
    report = json.loads(run_cli("inspect", str(tiny_model_dir), "--json", check=True).stdout)
    assert report["decoder"]["layers"] == 64
    assert report["vision"]["patch_size"] == 14
    assert report["vision"]["pixels_per_vision_token"] == 28 * 28


def test_released_33b_parameter_counts():
    """exaone_edge/data/exaone45_33b_config.json (the released values, exaone45_33b_SOURCES.md), counted two ways."""
    import torch
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration

    from exaone_edge.spec import model_spec

    path = DATA / "exaone45_33b_config.json"
    config = json.loads(path.read_text())
    spec = model_spec(config, path)
    decoder, vision = spec.decoder, spec.vision
    assert vision.params == 1_286_482_944  # the tower the sources describe; the "1.2B" of the model card
    # One decoder layer: q and o 5120 × 5120 (40 heads × 128) twice, k and v 5120 × 1024 (8 × 128) twice,
    # QK-norms 2 × 128, FFN 3 × 5120 × 27392, two post-norms 2 × 5120.
    layer = 2 * 5120 * 5120 + 2 * 5120 * 1024 + 2 * 128 + 3 * 5120 * 27392 + 2 * 5120
    assert decoder.layer_params == layer == 483_666_176
    assert decoder.body_params == 64 * layer + 5120 == 30_954_640_384  # + the final norm
    assert decoder.embedding_params == 2 * 153_600 * 5120 == 1_572_864_000  # untied input and output tables
    # MTP: one more layer, fc 5120 × 10240, three norms of 5120
    assert decoder.mtp_params == layer + 2 * 5120 * 5120 + 3 * 5120 == 536_110_336
    assert decoder.body_params + decoder.embedding_params + vision.params == 33_813_987_328  # "33B"
    assert decoder.pattern == "LLLG" * 16 and decoder.kv_bytes_per_token_per_layer_f16 == 4096
    assert decoder.max_position_embeddings == 262144 and decoder.rope["original_max_position_embeddings"] == 8192

    # transformers' own classes build the same model from the file (on the meta device: no memory)
    with torch.device("meta"):
        model = Exaone4_5_ForConditionalGeneration(Exaone4_5_Config(**config))
    count = lambda prefix: sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))  # noqa: E731
    assert count("model.visual.") == vision.params
    assert count("model.language_model.") + count("lm_head.") == decoder.body_params + decoder.embedding_params


def test_65_layer_types_for_64_layers_is_read_with_a_warning(tmp_path, capfd):
    """Reported for the released FP8 repo: the MTP layer listed in layer_types. Read, warn once, not refuse."""
    config = json.loads((DATA / "exaone45_33b_config.json").read_text())
    config["text_config"]["layer_types"].append("full_attention")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    from exaone_edge.spec import model_spec

    spec = model_spec(config, path)
    assert spec.decoder.num_layers == 64 and spec.decoder.pattern == "LLLG" * 16
    model_spec(config, path)  # read again: no second warning
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {path}: ") and "65 entries for 64 layers" in err

    config["text_config"]["layer_types"].append("full_attention")  # 66 for 64 is not that case: refused
    from exaone_edge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="66 entries for 64 layers"):
        model_spec(config, path)


def test_65_layer_types_through_the_cli(tmp_path):
    directory = tmp_path / "fp8-like"
    directory.mkdir()
    config = json.loads((DATA / "exaone45_33b_config.json").read_text())
    config["text_config"]["layer_types"].append("full_attention")
    (directory / "config.json").write_text(json.dumps(config))
    result = run_cli("plan", str(directory), "--gpu", "a100-80", "--context", "8192")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(directory / "config.json") in warnings[0]


def test_layer_pattern_string_without_layer_types():
    """transformers accepts sliding_window_pattern "LLLG" (the released form); read it without layer_types."""
    from exaone_edge.spec import decoder_spec

    text = json.loads((DATA / "exaone45_33b_config.json").read_text())["text_config"]
    del text["layer_types"]
    assert decoder_spec(text, DATA).pattern == "LLLG" * 16
    assert decoder_spec(dict(text, sliding_window_pattern=4), DATA).pattern == "LLLG" * 16
    assert decoder_spec(dict(text, sliding_window=None), DATA).pattern == "G" * 64


def _copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, target)
    return target


def _break_missing_config(d: Path) -> str:
    (d / "config.json").unlink()
    return "config.json: config.json is missing"


def _break_invalid_config(d: Path) -> str:
    (d / "config.json").write_text("{ not json")
    return "config.json: config.json is not valid JSON"


def _break_model_type(d: Path) -> str:
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "qwen2_5_vl"
    (d / "config.json").write_text(json.dumps(config))
    return "model_type is 'qwen2_5_vl', expected 'exaone4_5'"


def _break_missing_shard(d: Path) -> str:
    (d / "model-00002-of-00003.safetensors").unlink()
    return "index points at missing shard 'model-00002-of-00003.safetensors'"


def _break_truncated_shard(d: Path) -> str:
    shard = d / "model-00001-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return "model-00001-of-00003.safetensors: safetensors shard is truncated"


def _break_missing_tokenizer(d: Path) -> str:
    (d / "tokenizer.json").unlink()
    return "tokenizer.json: tokenizer is missing"


@pytest.mark.parametrize(
    "breaker",
    [_break_missing_config, _break_invalid_config, _break_model_type, _break_missing_shard,
     _break_truncated_shard, _break_missing_tokenizer],
)
def test_bad_checkpoints_get_one_clear_line(tiny_model_dir, tmp_path, breaker):
    directory = _copy(tiny_model_dir, tmp_path)
    expected = breaker(directory)
    result = run_cli("inspect", str(directory))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected in result.stderr


def test_missing_directory(tmp_path):
    result = run_cli("inspect", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint directory does not exist" in result.stderr
