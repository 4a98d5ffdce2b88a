"""Speculative decoding (--draft, runtime/drafting.py) on the tiny bundle: the output is the target's own.

The tiny model's random MTP head almost never guesses right, so beside it an oracle drafter proposes the
baseline's own next tokens with errors injected on a schedule: every step's acceptance (all k, some, none) is
known in advance, and each rejected row must leave the KV cache (the next verify starts right after the last
accepted token, and a row left behind changes what follows). The window of the tiny model is 32 positions, so
the answers run across several windows of the sliding-window layers.
"""

from __future__ import annotations

import threading

import pytest

from exaone_edge.llama_context import prompt_keys
from exaone_edge.runtime.drafting import Speculation
from exaone_edge.runtime.generation import GenerationParams, collect
from runtime_bundle_fixture import TransformersVisionRows, build_tiny_bundle
from runtime_fixtures import noise_image

K = 3
PROMPTS = {
    "invoice": "Invoice INV-2024-0042: total due 1,234.56 USD by 2024-12-31. What is the total?",
    "contract": "계약서 제3조에 따른 위약금은 얼마입니까? 합계 금액: 1,823,250원",
}
GREEDY = GenerationParams(max_tokens=48, ignore_eos=True)
SAMPLED = GenerationParams(max_tokens=48, ignore_eos=True, temperature=0.9, top_k=40, top_p=0.95, seed=7)
# Per step: None accepts every draft, an index puts a wrong token there (drafts before it are accepted).
SCHEDULE = (None, 1, 0, 2, None, 0, 0, 1)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("drafting") / "bundle")


@pytest.fixture(scope="module")
def vision(tiny_model_dir):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    model = Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return TransformersVisionRows(model, tiny_model_dir)


def _engine(bundle, vision=None, **options):
    from exaone_edge.bundle import load_bundle
    from exaone_edge.engine_settings import EngineSettings
    from exaone_edge.runtime.engine import Engine

    settings = dict(n_ctx=512, flash_attn=False, kv_type="f32", n_threads=1)
    return Engine(load_bundle(bundle), EngineSettings(**{**settings, **options}), vision=vision)


def _user(text: str, image=None) -> list[dict]:
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def baseline(bundle, vision):
    """Each prompt's tokens from the target alone, greedy and sampled, text and with a page."""
    engine = _engine(bundle, vision)
    try:
        page = noise_image(120, 90, seed=3)
        return {(name, params.greedy, image): collect(engine.generate(_user(text, page if image else None), params))
                for name, text in PROMPTS.items() for params in (GREEDY, SAMPLED) for image in (False, True)}
    finally:
        engine.close()


class Oracle:
    """Proposes the baseline's next k tokens, one of them wrong where SCHEDULE says; records each step's outcome."""

    def __init__(self, llama, expected: dict[tuple, tuple[int, ...]]) -> None:
        self.llama, self.expected = llama, expected  # prompt keys → the target's own tokens
        self.steps: dict[int, list[tuple[int, int]]] = {}  # request → (tokens emitted, as planned) per step
        self._last: dict[int, tuple[int, int | None]] = {}

    def draft(self, requests, k):
        drafts = []
        for request in requests:
            keys = tuple(prompt_keys(request.segments))
            tokens, produced = self.expected[keys], request.produced  # the last emitted token is pending
            assert self.llama.length(request.slot) == len(keys) + produced - 1  # no rejected row left behind
            if id(request) in self._last:
                before, error = self._last[id(request)]
                self.steps.setdefault(id(request), []).append((produced - before, K + 1 if error is None else error + 1))
            error = SCHEDULE[len(self.steps.get(id(request), [])) % len(SCHEDULE)]
            proposal = (list(tokens[produced:produced + k]) + [0] * k)[:k]
            if error is not None:
                proposal[error] = (proposal[error] + 1) % self.llama.n_vocab
            self._last[id(request)] = (produced, error)
            drafts.append(proposal)
        return drafts


def _with_oracle(engine, jobs):
    """Run each (messages, params, expected tokens) at once through the engine, an oracle drafting for all."""
    expected = {tuple(prompt_keys(engine._prepare(messages, params.template_kwargs).segments)): tokens
                for messages, params, tokens in jobs}
    oracle = Oracle(engine.llama, expected)
    engine.scheduler.speculation = Speculation(engine.llama, oracle, K, "oracle")
    results = [None] * len(jobs)

    def run(index, messages, params):
        try:
            results[index] = collect(engine.generate(messages, params))
        except BaseException as exc:  # noqa: BLE001 — reported by the test, not lost in the thread
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, m, p)) for i, (m, p, _) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, oracle


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_oracle_drafts_full_partial_and_no_acceptance(bundle, vision, baseline, greedy):
    params = GREEDY if greedy else SAMPLED
    page = noise_image(120, 90, seed=3)
    engine = _engine(bundle, vision, parallel=2)
    try:
        jobs = [(_user(PROMPTS["invoice"], page), params, baseline[("invoice", greedy, True)].token_ids),
                (_user(PROMPTS["contract"]), params, baseline[("contract", greedy, False)].token_ids)]
        results, oracle = _with_oracle(engine, jobs)
    finally:
        engine.close()
    for (_, _, expected), result in zip(jobs, results):
        assert not isinstance(result, BaseException), result
        assert result.token_ids == expected  # what the target alone produced
    outcomes = [step for steps in oracle.steps.values() for step in steps]
    assert len(outcomes) >= 2 * len(SCHEDULE)
    assert all(emitted == planned for emitted, planned in outcomes), outcomes
    assert {planned for _, planned in outcomes} == {1, 2, 3, K + 1}  # none, partial (two kinds), full
    assert results[0].timings.drafted > 0 and 0 < results[0].timings.accepted < results[0].timings.drafted


@pytest.mark.parametrize("image", [False, True], ids=["text", "page"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_mtp_drafting_gives_the_targets_own_output(bundle, vision, baseline, greedy, image):
    params = GREEDY if greedy else SAMPLED
    page = noise_image(120, 90, seed=3)
    engine = _engine(bundle, vision, draft="mtp", draft_max=K)
    try:
        for name, text in PROMPTS.items():
            result = collect(engine.generate(_user(text, page if image else None), params))
            assert result.token_ids == baseline[(name, greedy, image)].token_ids, name
            assert result.timings.drafted > 0
        stats = engine.drafting
    finally:
        engine.close()
    assert stats["method"] == "mtp" and stats["draft_max"] == K and stats["steps"] > 0
    assert stats["drafted"] >= stats["accepted"] >= 0 and stats["tokens_per_step"] >= 1


def test_mtp_head_follows_prefix_reuse(bundle):
    """A follow-up turn reuses the cached prefix; the head is cut where the target is and drafts on from there."""
    engine = _engine(bundle, draft="mtp", draft_max=2)
    plain = _engine(bundle)
    try:
        first = _user(PROMPTS["invoice"])
        answer = collect(engine.generate(first, GREEDY))
        second = first + [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "And the date?"}]
        followed = collect(engine.generate(second, GREEDY))
        assert followed.usage.cached_tokens > 0 and followed.timings.drafted > 0
        assert followed.token_ids == collect(plain.generate(second, GREEDY)).token_ids
    finally:
        engine.close()
        plain.close()


def test_a_decoder_without_the_head_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    import json
    import shutil

    from exaone_edge.errors import ArtifactError
    from exaone_edge.llama import Model
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    headless = tmp_path / "headless"
    shutil.copytree(tiny_model_dir, headless)
    config = json.loads((headless / "config.json").read_text())
    config["text_config"]["num_nextn_predict_layers"] = 0
    config.pop("num_nextn_predict_layers", None)
    (headless / "config.json").write_text(json.dumps(config))
    path = convert_to_gguf(headless, tmp_path / "headless.gguf", "F32").path
    with pytest.raises(ArtifactError, match="no MTP head") as error:
        Model(path, load_mtp=True)
    assert "quantize" in str(error.value)
    Model(path).close()  # without drafting it loads as before
