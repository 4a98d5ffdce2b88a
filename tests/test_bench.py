"""`exaone-edge bench` on the tiny bundle: every comparison runs, ratios and verdicts are consistent, bad input is refused.

The tiny model's numbers mean nothing for speed (overheads dominate); the bench preset
(`tiny-model --preset bench`) is what the README's figures come from. Here the run must complete,
measure each thing once and report it faithfully.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_cli
from exaone_edge.benchmarks.suite import Target, at_least, at_most, result
from runtime_bundle_fixture import build_tiny_bundle

EXPECTED = (
    "decode: ours ÷ llama-cpp-python",
    "prefill: ours ÷ llama-cpp-python",
    "÷ read bandwidth",
    "decode: ours (F32) ÷ transformers bf16",
    "prefill: ours (F32) ÷ transformers bf16",
    "vision fp32: ONNX Runtime ÷ PyTorch SDPA",
    "page + question TTFT",
    "second question on the page",
    "concurrent ÷ one",
    "GGUF conversion: throughput ÷ plain copy",
    "GGUF conversion: peak RSS",
)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("bench") / "bundle", vision_dir=tiny_vision_dir)


def test_every_comparison_runs_and_is_saved(bundle, tiny_model_dir, tmp_path):
    saved = tmp_path / "bench.json"
    result = run_cli("bench", str(bundle), "--model-dir", str(tiny_model_dir), "--repeats", "1", "--prompt-tokens",
                     "24", "--decode-tokens", "4", "--parallel", "1", "--save", str(saved), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert json.loads(saved.read_text()) == report
    assert report["machine"]["usable_cpus"] >= 1 and report["machine"]["packages"]["llama_cpp_python"]
    names = [r["name"] for r in report["results"]]
    for expected in EXPECTED:
        assert sum(expected in name for name in names) == 1, (expected, names)
    for r in report["results"]:
        assert r["ours"] > 0 and r["baseline"] > 0 and math.isfinite(r["ratio"]), r
        target = Target(**r["target"]) if r["target"] else None
        assert r["met"] == (None if target is None else target.met(r["ratio"])), r
    vision = next(r for r in report["results"] if "PyTorch SDPA" in r["name"])
    assert "max|Δ|" in vision["note"] and float(vision["note"].rsplit(" ", 1)[1]) < 1e-4  # both encoders agree


def test_table_output_names_the_machine(bundle, tmp_path):
    result = run_cli("bench", str(bundle), "--only", "decode", "--repeats", "1", "--prompt-tokens", "16",
                     "--decode-tokens", "3", "--save", str(tmp_path / "b.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "machine:" in result.stdout and "ours ÷ llama-cpp-python" in result.stdout


def test_targets_are_numbers_checked_against_the_ratio():
    assert at_least(0.97).met(0.98) and not at_least(0.97).met(0.96)
    assert at_most(0.2).met(0.1) and not at_most(0.2).met(0.3)
    assert result("x", 1, 2, "s", 0.5).met is None
    assert at_least(0.97).describe() == "≥ 0.97" and Target(0.5, 2).describe() == "≥ 0.5 ≤ 2"


@pytest.mark.parametrize("args, message", [
    (["--only", "decode,warp"], "unknown bench section(s): warp"),
    (["--only", "vision"], "need the checkpoint"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_bad_options_are_refused_before_any_work(bundle, tmp_path, args, message):
    result = run_cli("bench", str(bundle), *args, "--save", str(tmp_path / "x.json"))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "x.json").exists()


def test_a_folder_that_is_not_a_bundle(tmp_path):
    result = run_cli("bench", str(tmp_path), "--only", "decode", "--save", str(tmp_path / "x.json"))
    assert result.returncode == 2 and "manifest.json" in result.stderr, result.stderr[-2000:]


def test_draft_section_times_the_mtp_head_and_prints_the_curve(bundle, tmp_path):
    saved = tmp_path / "draft.json"
    result = run_cli("bench", str(bundle), "--only", "draft", "--repeats", "1", "--prompt-tokens", "16",
                     "--draft-max", "2", "--save", str(saved))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed-up here, by acceptance rate" in result.stdout and "projected to the 33B" in result.stdout
    drafting = json.loads(saved.read_text())["drafting"]
    assert drafting["decode_s"] > 0 and sorted(drafting["verify_s"]) == sorted(drafting["draft_s"]) == ["1", "2"]
    assert drafting["layers"] == 64 and drafting["head_bytes"] > 0 and drafting["vocab_rows"] > 0
    assert len(drafting["speedup"]) == len(drafting["alphas"]) and all(len(row) == 2 for row in drafting["speedup"])
    t1, tv, td = drafting["decode_s"], drafting["verify_s"]["2"], drafting["draft_s"]["2"]
    assert drafting["speedup"][0][1] == round(t1 / (td + tv), 3)  # α = 0: one token per step


def test_the_speed_up_curve_follows_the_expected_tokens_per_step():
    from exaone_edge.benchmarks.drafting import DraftTimings

    timings = DraftTimings(decode_s=0.1, verify_s={2: 0.12}, draft_s={2: 0.03}, layers=2, layer_bytes=100,
                           head_bytes=120, output_bytes=10, vocab_rows=1000, prompt_tokens=8)
    # α = 0.5, k = 2: (1 − 0.5³) / 0.5 = 1.75 tokens a step of 0.15 s, against 0.1 s a token
    assert math.isclose(timings.speedup(2, 0.5), 1.75 * 0.1 / 0.15)
    assert math.isclose(timings.speedup(2, 1.0), 3 * 0.1 / 0.15)
    # 33B: the trunk reads 64 · 100 + 1536 bytes instead of 2 · 100 + 10, the draft 120 + 1536 instead of 120 + 10
    trunk, draft = (6400 + 1536) / 210, (120 + 1536) / 130
    assert math.isclose(timings.speedup(2, 0.5, released=True), 1.75 * 0.1 * trunk / (0.03 * draft + 0.12 * trunk))
