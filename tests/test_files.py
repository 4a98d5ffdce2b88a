"""Output and work folders: nothing a run did not make is deleted, an old output is replaced only once the new
one is complete, and what a killed run left is recognised as ours and removed by the next run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli
from exaone_edge import files
from exaone_edge.errors import InputError
from exaone_edge.manifest import Manifest, read_manifest, write_manifest
from exaone_edge.validate.schema import ValidationReport
from test_validate_report import _report

REPORT = ValidationReport.from_dict(_report())


def _user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("six months of work")
    (path / "photo.jpg").write_bytes(b"\xff\xd8 not really")
    return path


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _output(target: Path, text: str, *, overwrite: bool = False, kind: str = "thing") -> None:
    with files.atomic_dir(target, overwrite=overwrite, kind=kind) as tmp:
        (tmp / "data.txt").write_text(text)
        write_manifest(tmp, Manifest(kind=kind))


def _partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_validate_o_refuses_a_non_empty_folder_with_a_clear_message(tmp_path):
    folder = _user_folder(tmp_path / "results")
    before = _snapshot(folder)
    for extra in ([], ["--overwrite"]):
        result = run_cli("validate", str(tmp_path / "no-bundle"), "--reference", str(tmp_path / "no-model"),
                         "-o", str(folder), *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: output folder is not empty"), result.stderr
        assert "not written by exaone-edge" in lines[0] and "Choose a new or empty folder" in lines[0]
        assert ("--overwrite replaces only an earlier exaone-edge output" in lines[0]) == bool(extra)
    assert _snapshot(folder) == before and _partials(tmp_path) == []


def test_dot_and_home_are_never_emptied(tmp_path, monkeypatch):
    from exaone_edge.validate.report import write_report

    home = _user_folder(tmp_path / "home")
    before = _snapshot(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    for out in (Path("."), Path("~").expanduser()):
        for overwrite in (False, True):
            with pytest.raises(InputError, match="not written by exaone-edge"):
                write_report(out, REPORT, overwrite=overwrite)
    assert _snapshot(home) == before and _partials(tmp_path) == []


def test_an_earlier_report_is_replaced_only_with_overwrite(tmp_path):
    from exaone_edge.validate.report import write_report

    out = tmp_path / "report"
    write_report(out, REPORT)
    assert read_manifest(out, kind="report").files.keys() == {"report.json", "report.md", "report.html"}
    newer = replace(REPORT, artifacts=REPORT.artifacts[:1])
    with pytest.raises(InputError, match="not empty: it holds an earlier exaone-edge 'report'.*Pass --overwrite"):
        write_report(out, newer)
    assert len(json.loads((out / "report.json").read_text())["artifacts"]) == 3
    write_report(out, newer, overwrite=True)
    assert len(json.loads((out / "report.json").read_text())["artifacts"]) == 1
    read_manifest(out, kind="report")
    # a report from before reports had a manifest is still recognised; another kind of our outputs is not a report
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.json").write_text(json.dumps(REPORT.to_dict()))
    (legacy / "report.md").write_text("# old")
    write_report(legacy, REPORT, overwrite=True)
    assert (legacy / "manifest.json").is_file()
    _output(tmp_path / "bundle", "decoder", kind="bundle")
    with pytest.raises(InputError, match="holds an exaone-edge 'bundle', not a 'report'"):
        write_report(tmp_path / "bundle", REPORT, overwrite=True)
    assert (tmp_path / "bundle" / "data.txt").read_text() == "decoder"
    assert _partials(tmp_path) == []


def test_empty_folder_and_symlinked_output(tmp_path):
    (tmp_path / "empty").mkdir()
    _output(tmp_path / "empty", "one")
    assert (tmp_path / "empty" / "data.txt").read_text() == "one"
    real = tmp_path / "disk" / "out"
    real.parent.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=False)
    _output(tmp_path / "link", "two")
    _output(tmp_path / "link", "three", overwrite=True)
    assert (tmp_path / "link").is_symlink() and (real / "data.txt").read_text() == "three"
    assert _partials(tmp_path) == [] and _partials(real.parent) == []


def test_an_output_without_a_manifest_is_marked_as_ours(tmp_path):
    """tiny-model writes a checkpoint, which has no manifest: a marker makes it replaceable, a user's is not."""
    out = tmp_path / "model"
    for overwrite in (False, True):
        with files.atomic_dir(out, overwrite=overwrite) as tmp:
            (tmp / "config.json").write_text("{}")
    assert files.output_kind(out) == "output"
    theirs = tmp_path / "their-model"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "exaone4_5"}')
    with pytest.raises(InputError, match="not written by exaone-edge"):
        with files.atomic_dir(theirs, overwrite=True) as tmp:
            pytest.fail("the body must not run")
    assert (theirs / "config.json").read_text() == '{"model_type": "exaone4_5"}'


def test_a_failed_run_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    _output(out, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(out, overwrite=True, kind="thing") as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("validation failed")
    assert (out / "data.txt").read_text() == "old" and _partials(tmp_path) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _name(name: str, pid: int, start: int = 0, host: str | None = None) -> str:
    return f".{name}.ee-{host or files._host()}-{pid}-{start}-0123abcd.partial"


def _partial_dir(parent: Path, name: str, maker: int, **owner) -> Path:
    path = parent / _name(name, maker)
    (path / "new").mkdir(parents=True)
    (path / "new" / "weights.bin").write_bytes(b"x" * 100)
    record = {"tool": "exaone-edge", "pid": maker, "host": files._host(), "target": name, **owner}
    (path / files.OWNER_FILE).write_text(json.dumps(record))
    return path


def test_stale_partials_are_removed_only_when_ours_and_dead(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale_dir = _partial_dir(tmp_path, "out", dead)
    stale_file = tmp_path / _name("decoder-F16.gguf", dead)
    stale_file.write_bytes(b"half a gguf")
    running = _partial_dir(tmp_path, "out", live)
    no_owner = tmp_path / _name("other", dead)
    no_owner.mkdir()
    (no_owner / "keep.txt").write_text("not decidably ours")
    other_host = tmp_path / _name("out", dead, host="0" * 8 if files._host() != "0" * 8 else "1" * 8)
    other_host.write_text("a run on another machine sharing this disk")
    lookalike = tmp_path / ".out.partial"
    lookalike.write_text("the user's")
    wrong_owner = _partial_dir(tmp_path, "x", dead, pid=dead + 1)
    reused = None
    if files._start_ticks(live):  # a live pid whose start time differs: the pid was reused, the maker is gone
        reused = tmp_path / _name("reused", live, start=files._start_ticks(live) + 1)
        reused.write_bytes(b"x")
    removed = files.sweep_stale(tmp_path)
    assert sorted(removed) == sorted(p for p in (stale_dir, stale_file, reused) if p is not None)
    for kept in (running, no_owner, other_host, lookalike, wrong_owner):
        assert kept.exists(), kept


def test_the_next_run_sweeps_a_killed_runs_partials_and_restores_an_interrupted_swap(tmp_path):
    dead = _dead_pid()
    out = tmp_path / "out"
    _output(out, "old")
    staging = _partial_dir(tmp_path, "out", dead)
    os.replace(out, staging / "previous")  # killed between moving the old output aside and renaming the new in
    files.sweep_stale(tmp_path)
    assert (out / "data.txt").read_text() == "old" and _partials(tmp_path) == []
    read_manifest(out)
    _partial_dir(tmp_path, "out", dead)
    _output(out, "new", overwrite=True)  # a later run of the command sweeps on its own
    assert (out / "data.txt").read_text() == "new" and _partials(tmp_path) == []


CHILD = """
import os, pathlib, signal, sys
from pathlib import Path
from exaone_edge import files
from exaone_edge.manifest import Manifest, write_manifest

target, step = Path(sys.argv[1]), sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_rmtree, real_unlink = os.replace, files.shutil.rmtree, pathlib.Path.unlink
def replace(src, dst):
    if step == "before-move-aside" and Path(src) == target:
        die()
    if step == "between-renames" and Path(dst) == target:
        die()
    real_replace(src, dst)
    if step == "after-rename-in" and Path(dst) == target:
        die()
    if step == "after-marking-replaced" and Path(dst).name == "replaced":
        die()
def rmtree(path, **options):
    if step == "during-removal" and Path(path).name == "replaced":
        (Path(path) / "manifest.json").unlink()  # the old output half gone
        die()
    real_rmtree(path, **options)
def unlink(self, missing_ok=False):
    if step == "before-owner-removed" and self.name == files.OWNER_FILE:
        die()
    real_unlink(self, missing_ok=missing_ok)
files.os.replace, files.shutil.rmtree, pathlib.Path.unlink = replace, rmtree, unlink
with files.atomic_dir(target, overwrite=True, kind="thing") as tmp:
    (tmp / "data.txt").write_text("new")
    if step == "filling":
        die()
    write_manifest(tmp, Manifest(kind="thing"))
"""
# what the output path holds right after the kill at each step of the swap
AT_KILL = {"filling": "old", "before-move-aside": "old", "between-renames": None, "after-rename-in": "new",
           "after-marking-replaced": "new", "during-removal": "new", "before-owner-removed": "new"}


@pytest.mark.parametrize("step", list(AT_KILL))
def test_a_kill_at_each_step_of_the_swap_is_recovered_by_the_next_run(tmp_path, step):
    """Killed at each step, the output path holds the old or the new output (or, between the two renames, nothing:
    the old one waits in the `.partial`); the next run puts it right before its first check, so it refuses an
    existing output up front without --overwrite (not after all its work) and, with it, replaces it and leaves no
    `.partial` behind."""
    out = tmp_path / "out"
    _output(out, "old")
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), step], capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    assert ((out / "data.txt").read_text() if out.exists() else None) == AT_KILL[step]
    if out.exists():  # whatever is at the output path is complete
        read_manifest(out)
    assert len(_partials(tmp_path)) == 1  # the killed run's, still recognisably ours
    with pytest.raises(InputError, match="holds an earlier exaone-edge 'thing'.*Pass --overwrite"):
        with files.atomic_dir(out, kind="thing"):
            pytest.fail("the next run must refuse before its work, not at its final check")
    read_manifest(out)
    assert (out / "data.txt").read_text() == (AT_KILL[step] or "old") and _partials(tmp_path) == []
    _output(out, "newer", overwrite=True)
    assert (out / "data.txt").read_text() == "newer" and _partials(tmp_path) == []


def test_a_swap_killed_between_its_renames_is_recovered_by_the_next_command(tiny_model_dir, tmp_path):
    """The same through a real command: `docs make` killed between its renames, then run again without --overwrite."""
    out = tmp_path / "docs"
    assert run_cli("docs", "make", str(out), "--n", "1").returncode == 0
    old = (out / "manifest.json").read_bytes()
    killed = CHILD.split("with files.atomic_dir")[0] + (
        "from exaone_edge.documents import generate_set\ngenerate_set(2, 'en', 0, target, overwrite=True)\n")
    child = subprocess.run([sys.executable, "-c", killed, str(out), "between-renames"], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == -9 and not out.exists(), child.stderr
    result = run_cli("docs", "make", str(out), "--n", "2")
    assert result.returncode == 2 and "Pass --overwrite" in result.stderr and "docs: rendering" not in result.stderr
    assert (out / "manifest.json").read_bytes() == old and _partials(tmp_path) == []
    assert run_cli("docs", "make", str(out), "--n", "2", "--overwrite").returncode == 0
    read_manifest(out, kind="document-set")
    assert _partials(tmp_path) == []


def test_a_partial_file_of_a_killed_write_is_swept_by_the_next_write(tmp_path):
    stale = tmp_path / _name("data.json", _dead_pid())
    stale.write_bytes(b"{")
    files.write_json(tmp_path / "data.json", {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_the_one_writer_never_writes_through_a_link(tmp_path, monkeypatch):
    """A link at the target is replaced, not followed; one planted at the temporary name (had it been guessed) makes
    the write fail: the file is created with O_EXCL | O_NOFOLLOW and written through that descriptor only."""
    from exaone_edge.reference.file import ReferenceFile, write_reference

    victim = tmp_path / "victim.txt"
    victim.write_text("not ours")
    (tmp_path / "data.json").symlink_to(victim)
    files.write_json(tmp_path / "data.json", {"ok": True})
    assert not (tmp_path / "data.json").is_symlink() and victim.read_text() == "not ours"
    monkeypatch.setattr(files, "partial_name", lambda name: f".{name}.guessed.partial")
    (tmp_path / ".ref.npz.guessed.partial").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_reference(tmp_path / "ref.npz", ReferenceFile("key", {}, []))
    assert victim.read_text() == "not ours" and not (tmp_path / "ref.npz").exists()


def test_work_folder_ownership(tmp_path):
    made = tmp_path / "made"
    files.open_work_dir(made)
    (made / "decoder-F16.gguf").write_bytes(b"x")
    assert not files.close_work_dir(made)  # something is still in it
    (made / "decoder-F16.gguf").unlink()
    assert files.close_work_dir(made) and not made.exists()
    for existing in (_user_folder(tmp_path / "theirs"), tmp_path / "empty"):
        existing.mkdir(exist_ok=True)
        before = _snapshot(existing)
        files.open_work_dir(existing)
        assert not files.close_work_dir(existing) and existing.is_dir() and _snapshot(existing) == before


def test_quantize_work_dir_keeps_what_the_run_did_not_make(tiny_model_dir, tmp_path):
    work = _user_folder(tmp_path / "scratch")
    before = _snapshot(work)
    result = run_cli("quantize", str(tiny_model_dir), "--bits", "8", "-o", str(tmp_path / "q8"),
                     "--work-dir", str(work), "--json")
    assert result.returncode == 0, result.stderr
    assert work.is_dir() and _snapshot(work) == before  # our F16 GGUF, sidecar and scratch are gone, theirs stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8", "scratch"]
    read_manifest(tmp_path / "q8", kind="bundle")


def test_quantize_refuses_user_files_at_its_names_and_non_empty_outputs(tiny_model_dir, tmp_path):
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    work = tmp_path / "work"
    work.mkdir()
    (work / "decoder-F16.gguf").write_bytes(b"the user's own F16 GGUF")
    with pytest.raises(InputError, match="decoder-F16.gguf.*did not make"):
        quantize_checkpoint(tiny_model_dir, tmp_path / "out", bits=8, work_dir=work)
    assert (work / "decoder-F16.gguf").read_bytes() == b"the user's own F16 GGUF"
    out = _user_folder(tmp_path / "busy")
    before = _snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not written by exaone-edge"):
            quantize_checkpoint(tiny_model_dir, out, bits=8, overwrite=overwrite, work_dir=tmp_path / "w2")
    assert _snapshot(out) == before and not (tmp_path / "w2").exists()
