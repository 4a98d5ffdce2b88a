"""The deployment side must not drag in torch or transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

DEPLOYMENT_MODULES = ["exaone_edge.runtime", "exaone_edge.cli", "exaone_edge.checkpoint", "exaone_edge.manifest"]


@pytest.mark.parametrize("module", DEPLOYMENT_MODULES)
def test_runtime_imports_without_torch(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"{module} imported {result.stdout.strip()}: {result.stderr[-500:]}"
