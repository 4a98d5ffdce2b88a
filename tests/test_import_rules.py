"""Import rules, read from the source (every import, top-level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"export": "exaone_edge.export", "quantize": "exaone_edge.quantize", "runtime": "exaone_edge.runtime",
          "validate": "exaone_edge.validate", "benchmarks": "exaone_edge.benchmarks"}
TRAINING_STACK = ("torch", "transformers", "gptqmodel", "optimum", "onnx", "onnxscript")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(folder: str, forbidden: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if path.name in skip:
            continue
        for module in sorted(imported_modules(path)):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                bad.append(f"{path.relative_to(REPO)} imports {module}")
    return bad


def test_runtime_imports_no_other_stage_and_no_training_stack():
    forbidden = (STAGES["export"], STAGES["quantize"], STAGES["validate"], STAGES["benchmarks"], *TRAINING_STACK)
    assert violations("runtime", forbidden) == []


def test_validate_imports_neither_export_nor_quantize():
    assert violations("validate", (STAGES["export"], STAGES["quantize"])) == []


def test_core_imports_no_stage():
    """The core (formats, llama.cpp binding, images, specs) serves the stages; only the CLI dispatches to them."""
    assert violations("exaone_edge", tuple(STAGES.values()), skip=("cli.py",)) == []


def test_build_stages_do_not_import_each_other_or_the_runtime():
    """quantize may use validate (the GPTQ fidelity check reads validate's reference file); nothing else."""
    assert violations("export", (STAGES["quantize"], STAGES["runtime"], STAGES["validate"], STAGES["benchmarks"])) == []
    assert violations("quantize", (STAGES["export"], STAGES["runtime"], STAGES["benchmarks"])) == []


def test_the_rule_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from exaone_edge.quantize.gptq import x\n    import torch.nn\n")
    assert {"exaone_edge.quantize.gptq", "torch.nn"} <= imported_modules(probe)
