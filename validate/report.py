"""Write a validation report directory and apply the regression gate.

The folder is an exaone-edge output like any other: written under a temporary name, with a manifest
(kind "report"), and it replaces only an earlier report, and only with `overwrite`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exaone_edge.errors import InputError
from exaone_edge.files import atomic_dir, check_output_dir, write_json, write_text
from exaone_edge.validate.gate import Regression, compare
from exaone_edge.validate.render import render_html, render_markdown
from exaone_edge.validate.schema import ArtifactResult, ValidationReport


@dataclass(frozen=True)
class ReportResult:
    directory: Path
    report: ValidationReport
    regressions: list[Regression] | None  # None: no baseline given
    baseline: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json: the report, and the gate's verdict when there was a baseline."""
        data = self.report.to_dict()
        if self.regressions is not None:
            data["gate"] = {"baseline": str(self.baseline), "regressions": [asdict(r) for r in self.regressions]}
        return data

    def summary(self) -> str:
        lines = [f"{a.name}: KL {a.decoder.kl_mean if a.decoder else None}, ANLS {a.task.anls if a.task else None}"
                 for a in self.report.artifacts]
        lines.append(f"report: {self.directory / 'report.html'}")
        lines += [f"REGRESSION {r}" for r in self.regressions or ()]
        return "\n".join(lines)


def load_baseline(path: Path) -> list[ArtifactResult]:
    """What the gate compares from an earlier report.json (any report of this schema, old fields or new)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("baseline report not found", path=path, fix="Pass the report.json of an earlier run.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"baseline is not valid JSON ({exc})", path=path) from None
    try:
        return [ArtifactResult.from_dict(artifact) for artifact in data["artifacts"]]
    except (TypeError, KeyError, AttributeError):
        raise InputError("baseline is not an exaone-edge report.json", path=path) from None


KIND = "report"


def check_report_dir(out: Path, overwrite: bool = False) -> None:
    """Before the (long) run: `out` must be new, empty, or (with `overwrite`) an earlier report."""
    check_output_dir(out, overwrite=overwrite, kind=KIND)


def write_report(out: Path, report: ValidationReport, baseline: Path | None = None,
                 overrides: dict[str, float] | None = None, overwrite: bool = False) -> ReportResult:
    """report.json, report.md and report.html in `out`."""
    from exaone_edge.manifest import Manifest, write_manifest

    regressions = compare(report.artifacts, load_baseline(baseline), overrides) if baseline else None
    result = ReportResult(Path(out), report, regressions, baseline)
    lines = [str(r) for r in regressions] if regressions is not None else None
    with atomic_dir(out, overwrite=overwrite, kind=KIND) as tmp:
        write_json(tmp / "report.json", result.to_dict())
        write_text(tmp / "report.md", render_markdown(report, lines))
        write_text(tmp / "report.html", render_html(report, lines))
        write_manifest(tmp, Manifest(kind=KIND, details={"artifacts": [a.name for a in report.artifacts]}))
    return result
