"""The memory planner: KV layout as llama.cpp lays it out, GPU catalog, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.plan import GIB, plan

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def config_33b(tiny_model_dir, tmp_path_factory) -> Path:
    """The 33B config with the tiny model's tokenizer: the planner needs no weights."""
    directory = tmp_path_factory.mktemp("exaone45-33b")
    shutil.copy(DATA / "exaone45_33b_config.json", directory / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, directory / name)
    preprocessor = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    preprocessor["size"] = {"shortest_edge": 56 * 56, "longest_edge": 16 * 16 * 4 * 1280}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def test_kv_cache_follows_the_llama_cpp_layout(config_33b):
    result = plan(config_33b, gpu="a100-80", context=32768)
    # 16 global layers hold 32768 tokens; 48 sliding layers hold the 4096 window padded with one
    # 512-token micro-batch to a multiple of 256; 8 KV heads × 128 × (K and V) × 2 bytes.
    expected = (16 * 32768 + 48 * 4608) * 2 * 8 * 128 * 2
    assert result.components["kv_cache"] == expected
    q8 = plan(config_33b, gpu="a100-80", context=32768, kv_type="q8_0")
    assert q8.components["kv_cache"] < 0.6 * expected


def test_decoder_estimate_is_near_the_published_q4_k_m_file(config_33b):
    result = plan(config_33b, gpu="a100-80", context=4096, level="Q4_K_M")
    published = 20.05e9  # the official EXAONE-4.5 Q4_K_M GGUF (NOTES.md)
    assert abs(result.components["decoder_weights"] - published) / published < 0.10


def test_bigger_cards_fit_more(config_33b):
    contexts = [plan(config_33b, gpu=gpu, context=8192).max_context for gpu in ("a10g", "rtx4090", "a100-40", "a100-80")]
    assert contexts == sorted(contexts) and contexts[-1] == 262144
    assert plan(config_33b, gpu="a100-80", context=32768).best_level == "F16"
    assert not plan(config_33b, gpu="rtx4090", context=131072).fits


def test_vision_on_cpu_frees_gpu_memory(config_33b):
    on_gpu = plan(config_33b, gpu="rtx4090", context=16384)
    on_cpu = plan(config_33b, gpu="rtx4090", context=16384, vision_on_gpu=False)
    assert on_cpu.total_bytes < on_gpu.total_bytes - 3 * GIB
    assert on_cpu.max_context > on_gpu.max_context


def test_tiny_model_fits_everywhere(tiny_model_dir):
    for gpu in ("rtx4090", "a10g", "a100-40", "a100-80", "8GiB"):
        result = plan(tiny_model_dir, gpu=gpu)
        assert result.fits and result.best_level == "F16"


def test_cli_json_and_errors(config_33b):
    report = json.loads(run_cli("plan", str(config_33b), "--gpu", "a100-40", "--json", check=True).stdout)
    assert report["gpu"] == "a100-40" and report["components"]["kv_cache"] > 0
    for args, message in (
        (["--gpu", "h999"], "unknown GPU 'h999'"),
        (["--kv-type", "f8"], "unknown KV cache type 'f8'"),
        (["--context", "999999999"], "outside 1..262144"),
        (["--level", "Q3_X"], "unknown level 'Q3_X'"),
    ):
        result = run_cli("plan", str(config_33b), *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_parallel_sequences_each_hold_a_context(config_33b):
    one = plan(config_33b, gpu="a100-80", context=16384)
    four = plan(config_33b, gpu="a100-80", context=16384, parallel=4)
    assert four.components["kv_cache"] == 4 * one.components["kv_cache"]  # llama.cpp's non-unified cache
    assert four.max_context < one.max_context and four.total_bytes > one.total_bytes
    # One step reads the weights once for all four: more aggregate tokens/s, less than four times more.
    assert one.decode_tokens_per_s_ceiling < four.decode_tokens_per_s_ceiling < 4 * one.decode_tokens_per_s_ceiling
    report = json.loads(run_cli("plan", str(config_33b), "--parallel", "4", "--context", "16384", "--json", check=True).stdout)
    assert report["parallel"] == 4 and report["components"]["kv_cache"] == four.components["kv_cache"]
