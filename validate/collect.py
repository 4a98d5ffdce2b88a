"""`exaone-edge validate`: every artifact against transformers on the same document pages and questions."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge import __version__
from exaone_edge.errors import InputError
from exaone_edge.machine import describe_machine
from exaone_edge.metrics import ANLS_THRESHOLD, anls, exact_match, row_cosines
from exaone_edge.progress import log
from exaone_edge.runtime.reasoning import split_text
from exaone_edge.validate.reference import Question
from exaone_edge.validate.reference_file import ReferenceFile, topk_fidelity

SCHEMA_VERSION = 1


# Answer budgets per mode. Off: the answer comes at once, and document answers are a few words. On: the
# reasoning comes first and runs to hundreds of tokens; a reply cut before `</think>` has no answer at all.
ANSWER_TOKENS = {False: 24, True: 1024}


@dataclass(frozen=True)
class ValidateOptions:
    max_questions: int = 12
    max_new_tokens: int | None = None  # None: the mode's budget (ANSWER_TOKENS)
    measure_speed: bool = True
    thinking: bool = False  # the template's enable_thinking for the reference and every candidate
    device: str = "auto"  # where bundles run (as `run --device`); exaone_edge.device decides each part
    gpu_layers: int | None = None
    vision_provider: str = "auto"

    def engine_options(self) -> dict[str, Any]:
        return {"device": self.device, "n_gpu_layers": self.gpu_layers, "vision_provider": self.vision_provider}

    @property
    def answer_tokens(self) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else ANSWER_TOKENS[self.thinking]

    def answer(self, reply: str) -> str:
        """What is scored: with thinking, only the text after `</think>` ("" when the budget ran out first)."""
        return split_text(reply, in_reasoning=self.thinking).content.strip()


def questions_from(documents, limit: int) -> list[Question]:
    found = [Question(doc.id, doc.page_image(qa.page), qa.question, list(qa.answers))
             for doc in documents.documents for qa in doc.qa if qa.answers]
    if not found:
        raise InputError("the evaluation set has no questions with answers",
                         fix="Use a set made by `exaone-edge docs make`, or add a qa.jsonl to your folder.")
    return found[:limit]


def _correct(answer: str, gold: list[str]) -> bool:
    return anls(answer, gold) >= ANLS_THRESHOLD


def evaluate_artifact(candidate, reference: ReferenceFile, questions: list[Question], options: ValidateOptions,
                      pages_dir: Path) -> dict[str, Any]:
    reference_answers = [options.answer(entry.answer or "") for entry in reference.entries]
    result: dict[str, Any] = {"name": candidate.name, "kind": candidate.kind, "path": str(candidate.path),
                              "bits": candidate.bits, "bytes": candidate.bytes,
                              "vision": None, "decoder": None, "task": None, "speed": None}
    cosines, max_abs = [], 0.0
    for question, entry in zip(questions, reference.entries):
        rows = candidate.vision_rows(question.image)
        if rows is None:
            break
        expected = entry.vision_rows
        cosines.append(row_cosines(expected, rows))
        max_abs = max(max_abs, float(np.abs(expected - rows).max()))
    if cosines:
        every = np.concatenate(cosines)
        result["vision"] = {"cosine_min": float(every.min()), "cosine_mean": float(every.mean()), "max_abs": max_abs}
    if not hasattr(candidate, "teacher_forced"):
        return result

    log(f"validate: {candidate.name}: teacher-forced logits on {len(questions)} answers")
    candidate_logits = [candidate.teacher_forced(q, list(e.answer_ids)) for q, e in zip(questions, reference.entries)]
    fidelity = topk_fidelity(reference.entries, candidate_logits)  # KL with the mass outside the top k lumped
    result["decoder"] = {"kl_mean": fidelity.kl_mean, "kl_p99": fidelity.kl_p99, "kl_max": fidelity.kl_max,
                         "top1_agreement": fidelity.top1_agreement, "ppl_ratio": fidelity.ppl_ratio,
                         "positions": fidelity.positions}

    log(f"validate: {candidate.name}: answering {len(questions)} questions")
    answers = [options.answer(candidate.generate(q, options.answer_tokens)) for q in questions]
    scores = [anls(a, q.answers) for a, q in zip(answers, questions)]
    matches = [exact_match(a, q.answers) for a, q in zip(answers, questions)]
    flips = []
    for q, ref_answer, answer in zip(questions, reference_answers, answers):
        before, after = _correct(ref_answer, q.answers), _correct(answer, q.answers)
        if before != after:
            flips.append({"question": q.question, "reference_answer": ref_answer, "answer": answer,
                          "change": "correct → wrong" if before else "wrong → correct"})
    reference_anls = float(np.mean([anls(a, q.answers) for a, q in zip(reference_answers, questions)]))
    result["task"] = {
        "anls": float(np.mean(scores)), "exact_match": float(np.mean(matches)),
        "recovery": float(np.mean(scores)) / reference_anls if reference_anls > 0 else None,
        "flip_rate": len(flips) / len(questions), "flips": flips,
        "same_answer_as_reference": float(np.mean([a == r for a, r in zip(answers, reference_answers)])),
        "per_question": [{"reference_correct": _correct(r, q.answers), "correct": _correct(a, q.answers),
                          "same_answer": a == r} for q, r, a in zip(questions, reference_answers, answers)],
    }
    if options.measure_speed and candidate.kind == "bundle":
        from exaone_edge.validate.probe import probe

        page = pages_dir / "probe.png"
        questions[0].image.save(page)
        result["speed"] = probe(candidate.path, page, questions[0].question, options.engine_options())
    return result


def validate(reference_dir: Path, artifacts: list[Path], eval_set: Path | None,
             options: ValidateOptions = ValidateOptions(), reference_cache: Path | None = None,
             reference_dtype: str = "auto") -> dict[str, Any]:
    from exaone_edge.docs import generate_set, load_documents
    from exaone_edge.validate.candidates import open_candidate

    if not artifacts:
        raise InputError("no artifacts to validate", fix="Pass one or more bundles, GPTQ checkpoints or vision exports.")
    from exaone_edge.manifest import read_manifest

    for path in artifacts:  # fail on a wrong path before minutes of reference work
        read_manifest(Path(path), verify=False)
    documents = load_documents(eval_set) if eval_set else generate_set(6, ["en", "ko"], 1)
    questions = questions_from(documents, options.max_questions)
    log(f"validate: reference {reference_dir} on {len(questions)} questions")
    from exaone_edge.validate.streamed import question_reference

    from exaone_edge.validate.reference import chat_inputs

    key_options = {"max_new_tokens": options.answer_tokens, "thinking": options.thinking}
    reference, reference_file, reused = question_reference(
        Path(reference_dir), questions, documents.content_hash, key_options, options.answer_tokens,
        cache_dir=reference_cache, dtype=reference_dtype,
        make_inputs=lambda processor, q: chat_inputs(processor, q, options.thinking))
    reference_answers = [options.answer(entry.answer or "") for entry in reference.entries]
    results = []
    with tempfile.TemporaryDirectory(prefix="exaone-edge-validate-") as scratch:
        for path in artifacts:
            candidate = open_candidate(Path(path), Path(reference_dir), options.thinking, options.engine_options())
            try:
                results.append(evaluate_artifact(candidate, reference, questions, options, Path(scratch)))
            finally:
                candidate.close()
    return {
        "schema": SCHEMA_VERSION,
        "toolkit_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "reference": {"path": str(reference_dir), "file": str(reference_file), "reused": reused, **reference.details},
        # One mode for the reference and every candidate, prompts and answers alike.
        "mode": {"thinking": options.thinking, "answer_tokens": options.answer_tokens,
                 "scored": "text after </think>" if options.thinking else "the whole reply"},
        "eval_set": {"path": str(eval_set) if eval_set else "built-in (6 documents, seed 1)",
                     "sha256": documents.content_hash, "documents": len(documents.documents),
                     "questions": len(questions)},
        "reference_task": {
            "anls": float(np.mean([anls(a, q.answers) for a, q in zip(reference_answers, questions)])),
            "exact_match": float(np.mean([exact_match(a, q.answers) for a, q in zip(reference_answers, questions)])),
        },
        "artifacts": results,
    }
