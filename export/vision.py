"""`exaone-edge export`: the vision tower + merger of an EXAONE 4.5 checkpoint → one ONNX graph, validated."""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from exaone_edge.budgets import EXPORT_INT8_CALIBRATION_PAGES
from exaone_edge.errors import InputError, ValidationFailed, require
from exaone_edge.files import atomic_dir, check_output_dir, sha256_file
from exaone_edge.manifest import Manifest, write_manifest
from exaone_edge.progress import log
from exaone_edge.spec import image_spec, vision_spec
from exaone_edge.vision.contract import (
    COPIED_FROM_CHECKPOINT,
    DATA_SUFFIX,
    FUSED_ATTENTION,
    GRAPH_FILE,
    INPUT_NAMES,
    KIND,
    OUTPUT_NAME,
    VALIDATION_PAGES,
    VisionDetails,
)
from exaone_edge.vision.geometry import graph_inputs, rope_theta
from exaone_edge.vision.preprocess import preprocess

from exaone_edge.export import checklist
from exaone_edge.export.checklist import TOLERANCES, PageCheck

PRECISIONS = tuple(TOLERANCES)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    precision: str
    checks: list[PageCheck]
    bytes_on_disk: int
    seconds: float
    manifest: Manifest

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "precision": self.precision, "bytes": self.bytes_on_disk,
                "seconds": round(self.seconds, 2), "validation": self.manifest.validation}

    def summary(self) -> str:
        verdict = "passed" if all(c.ok for c in self.checks) else "FAILED"
        worst = min(c.mean_row_cosine for c in self.checks)
        return (f"wrote {self.path}: {self.precision} vision graph, {self.bytes_on_disk / 2**20:.1f} MiB; validation "
                f"{verdict} on {len(self.checks)} page sizes (worst mean row cosine {worst:.6f}, max|Δ| "
                f"{max(c.max_abs for c in self.checks):.2e}) in {self.seconds:.0f} s")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unsupported precision '{precision}'", fix=f"Choose one of: {', '.join(PRECISIONS)}.")
    return precision


def calibration_pages(images: Iterable[Image.Image] | None, source: str, limit: int = EXPORT_INT8_CALIBRATION_PAGES
                      ) -> list[Image.Image]:
    pages = [] if images is None else [image for _, image in zip(range(limit), images)]
    if not pages:
        raise InputError(f"the calibration set {source} has no page images",
                         fix="int8 needs document pages: pass --calibration with a folder of PDFs/images or a "
                             "set from `exaone-edge docs make`.")
    return pages


def export_vision(model_dir: Path, out: Path, *, precision: str = "fp32",
                  calibration: Path | Iterable[Image.Image] | None = None, calibration_source: str = "",
                  overwrite: bool = False, pages: tuple[tuple[str, tuple[int, int]], ...] = VALIDATION_PAGES) -> ExportResult:
    """Export, convert to `precision`, validate against PyTorch; raises ValidationFailed on a missed tolerance.

    int8 calibrates on `calibration`: page images, or a document set / folder (default: a generated set)."""
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.torch_weights import vision_prefix

    check_precision(precision)
    check_output_dir(Path(out), overwrite=overwrite, kind=KIND)  # before minutes of loading and tracing
    for module in ("torch", "transformers", "onnx"):
        require(module, "export")
    started = time.perf_counter()
    checkpoint = open_checkpoint(Path(model_dir))
    vision_prefix(checkpoint.tensors, checkpoint.path)  # a checkpoint without a vision tower fails here, before torch loads
    if precision == "int8" and (calibration is None or isinstance(calibration, (str, Path))):
        calibration, calibration_source = document_pages(calibration)
    calib = calibration_pages(calibration, calibration_source or "given") if precision == "int8" else []
    spec, theta = checkpoint.spec.vision, rope_theta(checkpoint.config["vision_config"])
    weight_bytes = 4 * spec.params

    samples = [(name, size, checklist.page_image(size, seed)) for seed, (name, size) in enumerate(pages)]
    log(f"loading the vision tower ({spec.params / 1e6:.1f}M parameters, {weight_bytes / 2**20:.0f} MiB in float32)")
    model, references = _reference(checkpoint, samples)

    with atomic_dir(Path(out), overwrite=overwrite, kind=KIND) as tmp:
        import onnx

        from exaone_edge.export import onnx_graph, precision as convert

        work = tmp / ".work"
        (work / "fp32").mkdir(parents=True)
        external = onnx_graph.needs_external_data(weight_bytes)
        log("exporting to ONNX (dynamic patch axis) and optimizing it for ONNX Runtime")
        example = _feeds(checklist.page_image((640, 480), 0), checkpoint, theta)
        onnx_graph.trace_to_onnx(model, example, work / "fp32" / GRAPH_FILE, weight_bytes)
        del model
        gc.collect()
        onnx.checker.check_model(str(work / "fp32" / GRAPH_FILE))
        for name in COPIED_FROM_CHECKPOINT:
            shutil.copy2(checkpoint.path / name, tmp / name)
        if precision == "fp32":
            for file in (work / "fp32").iterdir():
                shutil.move(file, tmp / file.name)
        else:
            log(f"converting to {precision}")
            feeds = (_feeds(page, checkpoint, theta) for page in calib)  # one page's patches at a time
            convert.CONVERTERS[precision](work / "fp32" / GRAPH_FILE, tmp / GRAPH_FILE, feeds=feeds, external=external)
        shutil.rmtree(work)

        checks = _validate(tmp, precision, samples, references)
        validation = checklist.summary(precision, checks)
        if calib:
            validation["calibration"] = {"source": calibration_source, "pages": len(calib)}
        details = VisionDetails(precision=precision, spec=checkpoint.config["vision_config"],
                                graph=onnx_graph.graph_io(tmp / GRAPH_FILE), image=vars_of(checkpoint.image),
                                external_data=(tmp / (GRAPH_FILE + DATA_SUFFIX)).exists(), attention=FUSED_ATTENTION)
        inputs = {"checkpoint": str(checkpoint.path), "config_sha256": sha256_file(checkpoint.path / "config.json"),
                  "shards": {shard.name: shard.stat().st_size for shard in checkpoint.shards
                             if any(t.file == shard and t.name.startswith(("model.visual.", "visual."))
                                    for t in checkpoint.tensors.values())}}
        if not validation["passed"]:
            failed = [c.page for c in checks if not c.ok]
            raise ValidationFailed(
                f"{precision} vision graph missed its tolerance against PyTorch on {', '.join(failed)}",
                path=out, fix="Nothing was written. See the checklist above; try a higher precision.",
            )
        manifest = write_manifest(tmp, Manifest(kind=KIND, inputs=inputs, details=asdict(details), validation=validation))
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
    return ExportResult(Path(out), precision, checks, size, time.perf_counter() - started, manifest)


def vars_of(spec: Any) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in vars(spec).items()}


def _feeds(image: Image.Image, checkpoint, theta: float) -> dict[str, np.ndarray]:
    patches, grid = preprocess(image, checkpoint.image)
    return {"pixel_patches": patches, **graph_inputs([grid], checkpoint.spec.vision, theta)}


def _reference(checkpoint, samples) -> tuple[Any, list[np.ndarray]]:
    """The export wrapper and HF's own forward on every validation page (one set of weights for both)."""
    import torch

    from exaone_edge.torch_weights import load_vision_tower

    # SDPA, transformers' default: eager attention would hold [32 heads, patches, patches] scores and their softmax,
    # 69 GB at the released 16,384-patch page limit; PyTorch's CPU flash kernel holds none.
    model = load_vision_tower(checkpoint, attention="sdpa")
    references = []
    with torch.no_grad():
        for name, size, image in samples:
            patches, grid = preprocess(image, checkpoint.image)
            out = model(torch.from_numpy(patches), grid_thw=torch.tensor([grid])).pooler_output
            references.append(out.float().numpy())
    return model, references


def _validate(directory: Path, precision: str, samples, references) -> list[PageCheck]:
    from exaone_edge.vision.encoder import session

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))["vision_config"]
    spec = vision_spec(config, directory / "config.json")
    pre_path = directory / "preprocessor_config.json"
    images = image_spec(json.loads(pre_path.read_text(encoding="utf-8")), pre_path)
    runner = session(directory / GRAPH_FILE)  # what the runtime will run: same optimization level
    checks = []
    for (name, size, image), want in zip(samples, references):
        patches, grid = preprocess(image, images)
        feeds = {"pixel_patches": patches, **graph_inputs([grid], spec, rope_theta(config))}
        (got,) = runner.run([OUTPUT_NAME], {key: feeds[key] for key in INPUT_NAMES})
        check = checklist.compare(name, size, grid, np.asarray(got, dtype=np.float32), want, TOLERANCES[precision])
        log(checklist.format_line(check))
        checks.append(check)
    return checks


def document_pages(path: Path | None) -> tuple[Iterable[Image.Image], str]:
    """Page images of a document set or folder (a small generated set when none is given), lazily."""
    from exaone_edge.documents import documents_or_builtin

    documents, source = documents_or_builtin(path, builtin=8, seed=0)

    def pages() -> Iterable[Image.Image]:
        for document in documents.documents:
            for index in range(document.page_count):
                yield document.page_image(index)

    return pages(), source
