"""One tiny random EXAONE 4.5 checkpoint per test session, shared by every stage's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0).path


@pytest.fixture(scope="session")
def tiny_vision_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's fp32 vision export (validated on the default pages), shared by bundle tests."""
    from exaone_edge.export.vision import export_vision

    return export_vision(tiny_model_dir, tmp_path_factory.mktemp("vision") / "export", precision="fp32").path


def run_cli(*args: str, check: bool = False, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `exaone-edge` as a user would, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "exaone_edge.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exaone-edge {' '.join(args)} failed:\n{result.stderr}")
    return result
