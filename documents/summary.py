"""A document set's summary: what `docs show` prints and `docs make` reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SetSummary:
    data: dict[str, Any]  # source, content_hash, documents, pages, questions, with_text, kinds, langs, skipped
    written_to: str | None = None  # `docs make`: the folder written

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, **({"path": self.written_to} if self.written_to else {})}

    def summary(self) -> str:
        d = self.data
        if self.written_to:
            return (f"wrote {self.written_to}: {d['documents']} documents, {d['pages']} pages, {d['questions']} questions "
                    f"(content hash {d['content_hash'][:16]})")
        lines = [
            f"set:          {d['source']}",
            f"content hash: {d['content_hash']}",
            f"documents:    {d['documents']} ({d['pages']} pages, {d['with_text']} with text)",
            f"questions:    {d['questions']}",
            "kinds:        " + ", ".join(f"{k} {v}" for k, v in d["kinds"].items()),
            "languages:    " + ", ".join(f"{k} {v}" for k, v in d["langs"].items()),
        ]
        skipped = d["skipped"]
        if skipped:
            lines.append(f"skipped:      {len(skipped)}")
            lines += [f"  {item['path']}: {item['reason']}" for item in skipped]
        return "\n".join(lines)
