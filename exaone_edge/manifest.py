"""Artifact manifests: what a directory holds, how it was made, how it validated; verified on load."""

from __future__ import annotations

import json
import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exaone_edge import __version__
from exaone_edge.errors import ArtifactError
from exaone_edge.files import sha256_file, write_json

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


@dataclass
class Manifest:
    kind: str  # e.g. "vision-onnx", "gguf", "bundle", "document-set"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path → {sha256, bytes}
    inputs: dict[str, Any] = field(default_factory=dict)  # hashes of what it was made from
    details: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    toolkit_version: str = __version__
    created_at: str = ""
    schema: int = SCHEMA_VERSION


def write_manifest(directory: Path, manifest: Manifest, files: list[str] | None = None) -> Manifest:
    """Checksum `files` (default: every file in `directory` except this manifest, a bundled export's own included)
    and write manifest.json."""
    directory = Path(directory)
    if files is None:
        files = sorted(
            str(path.relative_to(directory))
            for path in directory.rglob("*")
            if path.is_file() and path != directory / MANIFEST_NAME
        )
    manifest.files = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size} for name in files
    }
    manifest.created_at = manifest.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(directory / MANIFEST_NAME, asdict(manifest))
    return manifest


def read_manifest(directory: Path, *, kind: str | None = None, verify: bool = True) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            "no manifest.json: not an exaone-edge artifact, or an interrupted run", path=directory,
            fix="Re-run the command that produces it.",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(f"manifest.json is unreadable ({exc})", path=path, fix="Re-create the artifact.") from None
    if manifest.schema != SCHEMA_VERSION:
        raise ArtifactError(f"manifest schema {manifest.schema}, this toolkit reads {SCHEMA_VERSION}", path=path)
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"artifact is a '{manifest.kind}', expected a '{kind}'", path=directory)
    if verify:
        verify_files(directory, manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError("file listed in manifest.json is missing", path=path, fix="Re-create the artifact.")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise ArtifactError(
                "file does not match its checksum in manifest.json (altered or corrupt)",
                path=path,
                fix="Re-create the artifact; do not edit files inside it.",
            )


T = typing.TypeVar("T")


def typed_details(cls: type[T], manifest: Manifest, path: Path) -> T:
    """The manifest's `details` as `cls` (a frozen dataclass, nested ones too): every reader goes through this, so a
    missing or mistyped field is one ArtifactError naming it, not a KeyError deep in a stage."""
    return _build(cls, manifest.details, path, "details")


def _build(cls: type[T], data: Any, path: Path, where: str) -> T:
    if not isinstance(data, dict):
        raise ArtifactError(f"manifest.json {where} is not an object", path=path, fix="Re-create the artifact.")
    hints = typing.get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ArtifactError(f"manifest.json {where}.{spec.name} is missing", path=path, fix="Re-create the artifact.")
            continue
        value, hint = data[spec.name], hints[spec.name]
        nested = next((t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)), None)
        values[spec.name] = _build(nested, value, path, f"{where}.{spec.name}") if nested and value is not None else value
    return cls(**values)
