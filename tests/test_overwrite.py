"""`--overwrite` of every command replaces only what the earlier output lists (its manifest.json, or the marker of
an output without one): a file the user put into the folder makes the command refuse before any work starts,
naming it, and nothing in the folder changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge import files
from exaone_edge.errors import InputError
from exaone_edge.manifest import Manifest, write_manifest

# command → (its argv with -o OUT and --overwrite, the kind of output it writes)
COMMANDS = {
    "tiny-model": (lambda model, out: ["tiny-model", str(out)], "tiny-model"),
    "docs make": (lambda model, out: ["docs", "make", str(out), "--n", "1"], "document-set"),
    "export": (lambda model, out: ["export", str(model), "-o", str(out)], "vision-onnx"),
    "quantize": (lambda model, out: ["quantize", str(model), "--bits", "8", "-o", str(out)], "bundle"),
    "quantize --format gptq": (lambda model, out: ["quantize", str(model), "--format", "gptq", "-o", str(out)], "gptq"),
    "validate": (lambda model, out: ["validate", str(out.parent / "no-bundle"), "--reference", str(model), "-o",
                                     str(out)], "report"),
}


def _earlier_output(out: Path, kind: str) -> None:
    """What an earlier run of the command left: its files, listed by its manifest (tiny-model: by its marker)."""
    with files.atomic_dir(out, kind=kind) as tmp:
        (tmp / "weights").mkdir()
        (tmp / "weights" / "part-1.bin").write_bytes(b"an earlier output")
        (tmp / "config.json").write_text("{}")
        if kind != "tiny-model":
            write_manifest(tmp, Manifest(kind=kind))


def _theirs(out: Path) -> None:
    (out / "weights" / "my-fine-tune.bin").write_bytes(b"the user's")
    (out / "notes").mkdir()
    (out / "notes" / "thesis.txt").write_text("six months of work")


def _snapshot(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_overwrite_refuses_a_folder_holding_files_the_earlier_output_does_not_list(command, tiny_model_dir, tmp_path):
    argv, kind = COMMANDS[command]
    out = tmp_path / "out"
    _earlier_output(out, kind)
    _theirs(out)
    before = _snapshot(out)
    result = run_cli(*argv(tiny_model_dir, out), "--overwrite")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: output folder holds an earlier exaone-edge '{kind}' "
                                                   "and 3 item(s)"), result.stderr
    for name in ("notes", "notes/thesis.txt", "weights/my-fine-tune.bin", "nothing was changed", "Move those items"):
        assert name in lines[0], result.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial, no work folder


def test_overwrite_replaces_every_file_the_earlier_output_lists_and_nothing_else(tmp_path):
    """The real command end to end: its own output is replaced (every file listed, so nothing is refused), a user's
    file stops it, and once the file is moved out the overwrite goes through."""
    out = tmp_path / "docs"
    for extra in ([], ["--overwrite"]):
        assert run_cli("docs", "make", str(out), "--n", "1", *extra).returncode == 0
    assert files.foreign_entries(out) == []
    (out / "pages" / "my-scan.png").write_bytes(b"the user's")
    before = _snapshot(out)
    result = run_cli("docs", "make", str(out), "--n", "2", "--overwrite")
    assert result.returncode == 2 and "(pages/my-scan.png)" in result.stderr and _snapshot(out) == before
    (out / "pages" / "my-scan.png").unlink()
    assert run_cli("docs", "make", str(out), "--n", "2", "--overwrite").returncode == 0
    assert json.loads((out / "manifest.json").read_text())["details"]["documents"] == 2


def test_a_marker_without_a_file_list_owns_only_itself(tmp_path):
    """An output marked by an older exaone-edge, which did not list its files: nothing in it is replaced."""
    out = tmp_path / "model"
    out.mkdir()
    (out / files.OUTPUT_MARKER).write_text(json.dumps({"tool": files.TOOL, "kind": "tiny-model"}))
    (out / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"1 item\(s\) its .exaone-edge-output.json does not list \(config.json\)"):
        with files.atomic_dir(out, overwrite=True, kind="tiny-model"):
            pytest.fail("the body must not run")
    assert (out / "config.json").read_text() == "{}"


def test_a_new_output_must_list_everything_it_holds(tmp_path):
    """A writer that leaves a file out of its manifest fails before the swap: a later --overwrite would refuse it."""
    with pytest.raises(RuntimeError, match="does not list"):
        with files.atomic_dir(tmp_path / "out", kind="thing") as tmp:
            write_manifest(tmp, Manifest(kind="thing"))
            (tmp / "late.bin").write_bytes(b"written after the manifest")
    assert list(tmp_path.iterdir()) == []
