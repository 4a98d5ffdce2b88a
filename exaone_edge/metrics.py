"""Accuracy metrics shared by validation and benchmarks: logit fidelity and document-QA scores."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

ANLS_THRESHOLD = 0.5  # DocVQA's convention: similarities below it count as zero


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_row(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) ‖ softmax(candidate)) for each row of logits, float64."""
    return _kl(log_softmax(reference), log_softmax(candidate))


def _kl(ref_logp: np.ndarray, cand_logp: np.ndarray) -> np.ndarray:
    return np.maximum((np.exp(ref_logp) * (ref_logp - cand_logp)).sum(axis=-1), 0.0)  # rounding can give -1e-17


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (vision rows: the direction the decoder reads)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1)
    return (reference * candidate).sum(-1) / np.maximum(norms, 1e-30)


@dataclass(frozen=True)
class LogitFidelity:
    positions: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    ppl_reference: float | None
    ppl_candidate: float | None

    @property
    def ppl_ratio(self) -> float | None:
        if self.ppl_reference is None or self.ppl_candidate is None:
            return None
        return self.ppl_candidate / self.ppl_reference

    @classmethod
    def from_rows(cls, kl: np.ndarray, top1_same: np.ndarray, reference_target_logp: np.ndarray | None = None,
                  candidate_target_logp: np.ndarray | None = None) -> LogitFidelity:
        """Summary of per-position KL, argmax agreement and (optionally) the answer tokens' log-probabilities."""
        def ppl(logp: np.ndarray | None) -> float | None:
            return None if logp is None or not len(logp) else float(np.exp(-np.mean(logp)))

        return cls(positions=len(kl), kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                   kl_max=float(kl.max()), top1_agreement=float(np.mean(top1_same)),
                   ppl_reference=ppl(reference_target_logp), ppl_candidate=ppl(candidate_target_logp))


def logit_fidelity(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray | None = None) -> LogitFidelity:
    """KL(reference ‖ candidate) per position, top-1 agreement, and perplexity on `targets` if given."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logits must be [positions, vocab] of one shape, got {reference.shape} and {candidate.shape}")
    ref_logp, cand_logp = log_softmax(reference), log_softmax(candidate)
    same = reference.argmax(-1) == candidate.argmax(-1)
    if targets is None:
        return LogitFidelity.from_rows(_kl(ref_logp, cand_logp), same)
    rows = np.arange(len(targets))
    return LogitFidelity.from_rows(_kl(ref_logp, cand_logp), same, ref_logp[rows, targets], cand_logp[rows, targets])


def normalize_answer(text: str) -> str:
    """Case, width and whitespace folded; thousands separators and currency words kept as they are."""
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    return " ".join(text.split()).rstrip(".")


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: list[str], threshold: float = ANLS_THRESHOLD) -> float:
    """Average Normalized Levenshtein Similarity against the best-matching reference answer."""
    pred = normalize_answer(prediction)
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer)
        longest = max(len(pred), len(gold)) or 1
        similarity = 1.0 - levenshtein(pred, gold) / longest
        best = max(best, similarity if similarity >= threshold else 0.0)
    return best


def exact_match(prediction: str, answers: list[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(answer) for answer in answers)
