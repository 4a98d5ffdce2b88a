"""`exaone-edge serve --draft mtp` as a real process, driven by the official `openai` client: streamed answers are
the text the same server gives without drafting, greedy and seeded sampled; /health and /metrics report drafting.

F32 decoder, F32 KV cache, flash attention off: llama.cpp's CPU kernels round a (k+1)-row verify differently from a
one-row step (max |Δlogit| 9e-7 here; 8e-4 with an F16 cache and flash attention, 4e-2 at Q4_K_M), and a sampled
draw that falls within that of a boundary would differ for that reason alone (runtime/drafting.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import serve_process

MODEL = "bundle"
ARGS = ("--ctx", "1024", "--threads", "1", "--kv-type", "f32", "--flash-attn", "off")
QUESTIONS = ("What is the total amount due on invoice INV-2024-0042?", "계약서 제3조에 따른 위약금은 얼마입니까?")
SAMPLINGS = ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.95, "seed": 11})


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("serve-draft") / MODEL)


def _streamed(url: str, question: str, sampling: dict) -> tuple[str, str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=40, stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **sampling)
    chunks = [chunk for chunk in stream if chunk.choices]
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


def _answers(bundle, *flags: str) -> tuple[list, dict, str]:
    with serve_process(bundle, *ARGS, *flags) as (url, _):
        answers = [_streamed(url, q, s) for q in QUESTIONS for s in SAMPLINGS]
        return answers, httpx.get(f"{url}/health", timeout=120).json(), httpx.get(f"{url}/metrics", timeout=120).text


def test_streamed_answers_are_the_same_with_mtp_drafting(bundle):
    plain, plain_health, _ = _answers(bundle)
    drafted, health, metrics = _answers(bundle, "--draft", "mtp", "--draft-max", "3")
    assert all(text for text, _ in plain)
    assert drafted == plain
    assert "draft" not in plain_health
    draft = health["draft"]
    assert draft["method"] == "mtp" and draft["draft_max"] == 3 and draft["steps"] > 0 and draft["drafted"] > 0
    assert 0 <= draft["acceptance_rate"] <= 1 and draft["tokens_per_s"] > 0
    values = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("exaone_edge_draft")}
    assert values["exaone_edge_draft_tokens"] >= draft["drafted"] > 0
    assert 0 <= values["exaone_edge_draft_acceptance_rate"] <= 1
    assert values["exaone_edge_draft_decode_tokens_per_second"] > 0
