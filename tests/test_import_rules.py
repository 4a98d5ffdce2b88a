"""Import rules, read from the source (every import, top-level or inside a function, absolute or relative).

Layers, lowest first:
- the core (exaone_edge/): shared vocabulary only; imports no library and no stage (the CLI, which dispatches, aside);
- libraries below the stages: reference/ (the transformers reference), documents/ (document sets), fixtures/ (tiny
  checkpoints); each imports only the core;
- stages: plan/, export/, quantize/, runtime/, validate/; none imports another, except validate → runtime
  (it measures the deployed runtime); the runtime imports no library and no training stack;
- benchmarks/: the measuring harness, free to import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"exaone_edge": "exaone_edge", "plan": "exaone_edge.plan", "export": "exaone_edge.export",
           "quantize": "exaone_edge.quantize", "runtime": "exaone_edge.runtime", "validate": "exaone_edge.validate",
           "reference": "exaone_edge.reference", "documents": "exaone_edge.documents",
           "fixtures": "exaone_edge.fixtures", "benchmarks": "exaone_edge.benchmarks"}
LIBRARIES = ("reference", "documents", "fixtures")
STAGES = ("plan", "export", "quantize", "runtime", "validate")
TRAINING_STACK = ("torch", "transformers", "gptqmodel", "optimum", "onnx", "onnxscript")


def _package(path: Path, root: Path) -> str:
    """The dotted package a source file belongs to, as installed (runtime/server/app.py → exaone_edge.runtime.server)."""
    parts = path.relative_to(root).parts
    return ".".join([FOLDERS[parts[0]], *parts[1:-1]])


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from ..x import y`: resolved against the file's own package
                base = _package(path, root).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def violations(folder: str, forbidden: tuple[str, ...], *, skip: tuple[str, ...] = (), root: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        if path.name in skip:
            continue
        for module in sorted(imported_modules(path, root)):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                bad.append(f"{path.relative_to(root)} imports {module}")
    return bad


def _others(*allowed: str) -> tuple[str, ...]:
    return tuple(FOLDERS[f] for f in (*LIBRARIES, *STAGES, "benchmarks") if f not in allowed)


def test_the_core_imports_no_library_and_no_stage():
    assert violations("exaone_edge", _others(), skip=("cli.py",)) == []


def test_libraries_import_only_the_core():
    for library in LIBRARIES:
        assert violations(library, _others(library)) == []


def test_no_stage_imports_another_but_validate_the_runtime():
    allowed = {"plan": (), "export": LIBRARIES, "quantize": LIBRARIES, "runtime": (),
               "validate": (*LIBRARIES, "runtime")}
    for stage, may in allowed.items():
        assert violations(stage, _others(stage, *may)) == [], stage


def test_quantize_does_not_import_validate():
    assert violations("quantize", (FOLDERS["validate"],)) == []


def test_the_runtime_never_imports_the_training_stack():
    assert violations("runtime", TRAINING_STACK) == []


def test_the_rule_catches_a_planted_violation_absolute_and_relative(tmp_path):
    planted = tmp_path / "quantize"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "fine.py").write_text("from exaone_edge.errors import InputError\nfrom .recipes import LEVEL\n")
    (planted / "absolute.py").write_text("def f():\n    from exaone_edge.validate.collect import validate\n")
    (planted / "relative.py").write_text("from ..validate import schema\n")
    found = violations("quantize", (FOLDERS["validate"],), root=tmp_path)
    assert found == ["quantize/absolute.py imports exaone_edge.validate.collect",
                     "quantize/absolute.py imports exaone_edge.validate.collect.validate",
                     "quantize/relative.py imports exaone_edge.validate",
                     "quantize/relative.py imports exaone_edge.validate.schema"]
