"""Documents, their questions, and sets of them: the one shape every stage reads pages through."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from exaone_edge.errors import InputError

if TYPE_CHECKING:
    from exaone_edge.documents.summary import SetSummary


@dataclass(frozen=True)
class QA:
    question: str
    answers: list[str]
    page: int  # 0-based page of the document the answer is on


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Document:
    id: str
    kind: str  # "invoice", "bar_chart", … for generated pages; "pdf" or "image" for user files
    lang: str | None
    page_count: int
    text: str | None
    qa: list[QA]
    source: str  # where the pages come from (file, or "synthetic seed N")
    render: Callable[[int], Image.Image] = field(repr=False, compare=False)

    def page_image(self, index: int) -> Image.Image:
        """Page `index` (0-based) as an RGB image."""
        if not 0 <= index < self.page_count:
            raise InputError(f"document {self.id} has {self.page_count} page(s); page index {index} does not exist")
        image = self.render(index)
        return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class DocumentSet:
    documents: list[Document]
    source: str
    skipped: list[Skipped] = field(default_factory=list)
    hasher: Callable[[], str] | None = field(default=None, repr=False)  # computes the hash on first use
    _hash: str | None = field(default=None, repr=False)  # a hash already known (from a manifest or a folder scan)

    @property
    def content_hash(self) -> str:
        """sha256 of the set's content; for a generated set, the hash its written copy would have."""
        if self._hash is None:
            if self.hasher is None:
                raise InputError("this document set has no content hash")
            self._hash = self.hasher()
        return self._hash

    def split(self, eval_fraction: float = 0.5, seed: int = 0) -> tuple[DocumentSet, DocumentSet]:
        """(calibration, evaluation): disjoint by document, stable for a seed, both non-empty when possible."""
        if not 0.0 <= eval_fraction <= 1.0:
            raise InputError(f"eval_fraction must be within [0, 1], got {eval_fraction}")
        # Ranking by a per-document hash keeps a document on the same side when others are added.
        ranked = sorted(self.documents, key=lambda d: hashlib.sha256(f"{seed}\0{d.id}".encode()).hexdigest())
        count = len(ranked)
        n_eval = round(count * eval_fraction)
        if count >= 2 and 0.0 < eval_fraction < 1.0:
            n_eval = min(max(n_eval, 1), count - 1)
        eval_ids = {d.id for d in ranked[:n_eval]}
        calib = [d for d in self.documents if d.id not in eval_ids]
        evals = [d for d in self.documents if d.id in eval_ids]
        return self._subset(calib, f"calibration split (seed {seed})"), self._subset(evals, f"evaluation split (seed {seed})")

    def _subset(self, documents: list[Document], label: str) -> DocumentSet:
        parent = self

        def subset_hash() -> str:
            ids = "\n".join(d.id for d in documents)
            return hashlib.sha256(f"{parent.content_hash}\n{label}\n{ids}".encode()).hexdigest()

        return DocumentSet(documents, f"{self.source}, {label}", list(self.skipped), subset_hash)

    def summary(self) -> SetSummary:
        from exaone_edge.documents.summary import SetSummary

        return SetSummary({
            "source": self.source,
            "content_hash": self.content_hash,
            "documents": len(self.documents),
            "pages": sum(d.page_count for d in self.documents),
            "questions": sum(len(d.qa) for d in self.documents),
            "with_text": sum(1 for d in self.documents if d.text),
            "kinds": dict(sorted(Counter(d.kind for d in self.documents).items())),
            "langs": dict(sorted(Counter(d.lang or "unknown" for d in self.documents).items())),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        })


def files_hash(entries: Iterable[tuple[str, str]]) -> str:
    """Content hash of a set from (relative path, sha256 of the file) pairs, order-independent."""
    digest = hashlib.sha256()
    for name, sha in sorted(entries):
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()
