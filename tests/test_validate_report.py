"""report.json's typed form, the regression gate and rendering, on hand-made reports."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from exaone_edge.errors import InputError
from exaone_edge.validate.gate import GATED, compare, thresholds_for
from exaone_edge.validate.render import render_html, render_markdown
from exaone_edge.validate.report import ReportResult, load_baseline
from exaone_edge.validate.schema import ProbeFailed, Speed, ValidationReport


def _report() -> dict:
    """A report.json as `validate` writes it today (key order included)."""
    artifact = lambda name, bits, kl, top1, anls, size: {  # noqa: E731
        "name": name, "kind": "bundle", "path": f"/bundles/{name}", "bits": bits, "bytes": size,
        "vision": {"cosine_min": 0.9999, "cosine_mean": 0.99995, "max_abs": 1e-5},
        "decoder": {"kl_mean": kl, "kl_p99": kl * 4, "kl_max": kl * 8, "top1_agreement": top1, "ppl_ratio": 1 + kl,
                    "positions": 40},
        "task": {"anls": anls, "exact_match": anls, "recovery": anls / 0.8, "flip_rate": 0.1,
                 "flips": [{"question": "총액은?", "reference_answer": "1,823,250원", "answer": "1,823,205원",
                            "change": "correct → wrong"}],
                 "same_answer_as_reference": 0.5,
                 "per_question": [{"reference_correct": q % 3 != 0, "correct": q % 4 != 1, "same_answer": q % 2 == 0}
                                  for q in range(9)]},
        "speed": {"ttft_s": 0.2, "decode_tokens_per_s": 40.0, "prompt_tokens": 300, "completion_tokens": 24,
                  "peak_rss_bytes": 2**30},
        "endpoint": None,
    }
    return {
        "schema": 1, "toolkit_version": "0.1.0", "created_at": "2026-11-23T00:00:00+00:00",
        "machine": {"cpu": "test", "cores": 2, "memory_bytes": 24 * 2**30, "platform": "linux"},
        "reference": {"path": "/models/ref", "file": "/cache/ref.npz", "reused": True, "dtype": "float32",
                      "rest_mass_max": 1e-5},
        "mode": {"thinking": False, "answer_tokens": 24, "image_max_tokens": None, "scored": "the whole reply"},
        "eval_set": {"path": "/sets/eval", "sha256": "ab" * 32, "documents": 3, "questions": 9},
        "reference_task": {"anls": 0.8, "exact_match": 0.7},
        "artifacts": [artifact("F16", 16, 1e-6, 1.0, 0.8, 60 * 2**30), artifact("Q8_0", 8, 0.002, 0.99, 0.79, 32 * 2**30),
                      artifact("Q4_K_M", 4, 0.03, 0.95, 0.75, 18 * 2**30)],
    }


def _first_report() -> dict:
    """A report.json as the first schema-1 reports were: no mode, reference, answer grid or machine's newer keys."""
    report = _report()
    del report["mode"]
    report["reference"] = {"path": "/models/ref"}
    for artifact in report["artifacts"]:
        del artifact["task"]["per_question"]
    return report


def _typed(report: dict) -> ValidationReport:
    return ValidationReport.from_dict(report)


def test_report_json_round_trips_byte_for_byte():
    report = _report()
    report["artifacts"][1]["speed"] = {"error": "probe: out of memory"}
    report["artifacts"].append({"name": "vision int8", "kind": "vision", "path": "/v", "bits": 8, "bytes": 2**19,
                                "vision": {"cosine_min": 0.9994, "cosine_mean": 0.9998, "max_abs": 0.01},
                                "decoder": None, "task": None, "speed": None, "endpoint": None})
    endpoint = copy.deepcopy(report["artifacts"][0])
    endpoint.update(name="gptq4 @ 127.0.0.1:8000", kind="endpoint", path="http://127.0.0.1:8000/v1", bits=None,
                    bytes=None, vision=None, decoder=None,
                    endpoint={"top1_agreement": 0.9, "positions": 30, "departures": 3, "runner_up_departures": 2})
    endpoint["speed"]["peak_rss_bytes"] = None
    report["artifacts"].append(endpoint)
    typed = _typed(report)
    assert isinstance(typed.artifacts[0].speed, Speed) and typed.artifacts[1].speed == ProbeFailed("probe: out of memory")
    assert typed.mode.scored == "the whole reply" and typed.reference.details == {"dtype": "float32", "rest_mass_max": 1e-5}
    assert json.dumps(typed.to_dict(), ensure_ascii=False) == json.dumps(report, ensure_ascii=False)


def test_a_first_schema_1_report_reads_renders_and_gates(tmp_path: Path):
    old = _typed(_first_report())
    assert old.mode is None and old.reference.file is None and old.artifacts[0].task.per_question == ()
    assert "| Q4_K_M | bundle |" in render_markdown(old) and "<svg" in render_html(old)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_first_report()))
    report = _report()
    report["artifacts"][0]["decoder"]["kl_mean"] = 1.0
    assert [(r.artifact, r.metric) for r in compare(_typed(report).artifacts, load_baseline(path))] == \
        [("F16", "decoder.kl_mean")]


@pytest.mark.parametrize("content", ["{}", "[]", '{"artifacts": [{"kind": "bundle"}]}', '{"artifacts": 3}'])
def test_what_is_not_a_report_is_refused_as_a_baseline(tmp_path: Path, content: str):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(InputError, match="not an exaone-edge report.json"):
        load_baseline(path)


def test_identical_reports_pass_the_gate():
    report = _typed(_report())
    assert compare(report.artifacts, copy.deepcopy(report).artifacts) == []


def test_a_broken_artifact_is_flagged_with_what_regressed():
    baseline, report = _report(), _report()
    report["artifacts"][2]["decoder"].update(kl_mean=2.5, top1_agreement=0.2)
    report["artifacts"][2]["task"]["anls"] = 0.1
    found = {(r.artifact, r.metric) for r in compare(_typed(report).artifacts, _typed(baseline).artifacts)}
    assert found == {("Q4_K_M", "decoder.kl_mean"), ("Q4_K_M", "decoder.top1_agreement"), ("Q4_K_M", "task.anls")}
    assert {metric.name for metric in GATED} == {"decoder.kl_mean", "decoder.top1_agreement", "task.anls",
                                                 "vision.cosine_min", "endpoint.top1_agreement"}


def test_thresholds_are_per_bit_width_and_overridable():
    baseline, report = _report(), _report()
    report["artifacts"][1]["decoder"]["kl_mean"] += 0.05  # beyond the 8-bit allowance, within the 4-bit one
    report["artifacts"][2]["decoder"]["kl_mean"] += 0.05
    current, previous = _typed(report).artifacts, _typed(baseline).artifacts
    assert [r.artifact for r in compare(current, previous)] == ["Q8_0"]
    assert compare(current, previous, overrides={"kl_mean_increase": 0.1}) == []
    assert thresholds_for(16).kl_mean_increase < thresholds_for(8).kl_mean_increase < thresholds_for(4).kl_mean_increase


def test_summary_and_report_json_carry_the_gate(tmp_path: Path):
    baseline, report = _typed(_report()), _report()
    report["artifacts"][2]["decoder"]["kl_mean"] = 2.5
    current = _typed(report)
    result = ReportResult(tmp_path, current, compare(current.artifacts, baseline.artifacts), tmp_path / "old.json")
    assert result.summary().splitlines() == [
        "F16: KL 1e-06, ANLS 0.8", "Q8_0: KL 0.002, ANLS 0.79", "Q4_K_M: KL 2.5, ANLS 0.75",
        f"report: {tmp_path / 'report.html'}", "REGRESSION Q4_K_M: decoder.kl_mean 0.03 → 2.5 (allowed change 0.1)"]
    gate = result.to_dict()["gate"]
    assert gate == {"baseline": str(tmp_path / "old.json"), "regressions": [
        {"artifact": "Q4_K_M", "metric": "decoder.kl_mean", "baseline": 0.03, "current": 2.5, "allowed": 0.1}]}
    assert "gate" not in ReportResult(tmp_path, current, None).to_dict()


def test_markdown_and_self_contained_html():
    report = _typed(_report())
    markdown = render_markdown(report, regressions=["Q4_K_M: decoder.kl_mean 0.03 → 2.5 (allowed change 0.1)"])
    assert "| Q4_K_M | bundle |" in markdown and "✗ Q4_K_M" in markdown and "1,823,205원" in markdown
    page = render_html(report, regressions=[])
    assert page.count("<svg") == 3 and "rtx4090" in page and "a100-80" in page
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "✓ nothing regressed" in page


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.fail("headless Chromium is needed for this test: scripts/setup.sh installs Debian's `chromium`")


def _pixels_near(image, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_html_report_shows_its_plots_in_headless_chromium(tmp_path: Path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_html(_typed(_report()), regressions=[]), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot)
    assert image.size == (1280, 2000)
    # each plot leaves its own colours on screen: KL bars, the accuracy points, the GPU limit lines, the grid cells
    seen = {name: _pixels_near(image, colour) for name, colour in {
        "KL bars": (0x33, 0x66, 0x99), "accuracy points": (0x22, 0x33, 0x66), "GPU limits": (0xCC, 0x33, 0x33),
        "correct cells": (0x44, 0xAA, 0x44), "gained cells": (0x33, 0x66, 0xCC)}.items()}
    assert all(count >= 40 for count in seen.values()), seen
    assert _pixels_near(image, (255, 255, 255)) < 0.97 * 1280 * 2000  # not a blank page
