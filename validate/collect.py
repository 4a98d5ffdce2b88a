"""`exaone-edge validate`: every artifact against transformers on the same document pages and questions."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge import __version__
from exaone_edge.engine_settings import EngineSettings
from exaone_edge.errors import InputError
from exaone_edge.machine import describe_machine
from exaone_edge.metrics import ANLS_THRESHOLD, anls, exact_match, row_cosines
from exaone_edge.progress import log
from exaone_edge.runtime.reasoning import split_text
from exaone_edge.reference.inputs import Question
from exaone_edge.reference.file import ReferenceFile, topk_fidelity
from exaone_edge.validate.schema import (ArtifactResult, DecoderFidelity, EvalSet, Flip, Mode, QuestionOutcome,
                                         ReferenceRun, ReferenceTask, TaskAccuracy, ValidationReport, VisionFidelity)


# Answer budgets per mode. Off: the answer comes at once, and document answers are a few words. On: the
# reasoning comes first and runs to hundreds of tokens; a reply cut before `</think>` has no answer at all.
ANSWER_TOKENS = {False: 24, True: 1024}


@dataclass(frozen=True)
class ValidateOptions:
    max_questions: int = 12
    max_new_tokens: int | None = None  # None: the mode's budget (ANSWER_TOKENS)
    measure_speed: bool = True
    thinking: bool = False  # the template's enable_thinking for the reference and every candidate
    # Where bundles run and the page budget, as for `run` (pages are fitted to image_max_tokens for the reference and
    # every candidate alike).
    engine: EngineSettings = EngineSettings()

    def engine_options(self) -> dict[str, Any]:
        """The placement and page budget, by EngineSettings field (what candidates and the speed probe load with)."""
        return {name: getattr(self.engine, name) for name in ("device", "n_gpu_layers", "vision_provider",
                                                                "image_max_tokens")}

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


def vision_fidelity(candidate, reference: ReferenceFile, questions: list[Question]) -> VisionFidelity | None:
    cosines, max_abs = [], 0.0
    for question, entry in zip(questions, reference.entries):
        rows = candidate.vision_rows(question.image)
        if rows is None:
            break
        cosines.append(row_cosines(entry.vision_rows, rows))
        max_abs = max(max_abs, float(np.abs(entry.vision_rows - rows).max()))
    if not cosines:
        return None
    every = np.concatenate(cosines)
    return VisionFidelity(cosine_min=float(every.min()), cosine_mean=float(every.mean()), max_abs=max_abs)


def task_accuracy(questions: list[Question], reference_answers: list[str], answers: list[str]) -> TaskAccuracy:
    scores = [anls(a, q.answers) for a, q in zip(answers, questions)]
    matches = [exact_match(a, q.answers) for a, q in zip(answers, questions)]
    outcomes = [QuestionOutcome(_correct(r, q.answers), _correct(a, q.answers), same_answer=a == r)
                for q, r, a in zip(questions, reference_answers, answers)]
    flips = tuple(Flip(q.question, r, a, "correct → wrong" if o.reference_correct else "wrong → correct")
                  for q, r, a, o in zip(questions, reference_answers, answers, outcomes)
                  if o.reference_correct != o.correct)
    reference_anls = float(np.mean([anls(r, q.answers) for r, q in zip(reference_answers, questions)]))
    return TaskAccuracy(
        anls=float(np.mean(scores)), exact_match=float(np.mean(matches)),
        recovery=float(np.mean(scores)) / reference_anls if reference_anls > 0 else None,
        flip_rate=len(flips) / len(questions), flips=flips,
        same_answer_as_reference=float(np.mean([o.same_answer for o in outcomes])), per_question=tuple(outcomes),
    )


def evaluate_artifact(candidate, reference: ReferenceFile, questions: list[Question], options: ValidateOptions,
                      pages_dir: Path) -> ArtifactResult:
    result = ArtifactResult(candidate.name, candidate.kind, str(candidate.path), candidate.bits, candidate.bytes,
                            vision=vision_fidelity(candidate, reference, questions))
    if not hasattr(candidate, "teacher_forced"):
        return result

    log(f"validate: {candidate.name}: teacher-forced logits on {len(questions)} answers")
    candidate_logits = [candidate.teacher_forced(q, list(e.answer_ids)) for q, e in zip(questions, reference.entries)]
    decoder = DecoderFidelity.from_logits(topk_fidelity(reference.entries, candidate_logits))  # KL, rest lumped

    log(f"validate: {candidate.name}: answering {len(questions)} questions")
    answers = [options.answer(candidate.generate(q, options.answer_tokens)) for q in questions]
    reference_answers = [options.answer(entry.answer or "") for entry in reference.entries]
    speed = None
    if options.measure_speed and candidate.kind == "bundle":
        from exaone_edge.validate.probe import probe

        page = pages_dir / "probe.png"
        questions[0].image.save(page)
        speed = probe(candidate.path, page, questions[0].question, options.engine_options())
    return replace(result, decoder=decoder, task=task_accuracy(questions, reference_answers, answers), speed=speed)


def evaluate_endpoint(candidate, reference: ReferenceFile, questions: list[Question],
                      options: ValidateOptions) -> ArtifactResult:
    """An OpenAI-compatible endpoint (validate/endpoint.py): answers scored as a bundle's, top-1 along its greedy
    answers from top_logprobs (thinking off only: with it on the reasoning precedes the answer), speed as it answered."""
    from exaone_edge.validate.endpoint import endpoint_agreement, endpoint_speed

    log(f"validate: {candidate.name}: answering {len(questions)} questions over HTTP")
    replies = [candidate.ask(q, options.answer_tokens) for q in questions]
    answers = [options.answer(candidate.raw_answer(reply)) for reply in replies]
    reference_answers = [options.answer(entry.answer or "") for entry in reference.entries]
    agreement = None if options.thinking else endpoint_agreement([e.answer or "" for e in reference.entries], replies)
    return ArtifactResult(candidate.name, candidate.kind, candidate.path, None, None,
                          task=task_accuracy(questions, reference_answers, answers),
                          speed=endpoint_speed(replies) if options.measure_speed else None, endpoint=agreement)


def fit_pages(questions: list[Question], reference_dir: Path, image_max_tokens: int) -> list[Question]:
    """Pages at most `image_max_tokens` decoder rows, as `run`/`serve --image-max-tokens` fit them: the reference
    and every candidate then see the deployed page (fitting a fitted page again changes nothing), and the
    reference file's key changes with the pixels."""
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.vision.preprocess import fit_page, with_image_max_tokens

    spec = with_image_max_tokens(open_checkpoint(reference_dir, read_weights=False).image, image_max_tokens)
    return [replace(q, image=fit_page(q.image, spec)) for q in questions]


def validate(reference_dir: Path, artifacts: list[Path], eval_set: Path | None,
             options: ValidateOptions = ValidateOptions(), reference_cache: Path | None = None,
             reference_dtype: str = "auto", endpoints: list[Any] = ()) -> ValidationReport:
    from exaone_edge.documents import documents_or_builtin
    from exaone_edge.manifest import read_manifest
    from exaone_edge.validate.candidates import open_candidate
    from exaone_edge.reference.inputs import chat_inputs
    from exaone_edge.reference.streamed import question_reference

    from exaone_edge.validate.endpoint import EndpointCandidate

    if not artifacts and not endpoints:
        raise InputError("no artifacts to validate",
                         fix="Pass one or more bundles, GPTQ checkpoints or vision exports, or --endpoint URL.")
    for path in artifacts:  # fail on a wrong path or a dead endpoint before minutes of reference work
        read_manifest(Path(path), verify=False)
    servers = [EndpointCandidate(endpoint, options.thinking) for endpoint in endpoints]
    for server in servers:
        server.check()
    documents, source = documents_or_builtin(eval_set, builtin=6, seed=1)
    questions = questions_from(documents, options.max_questions)
    if options.engine.image_max_tokens is not None:
        questions = fit_pages(questions, Path(reference_dir), options.engine.image_max_tokens)
    log(f"validate: reference {reference_dir} on {len(questions)} questions")
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
    for server in servers:
        try:
            results.append(evaluate_endpoint(server, reference, questions, options))
        finally:
            server.close()
    return ValidationReport(
        toolkit_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=describe_machine(),
        reference=ReferenceRun(str(reference_dir), str(reference_file), reused, reference.details),
        mode=Mode(thinking=options.thinking, answer_tokens=options.answer_tokens,
                  image_max_tokens=options.engine.image_max_tokens),
        eval_set=EvalSet(path=source, sha256=documents.content_hash, documents=len(documents.documents),
                         questions=len(questions)),
        reference_task=ReferenceTask(
            anls=float(np.mean([anls(a, q.answers) for a, q in zip(reference_answers, questions)])),
            exact_match=float(np.mean([exact_match(a, q.answers) for a, q in zip(reference_answers, questions)])),
        ),
        artifacts=tuple(results),
    )
