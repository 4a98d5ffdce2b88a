"""Write a validation report directory and apply the regression gate.

The folder is an exaone-edge output like any other: written under a temporary name, with a manifest
(kind "report"), and it replaces only an earlier report, and only with `overwrite`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.errors import InputError
from exaone_edge.files import atomic_dir, check_output_dir, write_json, write_text
from exaone_edge.validate.gate import Regression, compare
from exaone_edge.validate.render import render_html, render_markdown


@dataclass(frozen=True)
class ReportResult:
    directory: Path
    report: dict[str, Any]
    regressions: list[Regression] | None  # None: no baseline given


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("baseline report not found", path=path, fix="Pass the report.json of an earlier run.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"baseline is not valid JSON ({exc})", path=path) from None
    if not isinstance(data, dict) or "artifacts" not in data:
        raise InputError("baseline is not an exaone-edge report.json", path=path)
    return data


KIND = "report"


def check_report_dir(out: Path, overwrite: bool = False) -> None:
    """Before the (long) run: `out` must be new, empty, or (with `overwrite`) an earlier report."""
    check_output_dir(out, overwrite=overwrite, kind=KIND)


def write_report(out: Path, report: dict[str, Any], baseline: Path | None = None,
                 overrides: dict[str, float] | None = None, overwrite: bool = False) -> ReportResult:
    from exaone_edge.manifest import Manifest, write_manifest

    regressions = compare(report, load_baseline(baseline), overrides) if baseline else None
    lines = [str(r) for r in regressions] if regressions is not None else None
    if regressions is not None:
        report = {**report, "gate": {"baseline": str(baseline), "regressions": [r.__dict__ for r in regressions]}}
    with atomic_dir(out, overwrite=overwrite, kind=KIND) as tmp:
        write_json(tmp / "report.json", report)
        write_text(tmp / "report.md", render_markdown(report, lines))
        write_text(tmp / "report.html", render_html(report, lines))
        write_manifest(tmp, Manifest(kind=KIND, details={"artifacts": [a.get("name") for a in report["artifacts"]]}))
    return ReportResult(Path(out), report, regressions)
