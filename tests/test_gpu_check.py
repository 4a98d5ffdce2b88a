"""The GPU check's offline kit and its CPU half, here on a CPU machine: the dry run (no GPU: exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from exaone_edge.benchmarks import gpu_kit
from exaone_edge.benchmarks.gpu_verdicts import (
    MIB, compare_imatrix, decode_verdict, logits_verdict, memory_case, memory_total_case, memory_verdict, mtp_verdict, offload_verdict,
    vision_verdict,
)
from exaone_edge.benchmarks.gpu_worker import parse_llama_log, parse_mib
from exaone_edge.benchmarks.synthetic import LAYOUT_FILE, skeleton, synthesize
from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.safetensors_stream import read_f32, read_layout

REPO = Path(__file__).resolve().parents[1]
# What llama.cpp 0c1e570 logs for a partly offloaded model (llama-model.cpp, llama-kv-cache.cpp, llama-context.cpp).
LOG = """load_tensors: offloaded 32/65 layers to GPU
load_tensors:   CPU_Mapped model buffer size =    47.06 MiB
load_tensors:        CUDA0 model buffer size =    44.50 MiB
llama_kv_cache:      CUDA0 KV buffer size =    16.00 MiB
llama_kv_cache:        CPU KV buffer size =    16.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.01 MiB
llama_context:      CUDA0 compute buffer size =    66.50 MiB
llama_context:  CUDA_Host compute buffer size =     4.01 MiB
"""


def test_synthesized_checkpoint_has_the_skeletons_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    bones = skeleton(tiny_model_dir, tmp_path / "skeleton")
    assert not list(bones.glob("*.safetensors")) and (bones / LAYOUT_FILE).is_file()
    assert gpu_kit.tree_bytes(bones) < MIB  # the 50 MiB of weights stay behind
    made = synthesize(bones, tmp_path / "a", seed=3)
    original, copy = open_checkpoint(tiny_model_dir), open_checkpoint(made)
    assert {n: (t.dtype, t.shape) for n, t in copy.tensors.items()} == {n: (t.dtype, t.shape) for n, t in original.tensors.items()}
    assert copy.config == original.config
    layout = read_layout(made / "model.safetensors")
    norm = read_f32(layout["model.language_model.layers.0.post_attention_layernorm.weight"])
    weight = read_f32(layout["model.language_model.layers.0.mlp.up_proj.weight"])
    assert abs(norm.mean() - 1.0) < 0.05 and abs(weight.std() - 0.02) < 0.002
    again = synthesize(bones, tmp_path / "b", seed=3)  # the box draws the same weights from the same seed
    assert (again / "model.safetensors").read_bytes() == (made / "model.safetensors").read_bytes()


def test_staged_package_imports_from_a_plain_pythonpath(tmp_path: Path) -> None:
    site = gpu_kit.stage_package(REPO, tmp_path / "site")
    code = ("import exaone_edge.benchmarks.gpu_check as check, exaone_edge.runtime.engine, exaone_edge.quantize.gguf_convert;"
            "from exaone_edge.spec import RELEASED_33B_CONFIG; assert RELEASED_33B_CONFIG.is_file(); print(check.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(site)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site))


def test_llama_log_and_nvidia_smi_are_parsed() -> None:
    parsed = parse_llama_log(LOG)
    assert parsed["offloaded"] == [32, 65]
    assert parsed["buffers"]["model"] == {"CPU_Mapped": int(47.06 * MIB), "CUDA0": int(44.5 * MIB)}
    assert parsed["buffers"]["compute"]["CUDA_Host"] == int(4.01 * MIB)
    assert parse_mib(" 81559 ") == 81559 * MIB and parse_mib("[N/A]") is None and parse_mib("[Not Supported]") is None


def test_logit_verdicts_fail_on_real_differences() -> None:
    rng = np.random.default_rng(0)
    cpu = rng.standard_normal((50, 300)).astype(np.float32)
    everything = {"offloaded": [65, 65]}
    assert logits_verdict("decoder on CUDA", cpu, cpu + 1e-5, everything).status == "PASS"
    assert logits_verdict("decoder on CUDA", cpu, cpu + rng.standard_normal(cpu.shape) * 0.5, everything).status == "FAIL"
    assert logits_verdict("decoder on CUDA", cpu, cpu, {"offloaded": [40, 65]}).status == "FAIL"
    part = parse_llama_log(LOG)
    assert offload_verdict(cpu, cpu, part, 32, int(44 * MIB)).status == "PASS"
    assert offload_verdict(cpu, cpu, part, 31, int(44 * MIB)).status == "FAIL"  # llama.cpp put another split


def test_memory_decode_imatrix_and_vision_verdicts() -> None:
    info = {"llama": parse_llama_log(LOG), "process_bytes": 700 * MIB, "free_before": None, "free_after": None}
    planned = {"decoder_weights": 45 * MIB, "kv_cache": 16 * MIB, "decoder_compute_buffer": 70 * MIB, "runtime_overhead": 600 * MIB}
    assert memory_verdict({"tiny": memory_case(info, planned)}).status == "PASS"
    low = dict(planned, decoder_compute_buffer=40 * MIB)  # plan under-predicts the compute buffer
    verdict = memory_verdict({"tiny": memory_case(info, low)})
    assert verdict.status == "FAIL" and "UNDER-PREDICTED" in verdict.detail
    unlisted = memory_case(dict(info, process_bytes=None), planned)  # nvidia-smi "[N/A]"
    assert "runtime_overhead" not in unlisted["components"]

    decode = {"tokens_per_s": 1000.0, "llama": {"buffers": {"model": {"CUDA0": 500 * MIB}, "KV": {"CUDA0": 0}}},
              "mean_length": 200, "n_ctx": 4096}
    assert decode_verdict(decode, 3e12).status == "PASS"  # 1000 of about 5,700 tokens/s
    assert decode_verdict(dict(decode, tokens_per_s=9000.0), 3e12).status == "FAIL"  # faster than memory allows
    assert decode_verdict(dict(decode, tokens_per_s=50.0), 3e12).status == "FAIL"  # a CPU's speed
    assert decode_verdict(decode, None).status == "NOT CHECKED"

    sums = {"sum:blk.0.ffn_up.weight": np.ones(8), "count:blk.0.ffn_up.weight": np.array(10)}
    assert compare_imatrix(sums, dict(sums)).status == "PASS"
    assert compare_imatrix(sums, dict(sums, **{"count:blk.0.ffn_up.weight": np.array(9)})).status == "FAIL"
    assert compare_imatrix(sums, dict(sums, **{"sum:blk.0.ffn_up.weight": np.ones(8) * 1.1})).status == "FAIL"

    cpu_only = {"available": ["CPUExecutionProvider"], "ran": False}
    verdict = vision_verdict({"fp32": (cpu_only, np.zeros((4, 8)), None)})
    assert verdict.status == "NOT CHECKED" and "no GPU" not in verdict.detail


def test_mtp_verdict_judges_the_head_and_shows_the_timings() -> None:
    rng = np.random.default_rng(0)
    cpu = rng.standard_normal((144, 300)).astype(np.float32)
    everything = {"offloaded": [66, 66]}
    timing = {"head": True, "timings": {  # as JSON brings them back: k keys are strings
        "decode_s": 0.010, "verify_s": {"1": 0.011, "2": 0.012}, "draft_s": {"1": 0.002, "2": 0.004}, "layers": 2,
        "layer_bytes": 300 * MIB, "head_bytes": 320 * MIB, "output_bytes": 400 * MIB, "vocab_rows": 153_600,
        "prompt_tokens": 256}}
    verdict = mtp_verdict(cpu, cpu + 1e-5, everything, timing)
    # α 0.7, k 1: (1 + 0.7) × 10 ms / (2 + 11 ms) = 1.31
    assert verdict.status == "PASS" and "1.31/" in verdict.detail and "verify k=1..2 11.00/12.00 ms" in verdict.detail
    assert mtp_verdict(cpu, cpu + rng.standard_normal(cpu.shape) * 0.5, everything, timing).status == "FAIL"
    assert mtp_verdict(cpu, cpu, {"offloaded": [40, 66]}, None).status == "FAIL"  # the head not (all) on the GPU
    assert "no MTP head" in mtp_verdict(cpu, cpu, everything, {"head": False}).detail
    both = {"llama": parse_llama_log(LOG + "llama_kv_cache:      CUDA0 KV buffer size =     2.00 MiB\n")}  # + the head's
    planned = {"decoder_weights": 45 * MIB, "kv_cache": 16 * MIB, "decoder_compute_buffer": 60 * MIB, "mtp_head": 9 * MIB}
    assert memory_verdict({"draft": memory_total_case(both, planned)}).status == "PASS"  # 44.5 + 18 + 66.5 ≤ 130 MiB
    short = dict(planned, mtp_head=0, decoder_compute_buffer=40 * MIB)  # 101 MiB planned: 129 is over the slack
    assert memory_verdict({"draft": memory_total_case(both, short)}).status == "FAIL"


CPU_WHEELS = sorted(gpu_kit.WHEEL_CACHE.glob("llama-*/llama_cpp_python-0.3.36-*.whl"))  # setup.sh's cache


@pytest.mark.skipif(not CPU_WHEELS, reason="setup.sh caches the CPU wheel; none here")
def test_slimmed_wheel_installs_offline_and_loads(tmp_path: Path) -> None:
    source = CPU_WHEELS[-1]
    slim = gpu_kit.slim_wheel(source, tmp_path / "llama_cpp_python-0.3.36-1test-py3-none-linux_x86_64.whl", "1test")
    assert slim.stat().st_size < source.stat().st_size / 2
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                    str(tmp_path / "site"), str(slim)], check=True, env=dict(os.environ, PIP_CONFIG_FILE=os.devnull))
    code = "import llama_cpp; llama_cpp.llama_backend_init(); print(llama_cpp.__file__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / "site"))


@pytest.mark.skipif(not gpu_kit.SDIST.is_file(), reason="scripts/gpu_kit_wheel.sh downloads the sdist")
def test_trimmed_sdist_keeps_what_a_cuda_build_reads(tmp_path: Path) -> None:
    import tarfile

    trimmed = gpu_kit.trim_sdist(gpu_kit.SDIST, tmp_path / "llama-src.tar.gz")
    with tarfile.open(trimmed) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames()}
    for needed in ("CMakeLists.txt", "llama_cpp/llama_cpp.py", "vendor/llama.cpp/src/llama.cpp", "vendor/llama.cpp/ggml/src/ggml.c",
                   "vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu", "vendor/llama.cpp/vendor/nlohmann/json.hpp"):
        assert needed in names
    assert not [n for n in names if n.startswith(("vendor/llama.cpp/models/", "vendor/llama.cpp/ggml/src/ggml-vulkan/"))]
    assert trimmed.stat().st_size < 8 * MIB


@pytest.fixture(scope="module")
def kit(tiny_model_dir: Path, tiny_vision_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit as `benchmarks/gpu_kit.py build` writes it, from the cached wheels (the CUDA one when built here)."""
    wheels = gpu_kit.cached_wheels() + ([gpu_kit.cuda_wheel()] if gpu_kit.cuda_wheel() else [])
    out = tmp_path_factory.mktemp("kit") / "kit"
    summary = gpu_kit.build_kit(out, tiny_checkpoint=tiny_model_dir, vision_dirs={"fp32": tiny_vision_dir}, wheels=wheels)
    assert summary["kit_bytes"] + summary["repo_bytes"] <= gpu_kit.CARRY_LIMIT
    return out


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here: the check would run for real")
def test_dry_run_installs_offline_and_says_not_checked_for_every_path(kit: Path, tmp_path: Path) -> None:
    out, site = tmp_path / "out", tmp_path / "site"
    done = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--kit", str(kit), "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHON=sys.executable, SITE=str(site)))
    assert done.returncode == 2, done.stdout + done.stderr  # no GPU
    lines = done.stdout.splitlines()
    assert any("installed offline (pip --no-index)" in line for line in lines)
    carried = next(line for line in lines if "carried (limit 64 MiB)" in line)
    assert float(carried.split("= ")[1].split(" MiB")[0]) <= 64
    verdicts = [line for line in lines if line.startswith(("PASS", "FAIL", "NOT CHECKED"))]
    from exaone_edge.benchmarks.gpu_check import PATHS

    assert len(verdicts) == len(PATHS) and all(line.startswith("NOT CHECKED") for line in verdicts)
    assert all("no GPU: nvidia-smi not found" in line for line in verdicts)
    assert "CPU warm" in verdicts[PATHS.index("page encode (warm)")]
    assert "CPU head logits ready (48 cuts × 3 draft steps)" in verdicts[PATHS.index("MTP drafting on CUDA")]
    result = json.loads((out / "result.json").read_text())
    assert result["exit_code"] == 2 and [p["phase"] for p in result["phases"]] == ["setup", "inputs", "cpu half"]
    assert all(p["start"].endswith("Z") and p["seconds"] >= 0 for p in result["phases"])
    assert (site / "pure" / "gguf").is_dir() == any(w.name.startswith("gguf") for w in (kit / "wheels").iterdir())
    assert (site / "pure" / "exaone_edge" / "benchmarks" / "gpu_check.py").is_file()


@pytest.mark.skipif(gpu_kit.cuda_wheel() is None, reason="the CUDA wheel is built by scripts/gpu_kit_wheel.sh")
def test_cuda_wheel_holds_sm90_code_and_links_the_box_libraries(tmp_path: Path) -> None:
    wheel = gpu_kit.cuda_wheel()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        cuda = next(name for name in names if name.endswith("libggml-cuda.so.0"))
        archive.extract(cuda, tmp_path)
    assert not [name for name in names if name.startswith(("lib/", "include/"))]  # slimmed: one copy of each library
    assert wheel.stat().st_size < 56 * MIB
    needed = subprocess.run(["readelf", "-d", str(tmp_path / cuda)], capture_output=True, text=True, check=True).stdout
    for library in ("libcudart.so.13", "libcublas.so.13", "libcuda.so.1"):
        assert f"[{library}]" in needed
    if shutil.which("cuobjdump"):
        listed = subprocess.run(["cuobjdump", "--list-elf", str(tmp_path / cuda)], capture_output=True, text=True).stdout
        assert "sm_90" in listed
