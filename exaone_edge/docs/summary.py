"""Human-readable summary of a document set for `exaone-edge docs show`."""

from __future__ import annotations

from typing import Any


def render_text(summary: dict[str, Any]) -> str:
    lines = [
        f"set:          {summary['source']}",
        f"content hash: {summary['content_hash']}",
        f"documents:    {summary['documents']} ({summary['pages']} pages, {summary['with_text']} with text)",
        f"questions:    {summary['questions']}",
        "kinds:        " + ", ".join(f"{k} {v}" for k, v in summary["kinds"].items()),
        "languages:    " + ", ".join(f"{k} {v}" for k, v in summary["langs"].items()),
    ]
    skipped = summary["skipped"]
    if skipped:
        lines.append(f"skipped:      {len(skipped)}")
        lines += [f"  {item['path']}: {item['reason']}" for item in skipped]
    return "\n".join(lines)
