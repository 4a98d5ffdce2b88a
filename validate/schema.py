"""The validation report as typed results, and its one JSON form (report.json, schema-versioned).

Everything in validate reads these dataclasses; JSON is made only by `to_dict` (report.json, `--json`) and read
only by `from_dict` (a baseline, an earlier report.json). Reports from before a field existed still read: missing
optional parts come back as None or empty."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from exaone_edge.metrics import LogitFidelity

SCHEMA_VERSION = 1


def _record(cls: type, data: dict[str, Any] | None) -> Any:
    """A dataclass from its JSON object; keys it does not know are ignored (reports only ever add keys)."""
    if data is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class VisionFidelity:
    """Per-row cosine and max abs difference of the vision rows against the transformers tower."""

    cosine_min: float
    cosine_mean: float
    max_abs: float


@dataclass(frozen=True)
class DecoderFidelity:
    """Teacher-forced logits against the reference, page image in the prompt."""

    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    ppl_ratio: float | None
    positions: int

    @classmethod
    def from_logits(cls, fidelity: LogitFidelity) -> DecoderFidelity:
        return cls(fidelity.kl_mean, fidelity.kl_p99, fidelity.kl_max, fidelity.top1_agreement, fidelity.ppl_ratio,
                   fidelity.positions)


@dataclass(frozen=True)
class Flip:
    question: str
    reference_answer: str
    answer: str
    change: str  # "correct → wrong" or "wrong → correct"


@dataclass(frozen=True)
class QuestionOutcome:
    reference_correct: bool
    correct: bool
    same_answer: bool  # the answer's text equals the reference's


@dataclass(frozen=True)
class TaskAccuracy:
    """Document-QA accuracy of greedy answers, and what changed against the reference's answers."""

    anls: float
    exact_match: float
    recovery: float | None  # ANLS / the reference's ANLS; None when the reference scored 0
    flip_rate: float
    flips: tuple[Flip, ...]
    same_answer_as_reference: float
    per_question: tuple[QuestionOutcome, ...] = ()  # absent from the first reports

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TaskAccuracy | None:
        if data is None:
            return None
        return _record(cls, {**data, "flips": tuple(_record(Flip, f) for f in data.get("flips", ())),
                             "per_question": tuple(_record(QuestionOutcome, q) for q in data.get("per_question", ()))})


@dataclass(frozen=True)
class Speed:
    """One bundle's speed and memory, measured in a fresh process (probe.py); an endpoint's over its answers."""

    ttft_s: float
    decode_tokens_per_s: float | None  # None with fewer than two generated tokens
    prompt_tokens: int
    completion_tokens: int
    peak_rss_bytes: int | None  # None: an endpoint (its memory is the server's)


@dataclass(frozen=True)
class EndpointAgreement:
    """An endpoint's top-1 along its own greedy answers, from `top_logprobs` (validate/endpoint.py): not teacher-forced."""

    top1_agreement: float | None
    positions: int  # tokens compared: those that continue the reference's answer, and each first departure
    departures: int
    runner_up_departures: int  # departures where the reference's continuation was the endpoint's second choice


@dataclass(frozen=True)
class ProbeFailed:
    error: str  # the probe's last stderr line


@dataclass(frozen=True)
class ArtifactResult:
    name: str
    kind: str  # bundle, gptq, vision or endpoint
    path: str
    bits: int | None
    bytes: int | None
    vision: VisionFidelity | None = None  # None: no vision encoder in the artifact (GPTQ copies the tower)
    decoder: DecoderFidelity | None = None  # None: no decoder (a vision export)
    task: TaskAccuracy | None = None
    speed: Speed | ProbeFailed | None = None  # None: not measured (not a bundle, or --no-speed)
    endpoint: EndpointAgreement | None = None  # an OpenAI-compatible endpoint (kind "endpoint") in place of `decoder`

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactResult:
        speed = data.get("speed")
        return _record(cls, {
            **data, "vision": _record(VisionFidelity, data.get("vision")),
            "endpoint": _record(EndpointAgreement, data.get("endpoint")),
            "decoder": _record(DecoderFidelity, data.get("decoder")), "task": TaskAccuracy.from_dict(data.get("task")),
            "speed": _record(ProbeFailed if speed and "error" in speed else Speed, speed),
        })


@dataclass(frozen=True)
class ReferenceRun:
    path: str  # the checkpoint
    file: str | None = None  # the reference file used (absent before reference files)
    reused: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)  # what made the file: dtype, device, passes, seconds…

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "file": self.file, "reused": self.reused, **self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceRun:
        rest = {key: value for key, value in data.items() if key not in ("path", "file", "reused")}
        return cls(data["path"], data.get("file"), data.get("reused"), rest)


@dataclass(frozen=True)
class Mode:
    """One mode for the reference and every candidate, prompts and answers alike."""

    thinking: bool
    answer_tokens: int
    image_max_tokens: int | None = None  # the page budget every page was fitted to (None: the checkpoint's own)

    @property
    def scored(self) -> str:
        return "text after </think>" if self.thinking else "the whole reply"


@dataclass(frozen=True)
class EvalSet:
    path: str
    sha256: str
    documents: int
    questions: int


@dataclass(frozen=True)
class ReferenceTask:
    """The reference's own document-QA accuracy (transformers)."""

    anls: float
    exact_match: float


@dataclass(frozen=True)
class ValidationReport:
    toolkit_version: str
    created_at: str
    machine: dict[str, Any]  # exaone_edge.machine.describe_machine(), as bench reports it too
    reference: ReferenceRun
    mode: Mode | None  # None: a report from before the mode was recorded
    eval_set: EvalSet
    reference_task: ReferenceTask
    artifacts: tuple[ArtifactResult, ...]
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        mode = {**asdict(self.mode), "scored": self.mode.scored} if self.mode else None
        return json.loads(json.dumps({  # tuples become lists, as JSON has them
            "schema": self.schema, "toolkit_version": self.toolkit_version, "created_at": self.created_at,
            "machine": self.machine, "reference": self.reference.to_dict(), "mode": mode,
            "eval_set": asdict(self.eval_set), "reference_task": asdict(self.reference_task),
            "artifacts": [asdict(artifact) for artifact in self.artifacts],
        }))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            toolkit_version=data["toolkit_version"], created_at=data["created_at"], machine=data["machine"],
            reference=ReferenceRun.from_dict(data["reference"]), mode=_record(Mode, data.get("mode")),
            eval_set=_record(EvalSet, data["eval_set"]), reference_task=_record(ReferenceTask, data["reference_task"]),
            artifacts=tuple(ArtifactResult.from_dict(a) for a in data["artifacts"]), schema=data["schema"],
        )
