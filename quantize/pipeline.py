"""`exaone-edge quantize`: checkpoint → F16 GGUF → importance matrix on documents → llama.cpp quant → bundle.

Intermediates live in a work directory beside the output, each with a sidecar recording the hash
of its inputs and of itself: a rerun reuses a valid F16 GGUF or imatrix made from the same inputs,
and redoes one that is partial, corrupt or stale. Every final file is written under a temporary
name and renamed, so an interrupted run never leaves a file that looks finished. A `--work-dir` is shared with
the user: only files with our sidecar are replaced or removed, and the folder itself only if a run of ours made it.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge import __version__
from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.errors import InputError, ValidationFailed, require
from exaone_edge.files import (atomic_dir, check_output_dir, close_work_dir, inputs_digest, open_work_dir, scratch_dir,
                               sha256_file, write_json)
from exaone_edge.levels import estimated_bytes
from exaone_edge.metrics import LogitFidelity
from exaone_edge.progress import log
from exaone_edge.quantize.calibration import CalibrationSample, samples_hash
from exaone_edge.quantize.recipes import Recipe, choose_recipe

IMATRIX_SETTINGS = {"collector": "cb_eval Σx² per column (llama-imatrix rule)", "max_positions": 4096, "version": 1}
EVAL_MAX_POSITIONS = 1024  # per prompt, for the KL check against F16
BUILTIN_EVAL = [  # text-only fallback when no held-out documents are given
    CalibrationSample(None, "What is the total amount due on invoice INV-2024-0042, including VAT?"),
    CalibrationSample(None, "계약서 제3조에 따른 위약금과 지급 기한을 표로 정리해 주세요."),
    CalibrationSample(None, "Summarise the balance sheet: total assets 1,234,567; liabilities 456,789; equity?"),
]


@dataclass(frozen=True)
class VersusF16:
    """The quantized decoder against its F16 source on held-out prompts (bundle manifest: decoder_vs_f16)."""

    prompts: int
    prompts_with_images: int
    logits: LogitFidelity

    def to_dict(self) -> dict[str, Any]:
        return {"reference": "F16", "prompts": self.prompts, "prompts_with_images": self.prompts_with_images,
                "positions": self.logits.positions, "kl_mean": self.logits.kl_mean, "kl_p99": self.logits.kl_p99,
                "kl_max": self.logits.kl_max, "top1_agreement": self.logits.top1_agreement}


@dataclass(frozen=True)
class QuantizeResult:
    bundle: Path
    level: str
    bits_per_weight: float
    decoder_bytes: int
    imatrix: Path | None
    seconds: float
    peak_rss_bytes: int
    fidelity: VersusF16
    reused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "level": self.level, "bits_per_weight": self.bits_per_weight,
                "decoder_bytes": self.decoder_bytes, "imatrix": str(self.imatrix) if self.imatrix else None,
                "seconds": round(self.seconds, 2), "peak_rss_bytes": self.peak_rss_bytes,
                "fidelity": self.fidelity.to_dict(), "reused": self.reused}

    def summary(self) -> str:
        kl = self.fidelity.logits.kl_mean
        return (f"{self.bundle}: {self.level} {self.decoder_bytes / 2**20:.1f} MiB, {self.bits_per_weight:.2f} bits/weight, "
                f"KL vs F16 {kl:.2e}, {self.seconds:.1f} s, peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB")


def work_dir_for(out: Path, work_dir: Path | None = None) -> Path:
    """Where a run's intermediates live: `--work-dir`, or a hidden folder beside the output."""
    return Path(work_dir) if work_dir else out.parent / f".{out.name}.work"


def quantize_gguf(checkpoint_dir: Path, out: Path, *, bits: int | None = None, recipe: str | None = None,
                  calibration: Path | None = None, imatrix: bool = True, work_dir: Path | None = None,
                  **options: Any) -> QuantizeResult:
    """`exaone-edge quantize --format gguf`: the level from bits/recipe, calibration pages from a document set (or
    the built-in one) when the level is imatrix-calibrated, then `quantize_checkpoint`."""
    from exaone_edge.bundle import KIND as BUNDLE
    from exaone_edge.quantize.calibration import load_calibration

    chosen = choose_recipe(bits, recipe, imatrix)  # a bad --bits/--recipe fails before any loading
    check_output_dir(Path(out), overwrite=options.get("overwrite", False), kind=BUNDLE)  # before the pages are made
    calib = load_calibration(calibration) if chosen.uses_imatrix else None
    try:
        return quantize_checkpoint(
            checkpoint_dir, out, recipe=chosen.level, calibration=calib.calibration if calib else None,
            evaluation=calib.evaluation if calib else None, calibration_hash=calib.content_hash if calib else None,
            work_dir=work_dir, imatrix=imatrix, **options)
    except KeyboardInterrupt:
        work = work_dir_for(Path(out), work_dir)
        # one unwrapped line (log() wraps): people and scripts grep for it
        sys.stderr.write(f"interrupted: {out} was not written; finished steps in {work} are reused by the next run\n")
        raise


def quantize_checkpoint(
    checkpoint_dir: Path,
    out: Path,
    *,
    bits: int | None = None,
    recipe: str | None = None,
    calibration: Sequence[CalibrationSample] | None = None,
    evaluation: Sequence[CalibrationSample] | None = None,
    calibration_hash: str | None = None,
    vision_dir: Path | None = None,
    work_dir: Path | None = None,
    keep_work: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    imatrix: bool = True,
    gpu_layers: int | None = None,  # decoder layers on the GPU for imatrix and KL; None: as many as fit
) -> QuantizeResult:
    require("gguf", "quantize")
    require("llama_cpp", "quantize")
    from exaone_edge.bundle import KIND as BUNDLE, DecoderDetails, check_vision_dir, directory_bytes, write_bundle
    from exaone_edge.quantize.gguf_convert import checkpoint_hash, ensure_free_space, mtp_policy, plan_tensors

    started = time.monotonic()
    chosen = choose_recipe(bits, recipe, imatrix)
    checkpoint = open_checkpoint(Path(checkpoint_dir))
    out = Path(out)
    check_output_dir(out, overwrite=overwrite, kind=BUNDLE)
    if vision_dir is not None:
        check_vision_dir(vision_dir)
    if chosen.uses_imatrix and not calibration:
        raise InputError(f"{chosen.level} is calibrated with an importance matrix, but no calibration pages were given",
                         fix="Pass --calibration SET (a document set or a folder of page images).")
    if evaluation is None:
        calibration, evaluation = split_samples(calibration)
    work = work_dir_for(out, work_dir)
    source_hash = checkpoint_hash(checkpoint)
    f16_path, f16_inputs = (work / "decoder-F16.gguf",
                          {"checkpoint": source_hash, "toolkit": __version__, "mtp": mtp_policy(checkpoint.spec.decoder)})
    intermediates = [f16_path, work / "imatrix.gguf"] if chosen.uses_imatrix else [f16_path]
    for path in intermediates:
        _claim(path)
    plan = plan_tensors(checkpoint, "F16")
    f16_bytes = sum(t.nbytes for t in plan)
    params = sum(math.prod(t.shape) for t in plan)
    f16_ready = _valid(f16_path, f16_inputs)
    quantized_bytes = estimated_bytes(params, chosen.level)
    work_needs = quantized_bytes + (0 if f16_ready else f16_bytes)
    out_needs = directory_bytes(vision_dir) + quantized_bytes
    if _device(work) == _device(out):
        ensure_free_space(out, work_needs + out_needs - quantized_bytes)  # the decoder is renamed, not copied
    else:
        ensure_free_space(work / "x", work_needs)
        ensure_free_space(out, out_needs)
    open_work_dir(work)
    reused: list[str] = []

    vision = _VisionOnce(checkpoint, vision_dir)
    f16 = _cached(f16_path, f16_inputs, lambda tmp: _convert(checkpoint.path, tmp), "F16 GGUF", reused, f16_ready)
    imatrix_path = None
    calib_hash = calibration_hash or (samples_hash(calibration) if calibration else None)
    if chosen.uses_imatrix:
        assert calibration is not None and calib_hash is not None
        imatrix_inputs = {"decoder": _sidecar(f16)["sha256"], "calibration": calib_hash, "rows": vision.source,
                          **IMATRIX_SETTINGS}
        imatrix_path = _cached(work / "imatrix.gguf", imatrix_inputs,
                               lambda tmp: _collect(checkpoint, vision, f16, calibration, calib_hash, tmp, threads, gpu_layers),
                               "importance matrix", reused)
    log(f"quantize: {chosen.level} with llama.cpp{' and the importance matrix' if imatrix_path else ''}")
    with scratch_dir(work, "quantize") as scratch:  # this run's own files: gone on exit, swept after a kill
        quantized = scratch / f"decoder-{chosen.level}.gguf"
        _quantize(f16, quantized, chosen, imatrix_path, threads)
        fidelity = _fidelity(checkpoint, vision, f16, quantized, evaluation, threads, gpu_layers)
        if not np.isfinite(fidelity.logits.kl_mean):
            raise ValidationFailed(f"{chosen.level} decoder produces non-finite logits", path=quantized)
        decoder_bytes = quantized.stat().st_size
        decoder_details = DecoderDetails(
            level=chosen.level, bits_per_weight=round(decoder_bytes * 8 / params, 3), bytes=decoder_bytes,
            imatrix=imatrix_path is not None, mtp=mtp_policy(checkpoint.spec.decoder))
        inputs = {"checkpoint_sha256": source_hash, "calibration_sha256": calib_hash if imatrix_path else None,
                  "toolkit_version": __version__}
        with atomic_dir(out, overwrite=overwrite, kind=BUNDLE) as tmp:
            write_bundle(tmp, checkpoint, quantized, decoder_details=decoder_details, imatrix=imatrix_path, vision_dir=vision_dir,
                         inputs=inputs, validation={"decoder_vs_f16": fidelity.to_dict()})
    if not keep_work:
        _remove_intermediates(work, intermediates)
    result = QuantizeResult(out, chosen.level, decoder_details.bits_per_weight, decoder_bytes,
                            out / "imatrix.gguf" if imatrix_path else None, time.monotonic() - started,
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, fidelity, reused)
    return result  # the CLI prints result.summary() as the one summary line


# -- cached intermediates ---------------------------------------------------------------------------

def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _sidecar(path: Path) -> dict[str, Any]:
    return json.loads(_sidecar_path(path).read_text(encoding="utf-8"))


def _ours(path: Path) -> bool:
    """Whether `path` (or its sidecar) was made by a run of ours: the sidecar records its inputs and checksum."""
    try:
        record = _sidecar(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"inputs", "bytes", "sha256"} <= record.keys()


def _claim(path: Path) -> None:
    """Refuse to replace a file at an intermediate's name that no run of ours made (the user's own, in --work-dir)."""
    if (path.exists() or _sidecar_path(path).exists()) and not _ours(path):
        raise InputError(f"the work folder holds {path.name} or {_sidecar_path(path).name}, which exaone-edge did not "
                         "make; nothing was changed", path=path.parent, fix="Move it away, or pass another --work-dir.")


def _remove_intermediates(work: Path, paths: list[Path]) -> None:
    """Delete our intermediates (this run's or an earlier run's, known by their sidecar), never anything else."""
    for path in paths:
        if _ours(path):
            path.unlink(missing_ok=True)
            _sidecar_path(path).unlink(missing_ok=True)
    close_work_dir(work)


def _valid(path: Path, inputs: dict[str, Any]) -> bool:
    """True when `path` exists, was made from `inputs`, and still has the bytes recorded when it was made."""
    try:
        record = _sidecar(path)
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("inputs") != inputs_digest(inputs) or not path.is_file():
        return False
    return path.stat().st_size == record.get("bytes") and sha256_file(path) == record.get("sha256")


def _cached(path: Path, inputs: dict[str, Any], make: Callable[[Path], None], what: str, reused: list[str],
            known_valid: bool | None = None) -> Path:
    if known_valid if known_valid is not None else _valid(path, inputs):
        log(f"reusing {what}: {path} (same inputs, checksum verified)")
        reused.append(what)
        return path
    from exaone_edge.files import atomic_path

    _claim(path)
    with atomic_path(path) as tmp:
        make(tmp)
        # The record goes first: a kill before the rename leaves a record that does not match (redone next time),
        # never a file without one (which would look like the user's own).
        write_json(_sidecar_path(path), {"inputs": inputs_digest(inputs), "bytes": tmp.stat().st_size,
                                         "sha256": sha256_file(tmp), "made_by": "exaone-edge quantize"})
    return path


def _device(path: Path) -> int:
    """The filesystem a path is (or will be) on: that of its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.stat().st_dev
    return -1


# -- stages -----------------------------------------------------------------------------------------

def _convert(checkpoint_dir: Path, tmp: Path) -> None:
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    log("convert: checkpoint → F16 GGUF")
    convert_to_gguf(checkpoint_dir, tmp, "F16")


def split_samples(samples: Sequence[CalibrationSample] | None) -> tuple[list[CalibrationSample] | None, list[CalibrationSample]]:
    """Hold out every 4th sample (at least one) for the KL check; too few samples: built-in text prompts."""
    if not samples or len(samples) < 2:
        return (list(samples) if samples else None), list(BUILTIN_EVAL)
    held = set(range(3, len(samples), 4)) or {len(samples) - 1}
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


class _VisionOnce:
    """Where page rows come from, loaded on first use and shared by calibration and evaluation: the exported
    ONNX encoder when one is bundled (exactly what serving feeds the decoder), else the PyTorch tower."""

    def __init__(self, checkpoint, vision_dir: Path | None) -> None:
        self.checkpoint, self.vision_dir, self._rows = checkpoint, vision_dir, None

    @property
    def source(self) -> str:
        if self.vision_dir is None:
            return "pytorch vision tower"
        from exaone_edge.manifest import read_manifest

        files = read_manifest(self.vision_dir, verify=False).files
        return "onnx " + ":".join(entry["sha256"] for _, entry in sorted(files.items()))

    def builder(self, samples: Sequence[CalibrationSample]):
        from exaone_edge.quantize.calibration import PromptBuilder, VisionRows

        if self._rows is None and any(sample.image is not None for sample in samples):
            if self.vision_dir is not None:
                from exaone_edge.device import choose_placement
                from exaone_edge.vision import VisionEncoder

                # On the GPU when ONNX Runtime has a working CUDA provider, as run/serve place it: a 1,280-row page is
                # ~14 TFLOP, ≥ 23 s on 8 CPU cores against ≥ 0.1 s on an RTX 4090 (plan --stages counts the GPU).
                providers = choose_placement(has_vision=True, gpu_offload=False).providers
                self._rows = VisionEncoder(self.vision_dir, list(providers)).encode
            else:
                self._rows = VisionRows(self.checkpoint)
        return PromptBuilder(self.checkpoint, self._rows)


def _collect(checkpoint, vision: _VisionOnce, f16: Path, samples, calib_hash: str, tmp: Path, threads: int | None,
             gpu_layers: int | None) -> None:
    from exaone_edge.quantize.calibration import build_prompts
    from exaone_edge.quantize.imatrix import collect_imatrix, save_imatrix

    with_images = sum(sample.image is not None for sample in samples)
    rows_from = "the exported ONNX encoder" if vision.vision_dir else "the PyTorch vision tower"
    log(f"imatrix: {len(samples)} calibration prompts ({with_images} with page images, rows from {rows_from})")
    prompts = build_prompts(vision.builder(samples), samples, IMATRIX_SETTINGS["max_positions"])
    imatrix = collect_imatrix(f16, prompts, [f"exaone-edge documents sha256:{calib_hash[:16]}"], threads, gpu_layers)
    save_imatrix(imatrix, tmp, chunk_size=max(sum(len(s) for s in p) for p in prompts))


def _quantize(f16: Path, target: Path, recipe: Recipe, imatrix_path: Path | None, threads: int | None) -> None:
    from exaone_edge.quantize.imatrix import load_imatrix
    from exaone_edge.quantize.llama_quantize import quantize_tensors

    values = load_imatrix(imatrix_path).values() if imatrix_path else None
    quantize_tensors(f16, target, recipe, values, threads)


def _fidelity(checkpoint, vision: _VisionOnce, f16: Path, quantized: Path, samples: Sequence[CalibrationSample],
              threads: int | None = None, gpu_layers: int | None = None) -> VersusF16:
    """KL(F16 ‖ quantized) at every position of held-out prompts (page rows included); one model mapped at a time,
    the F16 logits kept in a scratch file beside the candidate (quantize/llama_eval.py)."""
    from exaone_edge.quantize.calibration import build_prompts
    from exaone_edge.quantize.llama_eval import compare_decoders

    with_images = sum(sample.image is not None for sample in samples)
    log(f"validate: KL of the quantized decoder vs F16 on {len(samples)} held-out prompts ({with_images} with images)")
    prompts = build_prompts(vision.builder(samples), samples, EVAL_MAX_POSITIONS)
    result = compare_decoders(f16, quantized, prompts, scratch_dir=quantized.parent, gpu_layers=gpu_layers,
                              threads=threads)
    return VersusF16(len(prompts), with_images, LogitFidelity.from_rows(result.kl, result.top1))
