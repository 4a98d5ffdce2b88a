"""`exaone-edge inspect`: correct counts, published sizes, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.inspect_model import counts_from_config, inspect_checkpoint

DATA = Path(__file__).parent / "data"


def test_counts_equal_the_sum_of_tensor_sizes(tiny_model_dir):
    report = inspect_checkpoint(tiny_model_dir)
    checkpoint = open_checkpoint(tiny_model_dir)
    assert report["parameters"]["total"] == sum(info.numel for info in checkpoint.tensors.values())
    vision = sum(i.numel for n, i in checkpoint.tensors.items() if n.startswith("model.visual."))
    mtp = sum(i.numel for n, i in checkpoint.tensors.items() if n.startswith("mtp."))
    embeddings = sum(i.numel for n, i in checkpoint.tensors.items() if "embed_tokens" in n or n == "lm_head.weight")
    assert report["parameters"]["vision"] == vision
    assert report["parameters"]["mtp"] == mtp
    assert report["parameters"]["embeddings"] == embeddings
    assert report["decoder"]["attention_pattern"] == "LLLG×16"


def test_cli_text_and_json(tiny_model_dir):
    text = run_cli("inspect", str(tiny_model_dir), check=True).stdout
    assert "64 layers" in text and "LLLG×16" in text and "Q4_K_M" in text
    report = json.loads(run_cli("inspect", str(tiny_model_dir), "--json", check=True).stdout)
    assert report["decoder"]["layers"] == 64
    assert report["vision"]["patch_size"] == 16


def test_published_33b_sizes_from_config_alone(tmp_path):
    """The 33B config (decoder sizes from the model card; vision widths chosen to its 1.2B total)."""
    from exaone_edge.spec import model_spec

    config = json.loads((DATA / "exaone45_33b_config.json").read_text())
    spec = model_spec(config, DATA / "exaone45_33b_config.json")
    decoder = spec.decoder.body_params + spec.decoder.embedding_params
    assert 31.5e9 < decoder < 33.0e9
    assert 1.1e9 < spec.vision.params < 1.3e9
    assert spec.decoder.pattern == "LLLG" * 16
    assert spec.decoder.kv_bytes_per_token_per_layer_f16 == 4096


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
