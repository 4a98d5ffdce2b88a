"""Assemble the deployment bundle that `run`, `serve` and `validate` take as is.

    BUNDLE/decoder.gguf  [imatrix.gguf]  vision/ (copy of an export dir)  config.json  tokenizer.json
           tokenizer_config.json  chat_template.jinja  preprocessor_config.json  manifest.json (kind "bundle")
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint
from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.manifest import Manifest, read_manifest, write_manifest

BUNDLE_KIND = "bundle"
VISION_KIND = "vision-onnx"
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")


def check_vision_dir(vision_dir: Path) -> Manifest:
    """An `exaone-edge export` output, verified against its manifest before it is copied."""
    if not Path(vision_dir).is_dir():
        raise InputError("vision export directory not found", path=vision_dir,
                         fix="Pass the -o directory of `exaone-edge export MODEL_DIR -o OUT`.")
    return read_manifest(Path(vision_dir), kind=VISION_KIND, verify=True)


def directory_bytes(directory: Path | None) -> int:
    if directory is None:
        return 0
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def write_bundle(
    target: Path,
    checkpoint: Checkpoint,
    decoder: Path,
    imatrix: Path | None,
    vision_dir: Path | None,
    details: dict[str, Any],
    inputs: dict[str, Any],
    validation: dict[str, Any],
) -> Manifest:
    """Fill `target` (a fresh temporary directory) and write its manifest; the caller renames it into place."""
    shutil.move(str(decoder), target / "decoder.gguf")
    if imatrix is not None:
        shutil.copy2(imatrix, target / "imatrix.gguf")
    for name in CHECKPOINT_FILES:
        source = checkpoint.path / name
        if not source.is_file():
            if name == "tokenizer_config.json":
                (target / name).write_text("{}\n", encoding="utf-8")
                continue
            raise ArtifactError(f"{name} is missing from the checkpoint", path=checkpoint.path)
        shutil.copy2(source, target / name)
    (target / "chat_template.jinja").write_text(checkpoint.chat_template, encoding="utf-8")
    vision: dict[str, Any] | None = None
    if vision_dir is not None:
        vision_manifest = check_vision_dir(vision_dir)
        shutil.copytree(vision_dir, target / "vision")
        vision = {"precision": vision_manifest.details.get("precision"), "source_manifest": vision_manifest.inputs}
    manifest = Manifest(kind=BUNDLE_KIND, inputs=inputs, details={**details, "vision": vision}, validation=validation)
    return write_manifest(target, manifest)
