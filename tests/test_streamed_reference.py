"""The layer-streamed reference equals transformers' whole model; its file is reused without the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exaone_edge.metrics import log_softmax


@pytest.fixture(scope="module")
def questions():
    from exaone_edge.documents import generate_set
    from exaone_edge.validate.collect import questions_from

    return questions_from(generate_set(2, ["en", "ko"], 3), 2)


@pytest.fixture(scope="module")
def whole_model(tiny_model_dir: Path, questions):
    """transformers' whole-model reference (float32, CPU): logits, greedy answers, vision rows."""
    from exaone_edge.reference.inputs import HFModel

    model = HFModel(tiny_model_dir, tiny_model_dir)
    answers = [model.answer_ids(q.answers[0]) for q in questions]
    result = {"answers": answers, "logits": [model.teacher_forced(q, a) for q, a in zip(questions, answers)],
              "generated": [model.generate(q, 8) for q in questions],
              "rows": [model.vision_rows(q.image) for q in questions]}
    del model
    return result


def test_streamed_reference_equals_the_whole_model(tiny_model_dir, questions, whole_model):
    from exaone_edge.reference.inputs import chat_inputs
    from exaone_edge.reference.streamed import StreamedReference

    streamed = StreamedReference(tiny_model_dir, dtype="float32", device="cpu")
    inputs = [chat_inputs(streamed.processor, q) for q in questions]
    logits, generated, rows = streamed.run(inputs, whole_model["answers"], max_new_tokens=8)
    for mine, theirs in zip(logits, whole_model["logits"]):
        assert mine.shape == theirs.shape
        assert np.abs(mine - theirs).max() <= 1e-4
    assert [streamed.decode(g) for g in generated] == whole_model["generated"]
    for mine, theirs in zip(rows, whole_model["rows"]):
        assert np.abs(mine - theirs).max() <= 1e-4
    again = streamed.vision_rows(inputs[:1])[0]  # the tower was released and is read again
    assert np.array_equal(again.numpy(), rows[0])
    # One pass for teacher forcing + prefill, then one per generated token: every weight read once per pass.
    layers = sum(1 for name in streamed.weights.layout if name.endswith(".self_attn.q_proj.weight")
                 and name.startswith("model.language_model.layers."))
    assert streamed.passes == 8 and layers == 64
    # After the run nothing of the decoder is resident: every layer is back on the meta device.
    assert all(p.is_meta for p in streamed.model.model.language_model.layers.parameters())


@pytest.mark.parametrize("coverage", [0.9999, 0.999, 0.99, 0.9])
def test_kl_from_kept_tokens_agrees_with_full_vocabulary_kl(whole_model, coverage):
    """Tolerance: per position KL_full − 10·(1 − coverage)·KL_full − 1e-6 ≤ KL_kept ≤ KL_full + 1e-6 (lumping
    is a lower bound; the gap is the KL the left-out tokens carry, measured up to 5·(1 − coverage)·KL_full here).
    The default coverage (0.9999) keeps the tiny model's whole flat vocabulary: exact up to rounding."""
    from exaone_edge.reference.file import kl_from_topk, topk_numpy

    reference = np.concatenate(whole_model["logits"])
    rng = np.random.default_rng(0)
    for scale in (0.02, 0.1, 0.5):  # candidates from nearly exact to far off
        candidate = reference + scale * reference.std() * rng.standard_normal(reference.shape).astype(np.float32)
        ref_logp, cand_logp = log_softmax(reference), log_softmax(candidate)
        full = (np.exp(ref_logp) * (ref_logp - cand_logp)).sum(-1)
        kept = topk_numpy(reference, coverage=coverage)
        approx = kl_from_topk(kept, candidate)
        assert kept.rest_mass().max() <= 1 - coverage + 1e-6
        assert np.all(approx <= full + 1e-6)
        assert np.all(full - approx <= 10 * (1 - coverage) * full + 1e-6)


def test_reference_file_round_trip_checksum_and_key(tmp_path, whole_model):
    from exaone_edge.reference.file import (
        ReferenceEntry, ReferenceFile, read_reference, topk_fidelity, topk_numpy, write_reference,
    )

    entries = [ReferenceEntry(topk_numpy(logits), answer_ids=tuple(a), answer="x", vision_rows=rows)
               for logits, a, rows in zip(whole_model["logits"], whole_model["answers"], whole_model["rows"])]
    path = write_reference(tmp_path / "ref.npz", ReferenceFile("k1", {"dtype": "float32"}, entries))
    loaded = read_reference(path, "k1")
    assert loaded is not None and loaded.details == {"dtype": "float32"}
    for a, b in zip(entries, loaded.entries):
        assert np.array_equal(a.topk.ids, b.topk.ids) and np.array_equal(a.vision_rows, b.vision_rows)
    same = topk_fidelity(loaded.entries, whole_model["logits"])
    assert same.kl_max < 1e-6 and same.top1_agreement == 1.0
    assert read_reference(path, "another key") is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the arrays
    path.write_bytes(bytes(data))
    assert read_reference(path, "k1") is None


def test_second_validate_run_reuses_the_reference_file_without_the_checkpoint(
        tiny_model_dir, tiny_vision_dir, tmp_path, monkeypatch):
    from exaone_edge.documents import generate_set
    from exaone_edge import torch_weights
    from exaone_edge.reference import inputs as reference, streamed
    from exaone_edge.validate import collect

    docs = tmp_path / "docs"
    generate_set(2, ["en", "ko"], 3, out=docs)
    cache = tmp_path / "cache"
    options = collect.ValidateOptions(max_questions=2, max_new_tokens=4, measure_speed=False)
    first = collect.validate(tiny_model_dir, [tiny_vision_dir], docs, options, reference_cache=cache)
    assert first.reference.reused is False and Path(first.reference.file).parent == cache
    assert first.artifacts[0].vision.cosine_min > 0.9999

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded on a run that had its reference file")

    monkeypatch.setattr(streamed.StreamedReference, "__init__", refuse)
    monkeypatch.setattr(torch_weights.ShardReader, "read", refuse)
    monkeypatch.setattr(reference.HFModel, "__init__", refuse)
    second = collect.validate(tiny_model_dir, [tiny_vision_dir], docs, options, reference_cache=cache)
    assert second.reference.reused is True and second.reference.file == first.reference.file
    assert second.artifacts[0].vision == first.artifacts[0].vision
    assert second.reference_task == first.reference_task
    # Other options are another reference: it would be computed again (and here refused).
    with pytest.raises(AssertionError, match="checkpoint was loaded"):
        collect.validate(tiny_model_dir, [tiny_vision_dir], docs,
                         collect.ValidateOptions(max_questions=2, max_new_tokens=5, measure_speed=False),
                         reference_cache=cache)


def test_questions_whose_caches_do_not_fit_together_run_in_groups(tiny_model_dir, questions, tmp_path, monkeypatch):
    """Each generating question keeps every layer's KV cache on the device (0.46 GB each for the 33B): when they do
    not fit together the reference runs them in groups, each with its own passes, and writes the same file."""
    from exaone_edge.reference import streamed

    def reference(cache: str):
        return streamed.question_reference(tiny_model_dir, questions, "eval", {}, 4, cache_dir=tmp_path / cache,
                                           dtype="float32")[0]

    together = reference("together")
    monkeypatch.setattr(streamed, "REFERENCE_CACHE_SHARE", 1e-12)  # no two questions fit: one group each
    apart = reference("apart")
    assert len(questions) == 2 and apart.details["weight_passes"] > together.details["weight_passes"]
    for mine, theirs in zip(apart.entries, together.entries, strict=True):
        assert mine.answer == theirs.answer and mine.answer_ids == theirs.answer_ids
        assert np.array_equal(mine.topk.ids, theirs.topk.ids)
        assert np.abs(mine.topk.logits - theirs.topk.logits).max() <= 1e-5
        assert np.abs(mine.vision_rows - theirs.vision_rows).max() <= 1e-5
