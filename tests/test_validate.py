"""`exaone-edge validate` end to end: an exact bundle passes, a wrong chat template is caught by the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.manifest import MANIFEST_NAME, read_manifest, write_manifest
from runtime_bundle_fixture import build_tiny_bundle


@pytest.fixture(scope="module")
def bundles(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validate")
    run_cli("export", str(tiny_model_dir), "-o", str(root / "vision"), check=True)
    exact = build_tiny_bundle(tiny_model_dir, root / "f32", vision_dir=root / "vision")
    broken = root / "broken"
    shutil.copytree(exact, broken)
    template = broken / "chat_template.jinja"
    # A plausible-looking mistake: the generation prompt loses its empty think block.
    template.write_text(template.read_text().replace("<think>\\n\\n</think>\\n\\n", ""))
    manifest = read_manifest(broken, verify=False)
    (broken / MANIFEST_NAME).unlink()
    write_manifest(broken, manifest)
    docs = root / "docs"
    run_cli("docs", "make", str(docs), "--n", "2", "--lang", "en,ko", "--seed", "3", check=True)
    return {"exact": exact, "broken": broken, "docs": docs, "root": root}


def _run(tiny_model_dir, bundles, bundle: Path, out: Path, *extra: str):
    return run_cli("validate", str(bundle), "--reference", str(tiny_model_dir), "--eval", str(bundles["docs"]),
                   "--max-questions", "2", "-o", str(out), *extra)


def test_exact_bundle_matches_the_reference_and_writes_three_reports(tiny_model_dir, bundles):
    out = bundles["root"] / "report-exact"
    result = _run(tiny_model_dir, bundles, bundles["exact"], out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    artifact = report["artifacts"][0]
    # Exact weights: KL is rounding noise; the random model's near-ties may still flip a rare argmax.
    assert artifact["decoder"]["kl_mean"] < 1e-6 and artifact["decoder"]["top1_agreement"] >= 0.9
    assert artifact["vision"]["cosine_min"] > 0.9999
    assert artifact["task"]["flip_rate"] == 0.0
    assert artifact["speed"]["peak_rss_bytes"] > 0 and artifact["speed"]["ttft_s"] > 0
    assert report["eval_set"]["questions"] == 2 and report["machine"]["usable_cpus"]
    assert report["mode"] == {"thinking": False, "answer_tokens": 24, "image_max_tokens": None,
                              "scored": "the whole reply"}  # the default
    assert (out / "report.md").read_text().count("| F32 | bundle |") == 1
    assert "<svg" in (out / "report.html").read_text()


def test_wrong_chat_template_is_flagged_by_the_gate(tiny_model_dir, bundles):
    baseline = bundles["root"] / "report-exact" / "report.json"
    if not baseline.exists():
        pytest.skip("needs the exact bundle's report from the previous test")
    out = bundles["root"] / "report-broken"
    result = _run(tiny_model_dir, bundles, bundles["broken"], out, "--baseline", str(baseline), "--no-speed")
    assert result.returncode == 1, result.stderr
    assert "REGRESSION F32: decoder.kl_mean" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["regressions"] and report["artifacts"][0]["decoder"]["kl_mean"] > 1e-3
    assert "✗ F32: decoder.kl_mean" in (out / "report.md").read_text()


def test_bad_inputs(tiny_model_dir, bundles, tmp_path):
    missing = run_cli("validate", str(tmp_path / "nothing"), "--reference", str(tiny_model_dir), "-o", str(tmp_path / "r"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "manifest.json" in missing.stderr
    (tmp_path / "bad.json").write_text("{}")
    bad_baseline = _run(tiny_model_dir, bundles, bundles["exact"], tmp_path / "r2", "--baseline", str(tmp_path / "bad.json"),
                        "--no-speed")
    assert bad_baseline.returncode == 2 and "not an exaone-edge report.json" in bad_baseline.stderr


def test_thinking_mode_is_chosen_recorded_and_budgeted(tiny_model_dir, bundles):
    """--think: the reference and the bundle get the thinking prompt, the report records the mode and budget."""
    out = bundles["root"] / "report-think"
    result = _run(tiny_model_dir, bundles, bundles["exact"], out, "--think", "--answer-tokens", "6", "--no-speed")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == {"thinking": True, "answer_tokens": 6, "image_max_tokens": None,
                              "scored": "text after </think>"}
    assert report["artifacts"][0]["decoder"]["kl_mean"] < 1e-6  # same (thinking) prompt on both sides


def test_pages_are_validated_at_the_deployed_page_budget(tiny_model_dir, bundles):
    """--image-max-tokens: the reference and the bundle see the page as `run`/`serve --image-max-tokens` fit it."""
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.documents import load_documents
    from exaone_edge.validate.collect import fit_pages, questions_from
    from exaone_edge.vision.preprocess import fit_page, rows_for, with_image_max_tokens

    questions = questions_from(load_documents(bundles["docs"]), 2)
    fitted = fit_pages(questions, tiny_model_dir, 16)
    spec = with_image_max_tokens(open_checkpoint(tiny_model_dir, read_weights=False).image, 16)
    full = open_checkpoint(tiny_model_dir, read_weights=False).image
    for before, after in zip(questions, fitted):
        assert rows_for(after.image.size, full) <= 16 < rows_for(before.image.size, full)
        assert fit_page(after.image, spec).tobytes() == after.image.tobytes()  # fitting again changes nothing
    out = bundles["root"] / "report-budget"
    result = _run(tiny_model_dir, bundles, bundles["exact"], out, "--image-max-tokens", "16", "--no-speed")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["mode"]["image_max_tokens"] == 16
    exact = bundles["root"] / "report-exact" / "report.json"
    if exact.exists():  # other pixels, another reference file
        assert report["reference"]["file"] != json.loads(exact.read_text())["reference"]["file"]
    artifact = report["artifacts"][0]
    assert artifact["decoder"]["kl_mean"] < 1e-6 and artifact["vision"]["cosine_min"] > 0.9999


def test_answers_are_scored_after_the_reasoning():
    from exaone_edge.validate.collect import ANSWER_TOKENS, ValidateOptions

    thinking, plain = ValidateOptions(thinking=True), ValidateOptions()
    assert (thinking.answer_tokens, plain.answer_tokens) == (ANSWER_TOKENS[True], ANSWER_TOKENS[False])
    assert ANSWER_TOKENS[True] >= 20 * ANSWER_TOKENS[False]  # reasoning comes before the answer
    assert thinking.answer("the table says 42\n</think>\n\n 42 ") == "42"
    assert thinking.answer("ran out of tokens while reasoning") == ""  # no answer, not the reasoning
    assert plain.answer(" 42 ") == "42"


@pytest.mark.parametrize("thinking, ending", [(True, "<|assistant|>\n<think>\n"),
                                              (False, "<|assistant|>\n<think>\n\n</think>\n\n")])
def test_reference_prompt_follows_the_mode(tiny_model_dir, thinking, ending):
    from PIL import Image

    from exaone_edge.reference.inputs import Question, chat_inputs
    from runtime_fixtures import hf_processor

    processor = hf_processor(tiny_model_dir)
    question = Question("doc", Image.new("RGB", (56, 56), "white"), "Total?", ["42"])
    ids = chat_inputs(processor, question, thinking)["input_ids"][0].tolist()
    assert processor.tokenizer.decode(ids, skip_special_tokens=False).endswith("Total?<|endofturn|>\n" + ending)
