"""Read back a set written by `exaone-edge docs make`: manifest verified, pages from its PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from exaone_edge.documents.model import QA, Document, DocumentSet, files_hash
from exaone_edge.errors import ArtifactError
from exaone_edge.images import open_image
from exaone_edge.manifest import read_manifest

SET_KIND = "document-set"


def load_written_set(root: Path, verify: bool = True) -> DocumentSet:
    manifest = read_manifest(root, kind=SET_KIND, verify=verify)
    digest = files_hash((name, entry["sha256"]) for name, entry in manifest.files.items())
    if digest != manifest.details.get("content_hash"):
        raise ArtifactError("the content hash in manifest.json does not match its file list", path=root,
                            fix="Re-create the set with `exaone-edge docs make`.")
    try:
        records = [json.loads(line) for line in (root / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
        questions = [json.loads(line) for line in (root / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"documents.jsonl or qa.jsonl is unreadable ({exc})", path=root) from None
    try:
        return DocumentSet(_documents(root, records, questions), str(root), _hash=digest)
    except (KeyError, TypeError, ValueError) as exc:  # a manifest re-made around hand-edited files
        raise ArtifactError(f"documents.jsonl or qa.jsonl does not match the set's pages ({exc!r})", path=root,
                            fix="Re-create the set with `exaone-edge docs make`.") from None


def _documents(root: Path, records: list[dict], questions: list[dict]) -> list[Document]:
    documents: list[Document] = []
    by_id: dict[str, Document] = {}
    for record in records:
        pages = [root / name for name in record["pages"]]

        def render(index: int, pages: list[Path] = pages) -> Image.Image:
            return open_image(pages[index], formats=("PNG",))

        document = Document(record["id"], record["kind"], record.get("lang"), len(pages), record.get("text"), [],
                            str(root), render)
        documents.append(document)
        by_id[document.id] = document
    for row in questions:
        document = by_id.get(row["doc"])
        if document is None:
            raise ArtifactError(f"qa.jsonl names document '{row['doc']}', which the set does not have", path=root)
        pages = [f"pages/{document.id}-p{i + 1}.png" for i in range(document.page_count)]
        document.qa.append(QA(row["question"], list(row["answers"]), pages.index(row["image"])))
    return documents
