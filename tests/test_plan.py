"""The memory planner: KV layout as llama.cpp lays it out, the token embedding in host memory, page budgets,
GPU catalog, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.errors import InputError
from exaone_edge.memory import GIB, plan, vision_activation_bytes
from exaone_edge.spec import RELEASED_33B_CONFIG

DATA = RELEASED_33B_CONFIG.parent


@pytest.fixture(scope="module")
def config_33b(tmp_path_factory) -> Path:
    """The released 33B config.json alone, as a user has it before downloading 66 GB: plan needs nothing else."""
    directory = tmp_path_factory.mktemp("exaone45-33b")
    shutil.copy(DATA / "exaone45_33b_config.json", directory / "config.json")
    return directory


def _write_gguf(path: Path, embedding: tuple[int, int] = (32, 16)) -> int:
    """A small GGUF with a token_embd.weight of `embedding` (vocab, hidden) in F32 and one layer tensor;
    returns token_embd's bytes."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "exaone4")
    writer.add_tensor("token_embd.weight", np.zeros(embedding, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return embedding[0] * embedding[1] * 4


def _with_preprocessor(config_33b: Path, tmp_path: Path, max_pixels: int) -> Path:
    directory = tmp_path / "with-preprocessor"
    shutil.copytree(config_33b, directory)
    # min_pixels / max_pixels at the top level, where llama.cpp's EXAONE 4.5 converter reads them
    preprocessor = {"min_pixels": 28 * 28, "max_pixels": max_pixels, "patch_size": 14, "merge_size": 2,
                    "temporal_patch_size": 2}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def _finish_bundle(directory: Path, level: str = "Q4_K_M") -> None:
    """The rest of a bundle around a test's decoder.gguf (and vision/): the files and manifest load_bundle checks."""
    from exaone_edge.manifest import Manifest, write_manifest

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (directory / name).write_text("{}")
    write_manifest(directory, Manifest(kind="bundle", details={"decoder": {"level": level}}))


def test_config_json_alone_is_enough(config_33b):
    assert sorted(p.name for p in config_33b.iterdir()) == ["config.json"]
    result = plan(config_33b, gpu="rtx4090", context=16384)
    # transformers' Exaone4_5_ImageProcessor defaults (56·56 to 28·28·1280 pixels), the only published ones
    assert result.max_pixels == 1_003_520 and "no preprocessor_config.json" in result.pixels_from
    assert result.vision_attention_fused  # planned as `exaone-edge export` writes the graph
    text = run_cli("plan", str(config_33b), "--context", "16384", check=True).stdout
    assert "pages up to 1,003,520 pixels (no preprocessor_config.json: transformers' EXAONE 4.5 default)" in text


def test_a_preprocessor_config_sets_the_page_size(config_33b, tmp_path):
    directory = _with_preprocessor(config_33b, tmp_path, 4096 * 28 * 28)  # larger than the default page
    result = plan(directory, gpu="rtx4090", context=16384)
    assert result.max_pixels == 3_211_264 and result.pixels_from.endswith("preprocessor_config.json")
    default = plan(config_33b, gpu="rtx4090", context=16384)
    assert result.components["vision_activations"] > default.components["vision_activations"]


def test_vision_memory_follows_the_released_tower(config_33b):
    """Weights: 1,286,482,944 parameters in fp16. Activations of a 1280-row page (5120 patches of 14 × 14)."""
    from exaone_edge.spec import model_spec

    spec = model_spec(json.loads((config_33b / "config.json").read_text()), config_33b / "config.json")
    result = plan(config_33b, gpu="a100-80", context=8192)
    assert result.components["vision_weights"] == 2 * 1_286_482_944
    rows = 5120 * (4 * 2048 + 3 * 5120) * 4  # residual, q/k/v/out and three FFN-wide tensors, float32
    unfused = 32 * 5120 * 5120 * 4  # [heads, patches, patches] scores of a full-attention block
    windowed = 2 * 32 * 5120 * 64 * 4  # scores and probabilities inside 8 × 8-patch windows
    assert vision_activation_bytes(spec, 1280 * 28 * 28, fused=False) == rows + unfused  # 3.57 GiB
    assert vision_activation_bytes(spec, 1280 * 28 * 28, fused=True) == rows + windowed  # 0.53 GiB


def test_a_bundle_says_whether_its_vision_graph_is_fused(config_33b, tmp_path):
    from exaone_edge.manifest import Manifest, write_manifest

    sizes = {}
    for fused in (True, False):
        bundle = _with_preprocessor(config_33b, tmp_path / str(fused), 1280 * 28 * 28)
        _write_gguf(bundle / "decoder.gguf")
        (bundle / "vision").mkdir()
        (bundle / "vision" / "vision.onnx").write_bytes(b"\0" * 2048)
        details = {"precision": "fp16", "spec": {}, **({"attention": "fused-full-attention"} if fused else {})}
        write_manifest(bundle / "vision", Manifest(kind="vision-onnx", details=details))
        _finish_bundle(bundle)
        result = plan(bundle, gpu="a100-80", context=8192)
        assert result.weights_measured and result.components["vision_weights"] == 2048
        assert result.vision_attention_fused is fused
        sizes[fused] = result.components["vision_activations"]
    assert sizes[False] - sizes[True] == 32 * 5120 * 5120 * 4 - 2 * 32 * 5120 * 64 * 4


def test_kv_cache_follows_the_llama_cpp_layout(config_33b):
    result = plan(config_33b, gpu="a100-80", context=32768)
    # 16 global layers hold 32768 tokens; 48 sliding layers hold the 4096 window padded with one
    # 512-token micro-batch to a multiple of 256; 8 KV heads × 128 × (K and V) × 2 bytes.
    expected = (16 * 32768 + 48 * 4608) * 2 * 8 * 128 * 2
    assert result.components["kv_cache"] == expected
    q8 = plan(config_33b, gpu="a100-80", context=32768, kv_type="q8_0")
    assert q8.components["kv_cache"] < 0.6 * expected


def test_decoder_estimate_is_near_the_published_q4_k_m_file(config_33b):
    """The file is the GPU's decoder weights plus the token embedding, which llama.cpp keeps in host memory."""
    result = plan(config_33b, gpu="a100-80", context=4096, level="Q4_K_M")
    published = 20.05e9  # the official EXAONE-4.5 Q4_K_M GGUF (NOTES.md)
    file_bytes = result.components["decoder_weights"] + result.host_components["token_embedding"]
    assert abs(file_bytes - published) / published < 0.10


def test_the_token_embedding_is_host_memory(config_33b):
    """llama.cpp never offloads the input layer (src/llama-model.cpp, load_tensors: dev_input is the CPU), so
    token_embd leaves the GPU total. From config.json it is vocab × hidden at the level's token_embd type:
    153,600 × 5,120 at Q4_K (4.5 bits) = 442,368,000 bytes for Q4_K_M, 8.5 bits (Q8_0) for Q8_0."""
    from exaone_edge.levels import estimated_bytes
    from exaone_edge.spec import model_spec

    spec = model_spec(json.loads((config_33b / "config.json").read_text()), config_33b / "config.json")
    result = plan(config_33b, gpu="rtx4090", context=16384, level="Q4_K_M")
    assert result.host_components == {"token_embedding": 153_600 * 5_120 * 9 // 16} and result.host_bytes == 442_368_000
    everything = estimated_bytes(spec.decoder.body_params + spec.decoder.embedding_params, "Q4_K_M")
    assert result.components["decoder_weights"] == everything - 442_368_000
    assert result.token_embedding_from == "estimated: 153,600 × 5,120 at Q4_K"
    assert plan(config_33b, gpu="a100-80", context=4096, level="Q8_0").host_bytes == 153_600 * 5_120 * 17 // 16
    text = run_cli("plan", str(config_33b), "--context", "16384", check=True).stdout
    assert "host memory, not in the GPU total" in text and "token_embedding           0.41 GiB" in text
    report = json.loads(run_cli("plan", str(config_33b), "--context", "16384", "--json", check=True).stdout)
    assert report["host_components"] == {"token_embedding": 442_368_000}
    assert "token_embedding" not in report["components"]


def test_a_bundle_s_token_embedding_is_read_from_its_gguf(config_33b, tmp_path):
    bundle = _with_preprocessor(config_33b, tmp_path, 1280 * 28 * 28)
    embedding = _write_gguf(bundle / "decoder.gguf", (40, 32))
    _finish_bundle(bundle)
    result = plan(bundle, gpu="a100-80", context=8192)
    assert result.host_components == {"token_embedding": embedding} == {"token_embedding": 40 * 32 * 4}
    assert result.components["decoder_weights"] == (bundle / "decoder.gguf").stat().st_size - embedding
    assert result.token_embedding_from == "read from decoder.gguf"
    other_level = plan(bundle, gpu="a100-80", context=8192, level="Q8_0")  # not the file's level: estimated
    assert other_level.token_embedding_from.startswith("estimated")


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
        (["--kv-type", "f8"], "--kv-type must be one of f32, f16, q8_0, q4_0, got 'f8'"),
        (["--context", "999999999"], "outside 1..262144"),
        (["--level", "Q3_X"], "unknown level 'Q3_X'"),
        (["--image-max-tokens", "0"], "--image-max-tokens 0 is outside the allowed range: at least 4"),
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


def test_the_33b_fits_one_24gb_card_with_vision_on_the_gpu(config_33b, tmp_path):
    """int4 vision weights (MatMulNBits), a q8_0 KV cache and 1,280-row pages leave room for Q4_K_M at 16K
    on an RTX 4090 (22.60 GiB of 23.99, up to 58,880 tokens, with token_embd's 0.41 GiB in host memory);
    fp16 vision weights do not (24.33 GiB), and on the A10G's smaller usable memory plan picks Q4_K_S
    (Q4_K_M needs 22.53 GiB of 22.49)."""
    pages = _with_preprocessor(config_33b, tmp_path, 1280 * 28 * 28)
    int4 = plan(pages, gpu="rtx4090", context=16384, kv_type="q8_0", vision_precision="int4")
    fp16 = plan(pages, gpu="rtx4090", context=16384, kv_type="q8_0", vision_precision="fp16")
    assert int4.fits and int4.vision_on_gpu and int4.best_level == "Q4_K_M" and int4.max_context == 58880
    assert round(int4.total_bytes / GIB, 2) == 22.60 and round(fp16.total_bytes / GIB, 2) == 24.33
    assert not fp16.fits
    assert fp16.components["vision_weights"] / int4.components["vision_weights"] == pytest.approx(2 / (4.5 / 8))
    a10g = plan(pages, gpu="a10g", context=16384, kv_type="q8_0", vision_precision="int4")
    assert not a10g.fits and a10g.best_level == "Q4_K_S"
    # 8-bit weights (int8w), what the walk-through exports because 4 bits lose too much at the released widths
    int8w = plan(pages, gpu="rtx4090", context=16384, kv_type="q8_0", vision_precision="int8w")
    assert int8w.fits and int8w.best_level == "Q4_K_M" and int8w.max_context == 40448
    assert round(int8w.total_bytes / GIB, 2) == 23.20
    assert plan(pages, gpu="a10g", context=16384, kv_type="q8_0", vision_precision="int8w").best_level == "Q4_K_S"
    with pytest.raises(InputError, match="unknown vision precision"):
        plan(pages, vision_precision="int3")


def test_image_max_tokens_sizes_the_page_like_a_preprocessor_config(config_33b, tmp_path):
    """`plan --image-max-tokens 1024` on config.json alone gives the same numbers as a preprocessor_config.json
    with max_pixels 1024·28·28: what run/serve enforce with the flag is what plan sizes."""
    budget = plan(config_33b, gpu="rtx4090", context=16384, kv_type="q8_0", vision_precision="int4", image_max_tokens=1024)
    written = plan(_with_preprocessor(config_33b, tmp_path, 1024 * 28 * 28), gpu="rtx4090", context=16384,
                   kv_type="q8_0", vision_precision="int4")
    assert budget.max_pixels == written.max_pixels == 802_816 and budget.image_max_tokens == 1024
    assert budget.components == written.components and budget.total_bytes == written.total_bytes
    assert (budget.max_context, budget.best_level, budget.fits) == (written.max_context, written.best_level, written.fits)
    assert budget.pixels_from == ("--image-max-tokens 1,024 × 28×28; no preprocessor_config.json: transformers' "
                                  "EXAONE 4.5 default allows 1,003,520")
    larger = plan(config_33b, gpu="rtx4090", context=16384, image_max_tokens=9999)  # above the page limit: no change
    assert larger.max_pixels == 1_003_520 and "--image-max-tokens 9,999 allows more" in larger.pixels_from
    text = run_cli("plan", str(config_33b), "--context", "16384", "--image-max-tokens", "1024", check=True).stdout
    assert "pages up to 802,816 pixels (--image-max-tokens 1,024 × 28×28;" in text
    for bad in (0, -5, 3):  # the default min_pixels, 56·56, is 4 tokens
        with pytest.raises(InputError, match=r"--image-max-tokens -?\d+ is outside the allowed range: at least 4 "):
            plan(config_33b, image_max_tokens=bad)
    tight = _with_preprocessor(config_33b, tmp_path / "tight", 1280 * 28 * 28)  # min_pixels of 4 tokens
    config = json.loads((tight / "preprocessor_config.json").read_text())
    (tight / "preprocessor_config.json").write_text(json.dumps({**config, "min_pixels": 4 * 28 * 28}))
    with pytest.raises(InputError, match="at least 4 "):
        plan(tight, image_max_tokens=3)
    assert plan(tight, image_max_tokens=4).max_pixels == 4 * 28 * 28


def test_the_released_config_is_built_in(config_33b):
    """`plan exaone-4.5-33b` needs no download at all: the packaged config.json, planned as a folder holding it."""
    from dataclasses import replace

    built_in = plan(Path("exaone-4.5-33b"), kv_type="q8_0", context=16384, image_max_tokens=1280)
    folder = plan(config_33b, kv_type="q8_0", context=16384, image_max_tokens=1280)
    assert replace(built_in, pixels_from="") == replace(folder, pixels_from="")
    assert "exaone-4.5-33b" in built_in.pixels_from
    result = run_cli("plan", "LGAI-EXAONE/EXAONE-4.5-33B", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["total_bytes"] > 0, result.stderr
    missing = run_cli("plan", "exaone-4.5-32b")
    assert missing.returncode == 2 and "exaone-4.5-33b (the released config, built in)" in missing.stderr


def test_the_mtp_head_is_counted_when_drafting(config_33b):
    """--draft mtp loads the head (0.54B parameters: one layer, fc 2·5120² and three norms) with an MTP context of its
    own: a one-layer KV cache of layer 0's kind (sliding: window 4096 + a micro-batch, in 256s) and a compute buffer."""
    plain = plan(config_33b, gpu="a100-80", context=16384, level="Q4_K_M")
    drafting = plan(config_33b, gpu="a100-80", context=16384, level="Q4_K_M", draft="mtp")
    head_params = (2 * 5120 * 5120 + 2 * 5120 * 1024 + 2 * 128 + 3 * 5120 * 27392 + 2 * 5120) + 2 * 5120**2 + 3 * 5120
    assert head_params == 536_110_336
    kv = 4608 * 2 * 8 * 128 * 2
    compute = 512 * (153_600 + 3 * 27_392 + 4 * 5120) * 4
    assert "mtp_head" not in plain.components
    assert drafting.components["mtp_head"] == int(head_params * 4.85 / 8) + kv + compute
    assert drafting.total_bytes - plain.total_bytes == drafting.components["mtp_head"]
    assert run_cli("plan", str(config_33b), "--draft", "mtp", "--json", check=True).stdout.count("mtp_head") == 1
