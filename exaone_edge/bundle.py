"""The deployment bundle: the one module that writes it (`quantize`) and reads it (`run`, `serve`, `validate`).

    BUNDLE/decoder.gguf  [imatrix.gguf]  vision/ (a copy of an export dir)  config.json  tokenizer.json
           tokenizer_config.json  chat_template.jinja  preprocessor_config.json  manifest.json (kind "bundle")
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint
from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.files import read_json
from exaone_edge.manifest import MANIFEST_NAME, Manifest, read_manifest, typed_details, verify_files, write_manifest
from exaone_edge.spec import ImageSpec, ModelSpec, image_spec, model_spec
from exaone_edge.vision.contract import KIND as VISION_KIND, VisionDetails

KIND = "bundle"
DECODER_FILE = "decoder.gguf"
IMATRIX_FILE = "imatrix.gguf"
VISION_DIR = "vision"
TEMPLATE_FILE = "chat_template.jinja"
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
REQUIRED = (DECODER_FILE, *CHECKPOINT_FILES, TEMPLATE_FILE)
FIX = "Re-create the bundle with `exaone-edge quantize`; do not edit files inside it."


@dataclass(frozen=True)
class DecoderDetails:
    level: str  # the llama.cpp quantization level (F32, F16, Q8_0, Q4_K_M, …)
    bits_per_weight: float | None = None
    bytes: int | None = None
    format: str = "gguf"
    arch: str = "exaone4"
    imatrix: bool = False  # calibrated with a document importance matrix
    mtp: str = "none"  # the MTP head: "kept", "none" (the checkpoint has none), or "dropped" (older bundles)


@dataclass(frozen=True)
class VisionRef:
    precision: str | None
    source_manifest: dict[str, Any] = field(default_factory=dict)  # the export's own inputs


@dataclass(frozen=True)
class BundleDetails:
    decoder: DecoderDetails
    vision: VisionRef | None = None

    @property
    def name(self) -> str:
        """How reports name the bundle: its level, and whether an imatrix calibrated it."""
        return self.decoder.level + (" +imatrix" if self.decoder.imatrix else "")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    spec: ModelSpec
    image: ImageSpec

    @property
    def details(self) -> BundleDetails:
        return typed_details(BundleDetails, self.manifest, self.path / MANIFEST_NAME)

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER_FILE

    @property
    def vision_dir(self) -> Path:
        return self.path / VISION_DIR

    @property
    def has_vision(self) -> bool:
        """False for a text-only bundle (made without `--vision`)."""
        return any(name.startswith(VISION_DIR + "/") for name in self.manifest.files)

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
        parts = [files.get(name, {}).get("sha256", "") for name in sorted(files) if name.startswith(VISION_DIR + "/")]
        parts.append(files.get("preprocessor_config.json", {}).get("sha256", ""))
        return ":".join(parts)


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


def write_bundle(target: Path, checkpoint: Checkpoint, decoder: Path, *, decoder_details: DecoderDetails,
                 imatrix: Path | None = None, vision_dir: Path | None = None,
                 inputs: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> Manifest:
    """Fill `target` (a fresh temporary directory; `decoder` is moved in) and write its manifest; the caller
    renames it into place."""
    shutil.move(str(decoder), target / DECODER_FILE)
    if imatrix is not None:
        shutil.copy2(imatrix, target / IMATRIX_FILE)
    for name in CHECKPOINT_FILES:
        source = checkpoint.path / name
        if not source.is_file():
            if name == "tokenizer_config.json":
                (target / name).write_text("{}\n", encoding="utf-8")
                continue
            raise ArtifactError(f"{name} is missing from the checkpoint", path=checkpoint.path)
        shutil.copy2(source, target / name)
    (target / TEMPLATE_FILE).write_text(checkpoint.chat_template, encoding="utf-8")
    vision = None
    if vision_dir is not None:
        vision_manifest = check_vision_dir(vision_dir)
        shutil.copytree(vision_dir, target / VISION_DIR)
        exported = typed_details(VisionDetails, vision_manifest, Path(vision_dir) / MANIFEST_NAME)
        vision = VisionRef(exported.precision, vision_manifest.inputs)
    manifest = Manifest(kind=KIND, inputs=inputs or {}, details=asdict(BundleDetails(decoder_details, vision)),
                        validation=validation or {})
    return write_manifest(target, manifest)


def load_bundle(directory: Path | str, *, verify: bool = True) -> Bundle:
    """Read and check a bundle. `verify=False` checks presence and sizes but skips hashing (fast start)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError("bundle directory not found", path=directory, fix="Pass the -o directory of `exaone-edge quantize`.")
    manifest = read_manifest(directory, kind=KIND, verify=False)
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
    data = read_json(path, path.name, fix=FIX)
    if not isinstance(data, dict):
        raise ArtifactError("expected a JSON object", path=path, fix=FIX)
    return data
