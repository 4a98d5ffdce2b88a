"""Decoder → GPTQ (GPTQModel) with document calibration, for vLLM / transformers on GPU servers.

The language model is quantized layer by layer on document pages *with their images* run through the
full VLM; the vision tower and the MTP head stay as they are (a `dynamic` rule tells loaders so).
The output is a GPTQ v1 checkpoint with `quantize_config.json`, the processor files beside it, and a
manifest whose validation block holds the KL divergence against the source model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.formats import GPTQ_KIND, GptqDetails
from exaone_edge.errors import InputError, require
from exaone_edge.files import atomic_dir, check_output_dir
from exaone_edge.manifest import Manifest, write_manifest
from exaone_edge.progress import log, stdout_to_stderr
from exaone_edge.quantize.gptq_vllm import write_vllm_parts
from exaone_edge.reference.kernels import eager_gptq_kernels
from exaone_edge.tensor_parallel import group_size_for_tp, supported_tp

GPTQ_BITS = (4, 8)
MIN_CALIBRATION = 4  # GPTQ's Hessians need several documents; real models want 128+
BUILTIN_DOCUMENTS = 8  # the generated set used without --calibration: 6 calibrate (≥ MIN_CALIBRATION), 2 judge
EVAL_FRACTION = 0.25
# Loaders (vLLM, transformers) must not expect quantized weights here.
KEEP_UNQUANTIZED = {"-:.*visual.*": {}, "-:.*mtp.*": {}}
PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json")
Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class GptqResult:
    path: Path
    bits: int
    group_size: int
    calibration_samples: int
    kl_mean: float
    top1_agreement: float
    bytes: int
    seconds: float
    tensor_parallel: tuple[int, ...] = ()  # vLLM tensor-parallel degrees the group size serves

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    def summary(self) -> str:
        return (f"{self.path}: GPTQ {self.bits}-bit, group size {self.group_size}, KL vs source {self.kl_mean:.3g}; "
                f"vLLM tensor parallel {', '.join(map(str, self.tensor_parallel))}")


def check_options(bits: int, group_size: int, in_features: list[int]) -> None:
    if bits not in GPTQ_BITS:
        raise InputError(f"--bits {bits} is not supported for GPTQ", fix="Use --bits 4 or --bits 8.")
    if group_size != -1 and group_size <= 0:
        raise InputError(
            f"--group-size {group_size} is invalid", fix="Use a positive group size such as 128, or -1 for per-channel."
        )
    bad = sorted({width for width in in_features if group_size > 0 and width % group_size})
    if bad:
        raise InputError(
            f"--group-size {group_size} does not divide the decoder's input widths {bad}",
            fix="Choose a group size that divides every projection's input width (e.g. 32, 64 or 128).",
        )


def document_conversations(documents) -> list[Conversation]:
    """One chat per document page with QA (question → reference answer), else page + its text."""
    conversations: list[Conversation] = []
    for doc in documents:
        if doc.qa:
            for qa in doc.qa:
                image = doc.page_image(qa.page)
                conversations.append(_chat(image, qa.question, qa.answers[0] if qa.answers else ""))
        elif doc.page_count:
            text = (doc.text or "").strip()[:2000]
            conversations.append(_chat(doc.page_image(0), "Transcribe this document page.", text))
    return conversations


def _chat(image, question: str, answer: str) -> Conversation:
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        # A string: the released template strips an assistant's content as text (a list of parts fails there).
        {"role": "assistant", "content": answer},
    ]


def _decoder_in_features(model_dir: Path) -> list[int]:
    checkpoint = open_checkpoint(model_dir, read_weights=True)
    return sorted({
        info.shape[1]
        for name, info in checkpoint.tensors.items()
        if name.startswith("model.language_model.layers.") and name.endswith("proj.weight") and len(info.shape) == 2
    })


def gptq_from_documents(model_dir: Path, out: Path, documents: Path | None = None, *, bits: int = 4,
                        group_size: int | None = None, tp: int = 1, overwrite: bool = False) -> GptqResult:
    """`exaone-edge quantize --format gptq`: a document set (default: the built-in one) split into calibration and
    held-out conversations, then `quantize_gptq`. The group size serves vLLM at `tp` GPUs: `group_size` is checked,
    or without it the largest that does is chosen (exaone_edge/tensor_parallel.py)."""
    from exaone_edge.documents import documents_or_builtin

    group_size = group_size_for_tp(open_checkpoint(model_dir, read_weights=False).spec.decoder, tp, group_size)
    check_options(bits, group_size, _decoder_in_features(model_dir))  # bad options fail before pages are made
    check_output_dir(Path(out), overwrite=overwrite, kind=GPTQ_KIND)
    document_set, _ = documents_or_builtin(documents, builtin=BUILTIN_DOCUMENTS, seed=0)
    calib, evals = document_set.split(eval_fraction=EVAL_FRACTION, seed=0)
    return quantize_gptq(model_dir, out, document_conversations(calib.documents), document_conversations(evals.documents),
                         bits=bits, group_size=group_size, calibration_hash=document_set.content_hash,
                         overwrite=overwrite)


def quantize_gptq(
    model_dir: Path,
    out: Path,
    calibration: list[Conversation],
    evaluation: list[Conversation],
    bits: int = 4,
    group_size: int = 128,
    calibration_hash: str | None = None,
    overwrite: bool = False,
) -> GptqResult:
    check_options(bits, group_size, _decoder_in_features(model_dir))
    check_output_dir(Path(out), overwrite=overwrite, kind=GPTQ_KIND)  # before the model loads
    if len(calibration) < MIN_CALIBRATION:
        raise InputError(
            f"the calibration set gives {len(calibration)} samples; GPTQ needs at least {MIN_CALIBRATION}",
            fix="Pass a larger --calibration set (documents with page images; 128+ for a real model).",
        )
    require("gptqmodel", "gptq")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    with stdout_to_stderr(), eager_gptq_kernels():
        return _quantize(Path(model_dir).resolve(), Path(out), calibration, evaluation, bits, group_size,
                         calibration_hash, overwrite)


def _quantize(model_dir: Path, out: Path, calibration: list[Conversation], evaluation: list[Conversation],
              bits: int, group_size: int, calibration_hash: str | None, overwrite: bool) -> GptqResult:
    started = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite, kind=GPTQ_KIND) as tmp:
        tmp = tmp.resolve()  # GPTQModel runs inside the scratch dir: relative paths would land there
        write_checkpoint(model_dir, tmp, calibration, bits, group_size)
        fidelity = gptq_fidelity(Path(model_dir), tmp, evaluation)
        log(f"gptq: KL vs source {fidelity['kl_mean']:.4g}, top-1 agreement {fidelity['top1_agreement']:.3f}")
        decoder = open_checkpoint(model_dir, read_weights=False).spec.decoder
        degrees = supported_tp(decoder, group_size)
        details = asdict(GptqDetails(bits, group_size, len(calibration), list(KEEP_UNQUANTIZED), list(degrees)))
        write_vllm_parts(tmp, Path(out), model_dir, decoder, details, fidelity)
        manifest = Manifest(
            kind=GPTQ_KIND,
            inputs={"source": str(model_dir), "calibration_sha256": calibration_hash},
            details=details,
            validation=fidelity,
        )
        write_manifest(tmp, manifest)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    return GptqResult(
        path=Path(out), bits=bits, group_size=group_size, calibration_samples=len(calibration),
        kl_mean=fidelity["kl_mean"], top1_agreement=fidelity["top1_agreement"], bytes=size,
        seconds=time.perf_counter() - started, tensor_parallel=degrees,
    )


def write_checkpoint(model_dir: Path, out: Path, calibration: list[Conversation], bits: int, group_size: int) -> None:
    """GPTQModel's load → quantize → save into the existing directory `out`, the processor files beside it."""
    from gptqmodel import GPTQModel, QuantizeConfig

    scratch = out / ".scratch"
    scratch.mkdir()
    config = QuantizeConfig(
        bits=bits, group_size=group_size, desc_act=False, sym=True, dynamic=KEEP_UNQUANTIZED,
        offload_to_disk=True, offload_to_disk_path=str(scratch / "offload"),
    )
    log(f"gptq: loading {model_dir} for {bits}-bit, group size {group_size}, {len(calibration)} samples")
    # GPTQModel writes its per-layer logs to ./logs; keep them out of the user's working directory.
    with contextlib.chdir(scratch):
        model = GPTQModel.load(str(model_dir), config)
        model.quantize(calibration, batch_size=1)
        model.save(str(out))
    del model
    shutil.rmtree(scratch, ignore_errors=True)
    for name in PROCESSOR_FILES:
        if not (out / name).exists() and (Path(model_dir) / name).exists():
            shutil.copy2(Path(model_dir) / name, out / name)


def gptq_fidelity(source: Path, quantized: Path, conversations: list[Conversation],
                  reference_cache: Path | None = None) -> dict[str, Any]:
    """KL and top-1 agreement over every position of each chat, images included, against the source's
    reference file. Both halves are layer-streamed (one decoder layer resident, whatever the layer count): the
    reference from the source (cached), the candidate from the GPTQ checkpoint, its Linears dequantized as each
    layer loads by GPTQModel's TorchLinear (exaone_edge/torch_weights.py `GptqShardReader`: its Triton kernel on
    CUDA, its torch code on the CPU)."""
    import numpy as np
    from transformers import AutoProcessor

    from exaone_edge.torch_weights import dequant_kernel
    from exaone_edge.reference.file import topk_fidelity
    from exaone_edge.reference.streamed import StreamedReference, chat_reference, conversation_inputs, resolve_placement

    if not conversations:
        raise InputError("no evaluation samples for the GPTQ fidelity check", fix="Use a set with at least 2 documents.")
    processor = AutoProcessor.from_pretrained(source)
    reference = chat_reference(source, processor, conversations, cache_dir=reference_cache)
    dtype, device = resolve_placement()  # as the reference: float32
    candidate = StreamedReference(quantized, processor_dir=source, dtype=dtype, device=device)
    chats = candidate.sequence_logits(conversation_inputs(processor, conversations))
    result = topk_fidelity(reference.entries, (np.concatenate(chunks) for chunks in chats))  # a chat at a time
    candidate.close()
    fidelity = {key: value for key, value in asdict(result).items() if not key.startswith("ppl")}
    return {**fidelity, "reference": f"layer-streamed transformers ({reference.details['dtype']}), top-k file",
            "candidate": f"layer-streamed, weights dequantized by GPTQModel's {dequant_kernel(device)} ({dtype})"}
