"""A deployment bundle on disk: decoder GGUF, vision ONNX export, tokenizer and configs, checked on load.

    BUNDLE/decoder.gguf  vision/  config.json  tokenizer.json  tokenizer_config.json
           chat_template.jinja  preprocessor_config.json  [imatrix.gguf]  manifest.json (kind "bundle")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.errors import ArtifactError
from exaone_edge.manifest import Manifest, read_manifest, verify_files
from exaone_edge.spec import ImageSpec, ModelSpec, image_spec, model_spec

BUNDLE_KIND = "bundle"
REQUIRED = (
    "decoder.gguf",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
)
FIX = "Re-create the bundle with `exaone-edge quantize`; do not edit files inside it."


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    spec: ModelSpec
    image: ImageSpec

    @property
    def decoder_path(self) -> Path:
        return self.path / "decoder.gguf"

    @property
    def vision_dir(self) -> Path:
        return self.path / "vision"

    @property
    def has_vision(self) -> bool:
        """False for a text-only bundle (made without `--vision`)."""
        return any(name.startswith("vision/") for name in self.manifest.files)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.spec.decoder.eos_token_id
        return set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())

    @property
    def preprocessing_id(self) -> str:
        """What makes vision rows differ between bundles: the encoder file and the preprocessing config."""
        files = self.manifest.files
        parts = [files.get(name, {}).get("sha256", "") for name in sorted(files) if name.startswith("vision/")]
        parts.append(files.get("preprocessor_config.json", {}).get("sha256", ""))
        return ":".join(parts)


def load_bundle(directory: Path | str, *, verify: bool = True) -> Bundle:
    """Read and check a bundle. `verify=False` checks presence and sizes but skips hashing (fast start)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError("bundle directory not found", path=directory, fix="Pass the -o directory of `exaone-edge quantize`.")
    manifest = read_manifest(directory, kind=BUNDLE_KIND, verify=False)
    for name in REQUIRED:
        if name not in manifest.files:
            raise ArtifactError(f"manifest.json does not list '{name}'", path=directory, fix=FIX)
    if verify:
        verify_files(directory, manifest)
    else:
        _check_sizes(directory, manifest)
    spec = model_spec(_json(directory / "config.json"), directory / "config.json")
    image = image_spec(_json(directory / "preprocessor_config.json"), directory / "preprocessor_config.json")
    return Bundle(path=directory, manifest=manifest, spec=spec, image=image)


def _check_sizes(directory: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError("file listed in manifest.json is missing", path=path, fix=FIX)
        if path.stat().st_size != entry.get("bytes"):
            raise ArtifactError("file size differs from manifest.json (altered or truncated)", path=path, fix=FIX)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable JSON ({exc})", path=path, fix=FIX) from None
    if not isinstance(data, dict):
        raise ArtifactError("expected a JSON object", path=path, fix=FIX)
    return data
