"""Atomic writes, checksums and output folders: an interrupted run never leaves a file or folder that looks
valid, and no command deletes what it did not make.

Work in progress is named `.NAME.ee-HOST-PID-START-RAND.partial` (a folder also holds owner.json naming the
same process), so a later run can decide both that it is ours and that the process that made it is gone
(pid dead, or reused by a later process), and remove it. Anything else is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
TOOL = "exaone-edge"
MANIFEST_FILE = "manifest.json"  # = manifest.MANIFEST_NAME (manifest.py imports this module)
OWNER_FILE = "owner.json"  # inside a `.partial` folder: which process made it, for which target
OUTPUT_MARKER = ".exaone-edge-output.json"  # marks an output that has no manifest.json (tiny-model)
WORK_MARKER = ".exaone-edge-work.json"  # marks a work folder that a run of ours created
REPORT_FILES = {"report.json", "report.md", "report.html"}
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.ee-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}\.partial$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- who made a `.partial`, and is it still running --------------------------------------------------

def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> int:
    """A process's start time (clock ticks since boot), so a reused pid is not mistaken for the original; 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def partial_name(name: str) -> str:
    """`.NAME.ee-HOST-PID-START-RAND.partial`: the name of this process's work in progress for NAME."""
    pid = os.getpid()
    return f".{name}.ee-{_host()}-{pid}-{_start_ticks(pid)}-{secrets.token_hex(4)}.partial"


def _alive(pid: int, start: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = _start_ticks(pid)
    return not (start and now and now != start)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sweep_stale(directory: Path, name: str | None = None) -> list[Path]:
    """Remove `.partial` files and folders in `directory` (only those for `name`, if given) that a killed run of
    ours left; an interrupted swap is rolled back first (the previous output is put back)."""
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if not match or (name is not None and match["name"] != name) or match["host"] != _host():
            continue
        pid, start = int(match["pid"]), int(match["start"])
        if _alive(pid, start) or entry.is_symlink():
            continue
        if entry.is_dir():
            owner = _read_json(entry / OWNER_FILE)
            ours = (isinstance(owner, dict) and owner.get("tool") == TOOL and owner.get("pid") == pid
                    and owner.get("target") == match["name"])
            if not ours and any(entry.iterdir()):
                continue  # our name but no owner record: not decidably ours
            previous, target = entry / "previous", entry.parent / match["name"]
            if ours and previous.is_dir() and not os.path.lexists(target):
                os.replace(previous, target)  # killed between moving the old output aside and renaming the new in
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry)
    if removed:
        from exaone_edge.progress import log

        log(f"removed {len(removed)} unfinished item(s) left in {directory} by a killed run: "
            + ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def scratch_dir(parent: Path, name: str) -> Iterator[Path]:
    """A private folder `.NAME.ee-….partial` in `parent`, removed on exit; one left by a kill is swept later."""
    parent = Path(parent)
    _mkdirs(parent)
    path = parent / partial_name(name)
    try:
        path.mkdir()
    except OSError as exc:
        from exaone_edge.errors import InputError

        raise InputError(f"cannot create a work folder here ({exc.strerror}); outputs are built beside their final "
                         "place and renamed in", path=parent, fix="Choose an output whose parent folder you can write to.") from None
    (path / OWNER_FILE).write_text(json.dumps({
        "tool": TOOL, "pid": os.getpid(), "host": _host(), "start": _start_ticks(os.getpid()), "target": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n", encoding="utf-8")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mkdirs(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from exaone_edge.errors import InputError

        raise InputError(f"cannot create the folder ({exc.strerror})", path=directory,
                         fix="Choose a location you can write to.") from None


# -- files ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success."""
    target = Path(target)
    _mkdirs(target.parent)
    sweep_stale(target.parent, target.name)
    tmp = target.parent / partial_name(target.name)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


# -- output folders ---------------------------------------------------------------------------------

def output_kind(directory: Path) -> str | None:
    """What exaone-edge output `directory` holds (a manifest's kind, "report", "output"), or None if it is not ours."""
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST_FILE)
    if isinstance(manifest, dict) and {"kind", "files", "schema"} <= manifest.keys():
        return str(manifest["kind"])
    marker = _read_json(directory / OUTPUT_MARKER)
    if isinstance(marker, dict) and marker.get("tool") == TOOL:
        return str(marker.get("kind") or "output")
    report = _read_json(directory / "report.json")  # reports written before they had a manifest
    if isinstance(report, dict) and {"schema", "artifacts"} <= report.keys() and set(os.listdir(directory)) <= REPORT_FILES:
        return "report"
    return None


def check_output_dir(target: Path, *, overwrite: bool = False, kind: str | None = None) -> None:
    """Refuse an output folder that holds anything but an earlier output of ours (of `kind`, if given), and an
    earlier output unless `overwrite`. Called before any work starts, and again just before the swap."""
    from exaone_edge.errors import InputError

    shown = Path(target)
    if not os.path.lexists(shown):
        return
    real = Path(os.path.realpath(shown))
    if not os.path.lexists(real):
        return  # a link to a folder still to be made: written where it points
    if not real.is_dir():
        raise InputError("exists and is not a folder", path=shown, fix="Pass a folder path (new or empty) to -o.")
    if real == real.parent:
        raise InputError("is the root of the file system", path=shown, fix="Pass a new or empty folder to -o.")
    if not any(real.iterdir()):
        return
    found = output_kind(real)
    if found is None:
        why = " (--overwrite replaces only an earlier exaone-edge output, recognised by its manifest.json)" if overwrite else ""
        raise InputError(f"output folder is not empty and was not written by exaone-edge{why}; nothing in it was "
                         "changed", path=shown, fix=f"Choose a new or empty folder, e.g. -o {shown / 'exaone-edge-out'}.")
    if kind is not None and found != kind:
        raise InputError(f"output folder is not empty: it holds an exaone-edge '{found}', not a '{kind}'; it was not "
                         "changed", path=shown,
                         fix="Choose a new or empty folder.")
    if not overwrite:
        raise InputError(f"output folder is not empty: it holds an earlier exaone-edge '{found}'", path=shown,
                         fix="Pass --overwrite to replace it (the old one stays until the new one is complete), "
                             "or choose a new folder.")


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Build a folder under a private `.partial` name and move it into place only when complete.

    Replaces only an earlier output of ours (see `check_output_dir`), in this order: new output complete, old one
    moved aside, new one renamed in, old one deleted. A kill at any point leaves the old or the new output at
    `target` (or the old one inside the `.partial`, put back by the next run), never a half-written one there.
    """
    shown = Path(target)
    check_output_dir(shown, overwrite=overwrite, kind=kind)
    target = Path(os.path.realpath(shown))  # a symlinked -o is written where it points, the link is kept
    _mkdirs(target.parent)
    sweep_stale(target.parent)
    with scratch_dir(target.parent, target.name) as staging:
        new = staging / "new"
        new.mkdir()
        yield new
        if not (new / MANIFEST_FILE).is_file():
            (new / OUTPUT_MARKER).write_text(json.dumps({"tool": TOOL, "kind": kind or "output"}) + "\n", encoding="utf-8")
        check_output_dir(shown, overwrite=overwrite, kind=kind)  # the folder may have changed while we worked
        previous = staging / "previous"
        moved = os.path.lexists(target)
        if moved:
            os.replace(target, previous)
        try:
            os.replace(new, target)
        except BaseException:
            if moved:
                os.replace(previous, target)
            raise
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- work folders (--work-dir) ----------------------------------------------------------------------

def open_work_dir(directory: Path) -> None:
    """Use `directory` for intermediates; create it (marked as ours) if absent. A folder that existed is never removed."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        from exaone_edge.errors import InputError

        raise InputError("the work folder exists and is not a folder", path=directory, fix="Pass another --work-dir.")
    if not directory.exists():
        _mkdirs(directory)
        write_json(directory / WORK_MARKER, {"tool": TOOL, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    sweep_stale(directory)


def close_work_dir(directory: Path) -> bool:
    """After the caller removed its own files: sweep stale partials, and remove the folder only if a run of ours
    created it and nothing else is left in it. Returns whether it was removed."""
    directory = Path(directory)
    sweep_stale(directory)
    marker = _read_json(directory / WORK_MARKER)
    if not (isinstance(marker, dict) and marker.get("tool") == TOOL):
        return False
    if any(entry.name != WORK_MARKER for entry in directory.iterdir()):
        return False
    (directory / WORK_MARKER).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
    return not directory.exists()
