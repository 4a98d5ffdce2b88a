"""`kill -9` at random moments of `quantize` and `export` on the tiny model: nothing at the output path looks
complete unless it is, and the rerun succeeds and leaves nothing behind (benchmarks/kill_runs.py runs more tries)."""

from __future__ import annotations

import random
import sys
from dataclasses import asdict
from pathlib import Path

from exaone_edge.benchmarks.kill_runs import COMMANDS, kill_until_killed
from exaone_edge.manifest import Manifest, write_manifest

# The export's checklist on one small page instead of six: the same writer, a third of the time.
EXPORT_ONE_PAGE = """
import sys
from exaone_edge.vision.contract import VALIDATION_PAGES as PAGES
from exaone_edge.export.vision import export_vision
export_vision(sys.argv[1], sys.argv[2], overwrite=True, pages=tuple(p for p in PAGES if p[0] == "tiny"))
"""


def _export_one_page(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", EXPORT_ONE_PAGE, str(model), str(out)]


def _old_export(path: Path) -> Path:
    """An earlier output of the same kind for the run to replace (the swap path, not only a fresh write)."""
    path.mkdir(parents=True)
    (path / "vision.onnx").write_bytes(b"an earlier export")
    write_manifest(path, Manifest(kind="vision-onnx"))
    return path


def test_kill_9_at_random_moments_never_leaves_a_complete_looking_output(tiny_model_dir, tmp_path):
    rng = random.Random(1717)
    records = [
        *kill_until_killed(0, "quantize", COMMANDS["quantize"], tiny_model_dir, tmp_path, rng.uniform(3.0, 12.0),
                           previous=None, rng=rng),
        *kill_until_killed(10, "export", _export_one_page, tiny_model_dir, tmp_path, rng.uniform(3.0, 12.0),
                           previous=_old_export(tmp_path / "old-export"), rng=rng),
    ]
    for record in records:
        assert record.ok, asdict(record)
        assert record.after_kill in ("absent", "old", "new")
    # A faster machine may finish before a kill; each command is retried until one run of it was killed.
    assert {r.command for r in records if r.killed} == {"quantize", "export"}, [asdict(r) for r in records]
