"""The reference file: what the transformers reference said, kept so no later run needs the checkpoint.

One `.npz` per (checkpoint, eval set, question set, options), named by the hash of all four. Per
sequence it keeps, at every scored position, the most likely tokens' logits with their ids and the
log-sum-exp over the whole vocabulary, the log-probability of the target token there, the answer
token ids, the greedy answer and the page's vision rows. A checksum over every array sits in the
file's metadata and is checked on load; files are written by exaone_edge.files (a new temporary file, renamed).

How many tokens: at least MIN_K (64), then as many as it takes for the kept ones to hold COVERAGE
of the reference's probability, at most MAX_K. llama.cpp's `--kl-divergence-base` file keeps every
vocabulary entry as a 16-bit log-probability instead (307 KB a position at 153,600 tokens); a
trained model needs far fewer than MAX_K tokens for 0.9999 of its mass, and a flat distribution
(the random tiny model's) keeps its whole vocabulary, so its KL is exact.

KL from the kept tokens: with p the reference and q the candidate, the kept tokens stay apart and the
rest of the vocabulary is lumped into one outcome on both sides,
KL ≈ Σ_kept p_i log(p_i/q_i) + p_rest log(p_rest/q_rest). Lumping never raises a KL (log-sum
inequality), so this is a lower bound, short by at most the KL hidden inside the ≤ 1 − COVERAGE of
mass left out (tests/test_streamed_reference.py measures the gap at lower coverages).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge.checkpoint import safetensors_header_bytes
from exaone_edge.files import inputs_digest, write_bytes
from exaone_edge.metrics import LogitFidelity, log_softmax
from exaone_edge.progress import log

FORMAT_VERSION = 1
MIN_K = 64
MAX_K = 4096
COVERAGE = 0.9999  # keep tokens until they hold this much of the reference's probability
# Files the reference's behaviour depends on besides the weights (the shards are fingerprinted by header and size).
_CHECKPOINT_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja", "preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class TopK:
    """Ragged: position j keeps ids[offsets[j]:offsets[j + 1]], most likely first."""

    ids: np.ndarray  # [kept] int32
    logits: np.ndarray  # [kept] float32
    offsets: np.ndarray  # [positions + 1] int64
    logsumexp: np.ndarray  # [positions] float32, over the whole vocabulary
    rest_logsumexp: np.ndarray  # [positions] float32, over the tokens left out (-inf: none)

    def __len__(self) -> int:
        return len(self.logsumexp)

    @property
    def top1(self) -> np.ndarray:
        return self.ids[self.offsets[:-1]]

    def rest_mass(self) -> np.ndarray:
        """Reference probability outside the kept tokens, per position."""
        return np.exp(self.rest_logsumexp.astype(np.float64) - self.logsumexp)


@dataclass(frozen=True)
class ReferenceEntry:
    topk: TopK
    target_logprob: np.ndarray | None = None  # [positions]: log p(target) where the targets are known
    answer_ids: tuple[int, ...] = ()
    answer: str | None = None
    vision_rows: np.ndarray | None = None


@dataclass(frozen=True)
class ReferenceFile:
    key: str
    details: dict[str, Any]  # what made it: checkpoint path, dtype, device, passes, seconds
    entries: list[ReferenceEntry]


def default_cache_dir() -> Path:
    root = os.environ.get("EXAONE_EDGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "exaone-edge"
    return Path(root) / "references"


def checkpoint_fingerprint(model_dir: Path) -> str:
    """Configs, tokenizer, template and every shard's header and size: cheap (no weight bytes read)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for name in _CHECKPOINT_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    for shard in sorted(model_dir.glob("*.safetensors")):
        digest.update(shard.name.encode() + b"\0" + safetensors_header_bytes(shard))
        digest.update(str(shard.stat().st_size).encode())
    return digest.hexdigest()


def reference_key(checkpoint: str, parts: dict[str, Any]) -> str:
    """The hash naming a reference file: checkpoint fingerprint + eval set, questions and options (JSON)."""
    return inputs_digest({"format": FORMAT_VERSION, "kept": [MIN_K, MAX_K, COVERAGE], "checkpoint": checkpoint, **parts})


def image_digest(image: Any) -> str:
    """A page's pixels (not its encoding), for keys."""
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def topk_torch(logits: Any, coverage: float = COVERAGE, min_k: int = MIN_K, max_k: int = MAX_K) -> TopK:
    """Float32 logits [n, vocab] (torch) → the kept tokens per row (numpy). Also a reducer for the streamed
    reference. The left-out mass is kept as its own log-sum-exp: 1 − Σ kept would be float32 rounding."""
    import torch

    values, ids = logits.float().sort(dim=-1, descending=True)
    lse = logits.float().logsumexp(-1)
    cap = min(max_k, logits.shape[-1])
    cumulative = (values[:, :cap].double() - lse[:, None].double()).exp().cumsum(-1)
    keep = ((cumulative < coverage).sum(-1) + 1).clamp(min(min_k, cap), cap)
    kept = torch.arange(values.shape[-1], device=values.device)[None, :] < keep[:, None]
    rest = values.masked_fill(kept, float("-inf")).logsumexp(-1)
    mask = kept[:, :cap].cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(keep.cpu().numpy())]).astype(np.int64)
    return TopK(ids[:, :cap].cpu().numpy()[mask].astype(np.int32), values[:, :cap].cpu().numpy()[mask], offsets,
                lse.cpu().numpy(), rest.cpu().numpy())


def topk_numpy(logits: np.ndarray, coverage: float = COVERAGE, min_k: int = MIN_K, max_k: int = MAX_K) -> TopK:
    import torch

    return topk_torch(torch.from_numpy(np.asarray(logits, dtype=np.float32)), coverage, min_k, max_k)


def concat_topk(parts: Sequence[TopK]) -> TopK:
    starts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
    offsets = np.concatenate([[0]] + [p.offsets[1:] + start for p, start in zip(parts, starts)])
    return TopK(np.concatenate([p.ids for p in parts]), np.concatenate([p.logits for p in parts]),
                offsets.astype(np.int64), np.concatenate([p.logsumexp for p in parts]),
                np.concatenate([p.rest_logsumexp for p in parts]))


def kl_from_topk(reference: TopK, candidate_logits: np.ndarray, rows_per_chunk: int = 256) -> np.ndarray:
    """KL(reference ‖ candidate) per position with the tokens the reference left out lumped (a lower bound)."""
    return np.concatenate([_kl_rows(reference, candidate_logits, start, min(start + rows_per_chunk, len(reference)))
                           for start in range(0, len(reference), rows_per_chunk)])


def _kl_rows(reference: TopK, candidate_logits: np.ndarray, first: int, last: int) -> np.ndarray:
    cand_logp = log_softmax(candidate_logits[first:last])  # float64, a chunk at a time
    lo, hi = reference.offsets[first], reference.offsets[last]
    counts = np.diff(reference.offsets[first:last + 1])
    rows = np.repeat(np.arange(last - first), counts)
    ids = reference.ids[lo:hi].astype(np.int64)
    ref_logp = reference.logits[lo:hi].astype(np.float64) - np.repeat(reference.logsumexp[first:last], counts)
    q_logp = cand_logp[rows, ids]
    starts = reference.offsets[first:last] - lo
    kl = np.add.reduceat(np.exp(ref_logp) * (ref_logp - q_logp), starts)
    p_rest = np.exp(reference.rest_logsumexp[first:last].astype(np.float64) - reference.logsumexp[first:last])
    cand_logp[rows, ids] = -np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        q_rest_log = np.log(np.exp(cand_logp).sum(-1))
        rest = np.where(p_rest > 0, p_rest * (np.log(np.where(p_rest > 0, p_rest, 1.0)) - q_rest_log), 0.0)
    return np.maximum(kl + rest, 0.0)


def topk_fidelity(reference: Sequence[ReferenceEntry], candidate_logits: Sequence[np.ndarray]) -> LogitFidelity:
    """logit_fidelity's numbers from the stored top-k: KL (lumped), top-1 agreement, perplexity ratio."""
    kls, agree, ref_lp, cand_lp = [], [], [], []
    for entry, logits in zip(reference, candidate_logits, strict=True):
        logits = np.asarray(logits)
        if logits.shape[0] != len(entry.topk):
            raise ValueError(f"candidate gave {logits.shape[0]} positions, the reference file has {len(entry.topk)}")
        kls.append(kl_from_topk(entry.topk, logits))
        agree.append(entry.topk.top1 == logits.argmax(-1))
        if entry.target_logprob is not None and entry.answer_ids:
            cand_logp = log_softmax(logits)
            ref_lp.append(entry.target_logprob)
            cand_lp.append(cand_logp[np.arange(len(logits)), np.asarray(entry.answer_ids)])
    return LogitFidelity.from_rows(np.concatenate(kls), np.concatenate(agree),
                                   np.concatenate(ref_lp) if ref_lp else None,
                                   np.concatenate(cand_lp) if cand_lp else None)


def target_logprobs(reference: TopK, logits_targets: np.ndarray) -> np.ndarray:
    """log p(target) given the target logits and the stored log-sum-exp."""
    return (np.asarray(logits_targets, np.float64) - reference.logsumexp).astype(np.float32)


# ---- the file ------------------------------------------------------------------------------------------
def _arrays(reference: ReferenceFile) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    arrays: dict[str, np.ndarray] = {}
    pages: dict[str, str] = {}  # questions on one page share its vision rows
    entries = []
    for i, entry in enumerate(reference.entries):
        arrays[f"{i}.ids"] = entry.topk.ids.astype(np.int32)
        arrays[f"{i}.logits"] = entry.topk.logits.astype(np.float32)
        arrays[f"{i}.lse"] = entry.topk.logsumexp.astype(np.float32)
        arrays[f"{i}.offsets"] = entry.topk.offsets.astype(np.int64)
        arrays[f"{i}.rest_lse"] = entry.topk.rest_logsumexp.astype(np.float32)
        if entry.target_logprob is not None:
            arrays[f"{i}.target_logprob"] = entry.target_logprob.astype(np.float32)
        page = None
        if entry.vision_rows is not None:
            rows = np.ascontiguousarray(entry.vision_rows, dtype=np.float32)
            digest = hashlib.sha256(rows.tobytes()).hexdigest()
            page = pages.setdefault(digest, f"page{len(pages)}.vision_rows")
            arrays[page] = rows
        entries.append({"answer_ids": list(entry.answer_ids), "answer": entry.answer, "vision_rows": page,
                        "target_logprob": entry.target_logprob is not None})
    return arrays, entries


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()


def write_reference(path: Path, reference: ReferenceFile) -> Path:
    arrays, entries = _arrays(reference)
    meta = {"format": FORMAT_VERSION, "key": reference.key, "details": reference.details,
            "entries": entries, "sha256": _checksum(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8), **arrays)
    write_bytes(Path(path), buffer.getbuffer())
    return Path(path)


def read_reference(path: Path, key: str) -> ReferenceFile | None:
    """The stored reference, or None (with the reason logged) when it is absent, stale or damaged."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # ValueError covers bad JSON
        log(f"reference file {path} is unreadable ({exc}); computing the reference again")
        return None
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
        log(f"reference file {path} was made for other inputs; computing the reference again")
        return None
    if _checksum(arrays) != meta.get("sha256"):
        log(f"reference file {path} fails its checksum; computing the reference again")
        return None
    entries = []
    for i, entry in enumerate(meta["entries"]):
        topk = TopK(arrays[f"{i}.ids"], arrays[f"{i}.logits"], arrays[f"{i}.offsets"], arrays[f"{i}.lse"],
                    arrays[f"{i}.rest_lse"])
        entries.append(ReferenceEntry(
            topk=topk, target_logprob=arrays.get(f"{i}.target_logprob") if entry["target_logprob"] else None,
            answer_ids=tuple(entry["answer_ids"]), answer=entry["answer"],
            vision_rows=arrays[entry["vision_rows"]] if entry["vision_rows"] else None,
        ))
    return ReferenceFile(meta["key"], meta["details"], entries)
