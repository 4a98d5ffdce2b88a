"""The engine on the tiny bundle (F32 GGUF + fp32 ONNX) against transformers, plus reuse, sampling, limits, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from exaone_edge.errors import PromptTooLong
from exaone_edge.runtime.generation import GenerationParams, collect
from runtime_fixtures import hf_inputs, hf_processor, noise_image
from runtime_bundle_fixture import TransformersVisionRows, build_tiny_bundle

QUESTION = "What is the total amount on this invoice?"


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("runtime") / "bundle")


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    return Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _engine(bundle, vision, **options):
    from exaone_edge.bundle import load_bundle
    from exaone_edge.engine_settings import EngineSettings
    from exaone_edge.runtime.engine import Engine

    # Exact settings for parity: F32 KV cache, flash attention off (CPU flash attention computes in F16).
    settings = dict(n_ctx=1024, flash_attn=False, kv_type="f32", n_threads=1)
    return Engine(load_bundle(bundle), EngineSettings(**{**settings, **options}), vision=vision)


@pytest.fixture(scope="module")
def engine(tiny_bundle, hf_model, tiny_model_dir):
    """F32 GGUF decoder; vision rows from the checkpoint's own vision tower (so only llama.cpp is under test)."""
    engine = _engine(tiny_bundle, TransformersVisionRows(hf_model, tiny_model_dir))
    yield engine
    engine.close()


def _page_messages(image, question=QUESTION):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_first_token_logits_and_greedy_tokens_match_transformers(engine, hf_model, tiny_model_dir):
    import torch

    messages = _page_messages(noise_image(200, 150, seed=7))
    inputs = hf_inputs(hf_processor(tiny_model_dir), messages)
    assert engine.encode_prompt(messages).ids == inputs["input_ids"][0].tolist()
    with torch.no_grad():
        reference = hf_model(**inputs).logits[0, -1].numpy()
        hf_tokens = hf_model.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    logits = engine.next_token_logits(messages)
    diff = float(np.abs(logits - reference).max())
    print(f"first-token logits: max abs diff {diff:.2e} (logit scale {np.abs(reference).max():.2f})")
    assert diff <= 1e-3
    result = collect(engine.generate(messages, GenerationParams(max_tokens=20)))
    expected = [t for t in hf_tokens.tolist() if t not in engine.bundle.eos_token_ids][:20]
    assert list(result.token_ids) == expected
    assert len(result.token_ids) == 20 or result.finish_reason == "stop"


def test_second_question_on_the_same_page_reuses_vision_rows_and_kv(engine):
    page = noise_image(320, 240, seed=11)
    runs_before, encoder_calls = engine.vision_runs, engine.vision.runs
    first = collect(engine.generate(_page_messages(page), GenerationParams(max_tokens=8)))
    second = collect(engine.generate(_page_messages(page, "Who signed the contract?"), GenerationParams(max_tokens=8)))
    assert engine.vision_runs == runs_before + 1  # the encoder ran once for two questions
    assert engine.vision.runs == encoder_calls + 1  # counted by the encoder itself too
    assert first.usage.vision_runs == 1 and second.usage.vision_runs == 0
    assert second.usage.cached_tokens > second.usage.image_rows  # the page's rows were not decoded again
    assert second.usage.cached_tokens < second.usage.prompt_tokens
    print(
        f"TTFT first question {first.timings.ttft_s * 1000:.1f} ms "
        f"(vision {first.timings.vision_s * 1000:.1f} ms, {first.usage.prompt_tokens} positions); "
        f"second {second.timings.ttft_s * 1000:.1f} ms ({second.usage.cached_tokens} positions reused)"
    )
    follow_up = _page_messages(page) + [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And the due date?"},
    ]
    third = collect(engine.generate(follow_up, GenerationParams(max_tokens=4)))
    assert third.usage.vision_runs == 0 and third.usage.cached_tokens > third.usage.image_rows
    fresh = engine.next_token_logits(follow_up)
    engine.llama.reset()
    # Reuse gives the same numbers (up to float rounding: batches of different sizes sum in another order).
    np.testing.assert_allclose(fresh, engine.next_token_logits(follow_up), atol=1e-4)


def test_sampling_is_seeded_and_uses_the_sampler_chain(engine):
    messages = [{"role": "user", "content": "Summarise the quarterly report. 분기 보고서를 요약하세요."}]
    params = dict(max_tokens=12, temperature=0.9, top_p=0.95, top_k=50, min_p=0.02)
    a = collect(engine.generate(messages, GenerationParams(seed=1, **params)))
    b = collect(engine.generate(messages, GenerationParams(seed=1, **params)))
    c = collect(engine.generate(messages, GenerationParams(seed=2, **params)))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    greedy = collect(engine.generate(messages, GenerationParams(max_tokens=12)))
    top1 = collect(engine.generate(messages, GenerationParams(max_tokens=12, temperature=1.5, top_k=1, seed=5)))
    assert greedy.token_ids == top1.token_ids


def test_streaming_stop_strings_and_max_tokens(engine):
    messages = [{"role": "user", "content": "List the parties to the agreement."}]
    full = collect(engine.generate(messages, GenerationParams(max_tokens=16)))
    assert full.finish_reason == "length" and full.usage.completion_tokens == 16
    assert full.timings.tokens_per_s and full.timings.ttft_s > 0
    chunks = list(engine.generate(messages, GenerationParams(max_tokens=16)))
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == full.text
    stop = full.text.strip()[3:6]
    assert stop
    stopped = collect(engine.generate(messages, GenerationParams(max_tokens=16, stop=(stop,))))
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert full.text.startswith(stopped.text)


def test_ignore_eos_decodes_past_the_end_of_turn(engine, monkeypatch):
    messages = [{"role": "user", "content": "List the parties to the agreement."}]
    first = collect(engine.generate(messages, GenerationParams(max_tokens=1))).token_ids[0]
    monkeypatch.setattr(engine, "_stop_ids", set(engine._stop_ids) | {first})  # greedy now "ends" at once
    assert collect(engine.generate(messages, GenerationParams(max_tokens=6))).usage.completion_tokens == 0
    kept = collect(engine.generate(messages, GenerationParams(max_tokens=6, ignore_eos=True)))
    assert kept.finish_reason == "length" and kept.token_ids[0] == first and len(kept.token_ids) == 6


def test_closing_a_stream_early_frees_the_engine(engine):
    messages = [{"role": "user", "content": "Read the table."}]
    stream = engine.generate(messages, GenerationParams(max_tokens=50))
    next(stream)
    stream.close()  # what the server does when a client disconnects
    assert collect(engine.generate(messages, GenerationParams(max_tokens=2))).usage.completion_tokens == 2


def test_prompt_longer_than_the_context(tiny_bundle, engine):
    small = _engine(tiny_bundle, engine.vision, n_ctx=64)
    try:
        assert small.n_ctx == 256  # llama.cpp rounds the context up to a multiple of 256
        messages = _page_messages(noise_image(1000, 1000, seed=3))  # 256 vision rows at the pixel budget
        with pytest.raises(PromptTooLong, match="the context holds 256"):
            small.check(messages)
        with pytest.raises(PromptTooLong):
            collect(small.generate(messages))
        assert small.check([{"role": "user", "content": "hi"}]) < 256
        assert collect(small.generate([{"role": "user", "content": "hi"}], GenerationParams(max_tokens=2)))
    finally:
        small.close()


def test_cli_run_streams_an_answer(tiny_bundle, tmp_path):
    result = run_cli("run", str(tiny_bundle), QUESTION, "--max-tokens", "5", "--threads", "1", check=True)
    assert result.stdout.strip()
    assert "5 tokens" in result.stderr and "TTFT" in result.stderr
    result = run_cli("run", str(tiny_bundle), QUESTION, "--max-tokens", "3", "--json", "--seed", "1", "--temperature", "0.8", check=True)
    report = json.loads(result.stdout)
    assert report["usage"]["completion_tokens"] == 3 and report["finish_reason"] == "length"
    image = tmp_path / "page.png"
    noise_image(64, 64, seed=1).save(image)
    result = run_cli("run", str(tiny_bundle), QUESTION, "--image", str(image))  # this bundle has no vision/
    assert result.returncode == 2 and "has no vision encoder" in result.stderr
    pdf = tmp_path / "report.pdf"
    pages = [noise_image(300, 400, seed=s) for s in range(3)]
    pages[0].save(pdf, format="PDF", save_all=True, append_images=pages[1:])
    result = run_cli("run", str(tiny_bundle), QUESTION, "--pdf", str(pdf), "--pages", "7")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "outside 1-3" in result.stderr


def test_engine_import_stays_free_of_torch():
    code = (
        "import sys, exaone_edge.runtime.engine, exaone_edge.runtime.ask; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_prefix_reuse_falls_back_when_the_sliding_window_cache_has_moved_on(tiny_bundle, engine):
    # A small micro-batch keeps llama.cpp's sliding-window cache at 256 cells; a long answer then
    # evicts positions that a request diverging early would still need (window 32 in the tiny model).
    small = _engine(tiny_bundle, engine.vision, n_batch=32)
    try:
        page = noise_image(200, 150, seed=21)
        collect(small.generate(_page_messages(page), GenerationParams(max_tokens=300)))
        other = _page_messages(page, "Which currency?")
        logits = small.next_token_logits(other)
        small.llama.reset()
        np.testing.assert_allclose(logits, small.next_token_logits(other), atol=1e-4)
        again = collect(small.generate(other, GenerationParams(max_tokens=2)))
        assert again.usage.cached_tokens == again.usage.prompt_tokens - 1  # an identical prompt reuses all but one
    finally:
        small.close()


# -- the whole chain: fp32 ONNX vision encoder + F32 GGUF decoder ---------------------------------


@pytest.fixture(scope="module")
def onnx_bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("runtime-onnx") / "bundle", vision_dir=tiny_vision_dir)


def test_onnx_bundle_matches_transformers_end_to_end(onnx_bundle, hf_model, tiny_model_dir):
    import torch

    from exaone_edge.runtime.engine import Engine

    engine = Engine.load(onnx_bundle, n_ctx=1024, flash_attn=False, kv_type="f32", n_threads=1)
    try:
        messages = _page_messages(noise_image(200, 150, seed=7))
        inputs = hf_inputs(hf_processor(tiny_model_dir), messages)
        assert engine.check(messages) == inputs["input_ids"].shape[1]
        with torch.no_grad():
            reference = hf_model(**inputs).logits[0, -1].numpy()
            hf_tokens = hf_model.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        diff = float(np.abs(engine.next_token_logits(messages) - reference).max())
        print(f"ONNX fp32 + GGUF F32 first-token logits: max abs diff {diff:.2e}")
        assert diff <= 1e-3
        result = collect(engine.generate(messages, GenerationParams(max_tokens=20)))
        expected = [t for t in hf_tokens.tolist() if t not in engine.bundle.eos_token_ids][:20]
        assert list(result.token_ids) == expected
        second = collect(engine.generate(_page_messages(messages[0]["content"][0]["image"], "Who signed?"), GenerationParams(max_tokens=5)))
        assert engine.vision_runs == 1 and second.usage.vision_runs == 0
        print(f"second question: TTFT {second.timings.ttft_s * 1000:.1f} ms, {second.usage.cached_tokens} positions reused")
    finally:
        engine.close()


def test_cli_run_with_an_image_and_pdf_pages(onnx_bundle, tmp_path):
    image = tmp_path / "page.png"
    noise_image(240, 180, seed=5).save(image)
    result = run_cli("run", str(onnx_bundle), QUESTION, "--image", str(image), "--max-tokens", "5", "--threads", "1", check=True)
    assert result.stdout.strip() and "1 vision-encoder run(s)" in result.stderr
    pdf = tmp_path / "report.pdf"
    pages = [noise_image(300, 400, seed=s) for s in range(3)]
    pages[0].save(pdf, format="PDF", save_all=True, append_images=pages[1:])
    result = run_cli("run", str(onnx_bundle), QUESTION, "--pdf", str(pdf), "--pages", "2-3", "--max-tokens", "3", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["usage"]["vision_runs"] == 2 and report["usage"]["completion_tokens"] == 3


# -- parallel slots: several generations batched into one llama_decode per step ---------------------


def _record_batches(engine, monkeypatch) -> list[int]:
    sizes: list[int] = []
    step = engine.llama.decode_step
    monkeypatch.setattr(engine.llama, "decode_step", lambda steps: (sizes.append(len(steps)), step(steps))[1])
    return sizes


def test_parallel_generations_are_batched_and_match_one_at_a_time(tiny_bundle, engine, monkeypatch):
    import threading

    asks = [
        (_page_messages(noise_image(200, 150, seed=7)), 20),
        ([{"role": "user", "content": "List the parties to the agreement."}], 24),
        ([{"role": "user", "content": "Summarise the quarterly report. 분기 보고서를 요약하세요."}], 12),
        ([{"role": "user", "content": "Read the table."}], 30),
        ([{"role": "user", "content": "What is the due date?"}], 16),  # a fifth: it waits for a free slot
    ]
    alone = [collect(engine.generate(m, GenerationParams(max_tokens=n, ignore_eos=True))).token_ids for m, n in asks]
    wide = _engine(tiny_bundle, engine.vision, parallel=4)
    try:
        assert (wide.parallel, wide.n_ctx) == (4, engine.n_ctx)  # every slot holds the whole per-request context
        sizes = _record_batches(wide, monkeypatch)
        # The first prefill waits until all five are queued, so four certainly share the first decode steps
        # however the threads happen to be scheduled.
        queued, submitted, submit, prefill = threading.Event(), [], wide.scheduler.submit, wide.llama.prefill

        def submit_counted(request):
            submit(request)
            submitted.append(request)  # after: it is in the queue
            if len(submitted) == len(asks):
                queued.set()
            return request

        def prefill_once_all_queued(*args, **kwargs):
            queued.wait(300)
            return prefill(*args, **kwargs)

        monkeypatch.setattr(wide.scheduler, "submit", submit_counted)
        monkeypatch.setattr(wide.llama, "prefill", prefill_once_all_queued)
        results: list = [None] * len(asks)

        def run(i: int) -> None:
            messages, n = asks[i]
            results[i] = collect(wide.generate(messages, GenerationParams(max_tokens=n, ignore_eos=True)))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert [r.token_ids for r in results] == alone  # greedy and F32: batching changes nothing
        assert max(sizes) == 4 and wide.scheduler.running == 0
        print(f"decode batch sizes: {sorted(set(sizes))}, {len(sizes)} steps for {sum(len(t) for t in alone)} tokens")
    finally:
        wide.close()


def test_early_close_frees_a_slot_and_follow_ups_find_their_prefix(tiny_bundle, engine):
    wide = _engine(tiny_bundle, engine.vision, parallel=2)
    try:
        page = noise_image(320, 240, seed=11)
        first = collect(wide.generate(_page_messages(page), GenerationParams(max_tokens=6)))
        collect(wide.generate([{"role": "user", "content": "Something else entirely."}], GenerationParams(max_tokens=6)))
        follow_up = collect(wide.generate(_page_messages(page, "Who signed the contract?"), GenerationParams(max_tokens=4)))
        assert follow_up.usage.cached_tokens > first.usage.image_rows  # went to the slot holding the page

        messages = [{"role": "user", "content": "Read the table."}]
        a = wide.generate(messages, GenerationParams(max_tokens=500))
        b = wide.generate(messages, GenerationParams(max_tokens=500))  # decodes on while nobody reads it
        next(a), next(b)
        assert wide.scheduler.running == 2
        a.close()
        assert wide.scheduler.running == 1
        c = collect(wide.generate(messages, GenerationParams(max_tokens=3)))  # gets a's slot; b is still open
        assert c.usage.completion_tokens == 3 and wide.scheduler.running == 1
        b.close()
        assert wide.scheduler.running == 0
    finally:
        wide.close()
