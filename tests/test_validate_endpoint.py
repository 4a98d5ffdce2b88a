"""`validate --endpoint`: an OpenAI-compatible server as a candidate beside a bundle, here our own `exaone-edge serve`
(the same engine settings as validate's bundle candidate, so its answers must equal the bundle's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge.validate.endpoint import Reply, endpoint_agreement, greedy_path_agreement
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import serve_process


def _token(text: str, *alternatives: str) -> dict:
    return {"token": text, "bytes": list(text.encode()), "logprob": -0.1,
            "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": -1.0} for t in (text, *alternatives)]}


def test_greedy_path_counts_until_the_first_departure():
    # The reference was stripped; the endpoint's leading space and newline still continue it.
    assert greedy_path_agreement("12,500 KRW", [_token("\n"), _token(" 12"), _token(",500"), _token(" KRW")], "stop") == (4, 4, False)
    # Departs at the fourth token, where the reference's " KRW" was its second choice; what follows is not compared.
    tokens = [_token("12"), _token(",5"), _token("00"), _token(" USD", " KRW"), _token(" KRW")]
    assert greedy_path_agreement("12,500 KRW", tokens, None) == (3, 4, True)
    assert greedy_path_agreement("12,500 KRW", [_token("12"), _token(",000", ",900")], None) == (1, 2, False)
    # Stopped where the reference went on: the end of turn is the departure.
    assert greedy_path_agreement("12,500 KRW", [_token("12")], "stop") == (1, 2, False)
    # Past the reference's end nothing is compared (its own end of turn is not in the text).
    assert greedy_path_agreement("12", [_token("12"), _token(" and more")], "length") == (1, 1, False)


def test_partial_utf8_tokens_compare_by_bytes():
    won = "원".encode()
    pieces = [{"token": "\ufffd", "bytes": list(won[:2]), "top_logprobs": []},
              {"token": "\ufffd", "bytes": list(won[2:]), "top_logprobs": []}]
    assert greedy_path_agreement("원", pieces, "stop") == (2, 2, False)
    # A random model's invalid bytes: the reference's decode made them U+FFFD, so do we.
    invalid = [{"token": "\ufffd", "bytes": [129], "top_logprobs": []}, {"token": "=", "bytes": [61], "top_logprobs": []}]
    assert greedy_path_agreement("\ufffd=", invalid, "stop") == (2, 2, False)
    assert greedy_path_agreement("\ufffd=", [{"token": "=", "bytes": [61], "top_logprobs": []}], None) == (0, 1, False)


def test_no_top_logprobs_no_agreement():
    replies = [Reply("answer", "", [], "stop", 0.1, 0.2, 3, 40)]
    assert endpoint_agreement(["answer"], replies) is None


def test_an_unreachable_endpoint_fails_before_the_reference(tiny_model_dir, tmp_path):
    result = run_cli("validate", "--endpoint", "http://127.0.0.1:9/v1", "--endpoint-model", "x",
                     "--reference", str(tiny_model_dir), "-o", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "http://127.0.0.1:9/v1 did not list its models" in result.stderr
    mismatched = run_cli("validate", "--endpoint", "http://127.0.0.1:9", "--endpoint", "http://127.0.0.1:10",
                         "--endpoint-model", "x", "--reference", str(tiny_model_dir), "-o", str(tmp_path / "r"))
    assert mismatched.returncode == 2 and "2 --endpoint but 1 --endpoint-model" in mismatched.stderr


@pytest.fixture(scope="module")
def bundle_and_docs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("endpoint")
    run_cli("export", str(tiny_model_dir), "-o", str(root / "vision"), check=True)
    bundle = build_tiny_bundle(tiny_model_dir, root / "f32", vision_dir=root / "vision")
    run_cli("docs", "make", str(root / "docs"), "--n", "2", "--lang", "en,ko", "--seed", "3", check=True)
    return {"bundle": bundle, "docs": root / "docs", "root": root}


def test_endpoint_reported_beside_the_bundle(tiny_model_dir, bundle_and_docs):
    bundle, out = bundle_and_docs["bundle"], bundle_and_docs["root"] / "report"
    # validate's bundle candidate runs flash attention off, an f32 KV cache, 4,096 context: serve the same.
    with serve_process(bundle, "--flash-attn", "off", "--kv-type", "f32", "--ctx-size", "4096",
                       "--model-name", "tiny-f32") as (url, _):
        result = run_cli("validate", str(bundle), "--endpoint", f"{url}/v1", "--endpoint-model", "tiny-f32",
                         "--reference", str(tiny_model_dir), "--eval", str(bundle_and_docs["docs"]),
                         "--max-questions", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    local, remote = report["artifacts"]
    assert (local["kind"], remote["kind"]) == ("bundle", "endpoint")
    assert remote["name"] == f"tiny-f32 @ {url.removeprefix('http://')}" and remote["path"] == f"{url}/v1"
    assert remote["decoder"] is None and remote["vision"] is None and remote["bytes"] is None
    # Same engine, same settings, pages sent as PNG data URLs: the same answers, scored the same way.
    assert remote["task"]["per_question"] == local["task"]["per_question"]
    assert remote["task"]["anls"] == local["task"]["anls"]
    agreement = remote["endpoint"]
    assert agreement["positions"] > 0 and agreement["top1_agreement"] is not None
    if local["task"]["same_answer_as_reference"] == 1.0:  # reproduced the reference: every token agreed
        assert agreement["departures"] == 0 and agreement["top1_agreement"] == 1.0
    else:
        assert agreement["departures"] >= 1
    assert remote["speed"]["ttft_s"] > 0 and remote["speed"]["completion_tokens"] > 0
    assert remote["speed"]["peak_rss_bytes"] is None
    markdown = (out / "report.md").read_text()
    assert "| endpoint |" in markdown and "† endpoint (OpenAI-compatible server)" in markdown
    assert "† endpoint" in (out / "report.html").read_text()
