"""Atomic writes, checksums and output folders: an interrupted run never leaves a file or folder that looks
valid, and no command deletes what it did not make.

Work in progress is named `.NAME.ee-HOST-PID-START-RAND.partial` (a folder also holds owner.json naming the
same process), so a later run can decide both that it is ours and that the process that made it is gone
(pid dead, or reused by a later process), and remove it. Anything else is never touched.

`--overwrite` replaces an earlier output only when everything in the folder is listed by that output's own
manifest.json (or, for an output without one, its `.exaone-edge-output.json` marker): anything else found there
(a file the user added) makes the command refuse before any work starts, naming it, and nothing is changed.
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
OUTPUT_MARKER = ".exaone-edge-output.json"  # marks (and lists) an output that has no manifest.json (tiny-model)
WORK_MARKER = ".exaone-edge-work.json"  # marks a work folder that a run of ours created
REPORT_FILES = {"report.json", "report.md", "report.html"}
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.ee-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}\.partial$")
# Created, never opened: fails on anything already at the name, a link included (O_EXCL), and never follows one.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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


def read_json(path: Path, what: str, *, error: type | None = None, fix: str | None = None) -> Any:
    """The one JSON file reader: the parsed file, or `error` (an ExaoneEdgeError class; ArtifactError by default)
    naming the file and what it should have been."""
    from exaone_edge.errors import ArtifactError

    error = error or ArtifactError
    if not Path(path).is_file():
        raise error(f"{what} is missing", path=path, fix=fix)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{what} cannot be read ({exc.strerror})", path=path, fix=fix) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start})", path=path, fix=fix) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{what} is not valid JSON ({exc})", path=path, fix=fix) from None


def _read_json(path: Path) -> Any:
    """A JSON file when it is one, else None: for telling our outputs from anything else."""
    from exaone_edge.errors import ExaoneEdgeError

    try:
        return read_json(path, path.name)
    except ExaoneEdgeError:
        return None


def inputs_digest(inputs: Any) -> str:
    """The one provenance hash: what something was made from, as canonical JSON (keys sorted), SHA-256. Names cached
    intermediates (quantize's sidecars) and reference files alike."""
    payload = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


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
            if not ours and any(child.name != OWNER_FILE for child in entry.iterdir()):
                continue  # our name but no (readable) owner record beside other things: not decidably ours
            _discard(entry, entry.parent / match["name"] if ours else None)
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


def _discard(staging: Path, target: Path | None) -> None:
    """Remove a `.partial` folder of ours, putting back an old output that a swap moved aside and did not replace
    (`target` absent). owner.json goes last, so a removal cut short is still recognisably ours and finished later."""
    previous = staging / "previous"
    if target is not None and previous.is_dir() and not previous.is_symlink() and not os.path.lexists(target):
        os.replace(previous, target)
    with contextlib.suppress(OSError):
        for child in staging.iterdir():
            if child.name == OWNER_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        if all(child.name == OWNER_FILE for child in staging.iterdir()):
            (staging / OWNER_FILE).unlink(missing_ok=True)
            staging.rmdir()


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
    try:
        owner = {"tool": TOOL, "pid": os.getpid(), "host": _host(), "start": _start_ticks(os.getpid()), "target": name,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with open(os.open(path / OWNER_FILE, _NEW_FILE, 0o666), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(owner) + "\n")
        yield path
    finally:
        _discard(path, parent / name)


def _mkdirs(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from exaone_edge.errors import InputError

        raise InputError(f"cannot create the folder ({exc.strerror})", path=directory,
                         fix="Choose a location you can write to.") from None


# -- files: the one writer --------------------------------------------------------------------------

@contextlib.contextmanager
def _new_file(target: Path) -> Iterator[tuple[Path, int]]:
    """A fresh `.partial` file beside `target` and its descriptor (the caller closes it); renamed over `target`
    when the block ends without an error, removed otherwise."""
    target = Path(target)
    _mkdirs(target.parent)
    sweep_stale(target.parent, target.name)
    tmp = target.parent / partial_name(target.name)
    fd = os.open(tmp, _NEW_FILE, 0o666)
    try:
        yield tmp, fd
        os.replace(tmp, target)  # a link at `target` is replaced, never followed
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a new temporary path beside `target` (for a writer that opens it by name: llama.cpp, gguf); rename
    it over `target` only on success."""
    with _new_file(target) as (tmp, fd):
        os.close(fd)
        yield tmp


def write_bytes(target: Path, data: bytes | memoryview) -> None:
    """Write `target` atomically through the descriptor that created its temporary file (no second open)."""
    with _new_file(target) as (_, fd):
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


# -- output folders ---------------------------------------------------------------------------------

def _entries(directory: Path) -> list[str]:
    """Every file, link and folder under `directory` (relative, '/'-separated); links are not followed."""
    found = []
    for root, dirs, names in os.walk(directory):
        base = Path(root).relative_to(directory)
        found += [(base / name).as_posix() for name in (*dirs, *names)]
    return sorted(found)


def _output(directory: Path) -> tuple[str, str, set[str]] | None:
    """(kind, what lists its contents, the paths it lists) of an exaone-edge output in `directory`; None if not ours."""
    manifest = _read_json(directory / MANIFEST_FILE)
    if isinstance(manifest, dict) and {"kind", "files", "schema"} <= manifest.keys():
        return str(manifest["kind"]), MANIFEST_FILE, {MANIFEST_FILE, *map(str, manifest["files"] or ())}
    marker = _read_json(directory / OUTPUT_MARKER)
    if isinstance(marker, dict) and marker.get("tool") == TOOL:
        return str(marker.get("kind") or "output"), OUTPUT_MARKER, {OUTPUT_MARKER, *map(str, marker.get("files", ()))}
    report = _read_json(directory / "report.json")  # reports written before they had a manifest
    if isinstance(report, dict) and {"schema", "artifacts"} <= report.keys() and set(os.listdir(directory)) <= REPORT_FILES:
        return "report", "report.json", set(REPORT_FILES)
    return None


def output_kind(directory: Path) -> str | None:
    """What exaone-edge output `directory` holds (a manifest's kind, "report", "output"), or None if it is not ours."""
    found = _output(Path(directory))
    return found[0] if found else None


def foreign_entries(directory: Path) -> list[str]:
    """What is in an output folder of ours that its manifest (or marker) does not list: the user's, never replaced."""
    directory = Path(directory)
    found = _output(directory)
    listed = found[2] if found else set()
    keep = listed | {parent.as_posix() for path in listed for parent in Path(path).parents}
    return [entry for entry in _entries(directory) if entry not in keep]


def check_output_dir(target: Path, *, overwrite: bool = False, kind: str | None = None) -> None:
    """Refuse an output folder that holds anything but an earlier output of ours (of `kind`, if given), and an
    earlier output unless `overwrite`. Called before any work starts, and again just before the swap; a swap a
    killed run left half done is put right first, so both calls judge the same folder."""
    from exaone_edge.errors import InputError

    shown = Path(target)
    real = Path(os.path.realpath(shown))
    sweep_stale(real.parent, real.name)
    if not os.path.lexists(shown) or not os.path.lexists(real):
        return  # new, or a link to a folder still to be made (written where it points)
    if not real.is_dir():
        raise InputError("exists and is not a folder", path=shown, fix="Pass a folder path (new or empty) to -o.")
    if real == real.parent:
        raise InputError("is the root of the file system", path=shown, fix="Pass a new or empty folder to -o.")
    if not any(real.iterdir()):
        return
    found = _output(real)
    if found is None:
        why = " (--overwrite replaces only an earlier exaone-edge output, recognised by its manifest.json)" if overwrite else ""
        raise InputError(f"output folder is not empty and was not written by exaone-edge{why}; nothing in it was "
                         "changed", path=shown, fix=f"Choose a new or empty folder, e.g. -o {shown / 'exaone-edge-out'}.")
    if kind is not None and found[0] != kind:
        raise InputError(f"output folder is not empty: it holds an exaone-edge '{found[0]}', not a '{kind}'; it was not "
                         "changed", path=shown,
                         fix="Choose a new or empty folder.")
    foreign = foreign_entries(real)
    if foreign:
        shown_names = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"output folder holds an earlier exaone-edge '{found[0]}' and {len(foreign)} item(s) its "
                         f"{found[1]} does not list ({shown_names}); --overwrite replaces only what an earlier output "
                         "lists, so nothing was changed", path=shown,
                         fix="Move those items out of the folder, or choose a new folder.")
    if not overwrite:
        raise InputError(f"output folder is not empty: it holds an earlier exaone-edge '{found[0]}'", path=shown,
                         fix="Pass --overwrite to replace it (the old one stays until the new one is complete), "
                             "or choose a new folder.")


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Build a folder under a private `.partial` name and move it into place only when complete.

    Replaces only an earlier output of ours that holds nothing else (see `check_output_dir`), in this order: new
    output complete, old one moved aside, new one renamed in, old one marked replaced and deleted, owner.json last.
    A kill at any point leaves the old or the new output at `target` (or the old one inside the `.partial`, put
    back by the next run before it checks anything), never a half-written one there.
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
            write_json(new / OUTPUT_MARKER, {"tool": TOOL, "kind": kind or "output", "files": _entries(new)})
        unlisted = foreign_entries(new)
        if unlisted:  # a later --overwrite would refuse our own output
            raise RuntimeError(f"{target}: the new output holds files its manifest.json does not list: {unlisted[:5]}")
        check_output_dir(shown, overwrite=overwrite, kind=kind)  # the folder may have changed while we worked
        if os.path.lexists(target):
            os.replace(target, staging / "previous")
        os.replace(new, target)  # if this fails, leaving the block puts `previous` back
        if os.path.lexists(staging / "previous"):
            os.replace(staging / "previous", staging / "replaced")  # from here on never put back
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
