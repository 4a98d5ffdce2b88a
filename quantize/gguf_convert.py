"""EXAONE 4.5 decoder (safetensors) → GGUF for llama.cpp's `exaone4` architecture, one tensor at a time.

MTP policy: the multi-token-prediction head (`mtp.*`) is kept, as llama.cpp's own converter writes it
(quantize/gguf_mtp.py: block 64, block_count 65, nextn_predict_layers 1, so llama.cpp's decoder depth, and with
it the sliding-window switch, stays at 64). `run`/`serve --draft mtp` drafts with it; otherwise it is not loaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from exaone_edge import __version__
from exaone_edge.checkpoint import Checkpoint, open_checkpoint
from exaone_edge.errors import CheckpointError, InputError, require
from exaone_edge.files import atomic_path
from exaone_edge.progress import log, track
from exaone_edge.quantize.gguf_mtp import LAYER_PARTS, block_count, head_tensors
from exaone_edge.quantize.gguf_vocab import read_vocab, write_vocab
from exaone_edge.safetensors_stream import Piece, TensorInfo, ordered_map, pieces, read_layout, read_piece
from exaone_edge.spec import DecoderSpec

ARCH = "exaone4"
SWA_LAYERS = 64  # llama.cpp enables the sliding-window pattern for exaone4 only at this depth
OUT_TYPES = {"F32": 0, "F16": 1, "BF16": 32}  # llama_ftype of the whole file
META_SOURCE = "exaone_edge.source_checkpoint_sha256"
META_VERSION = "exaone_edge.toolkit_version"
META_MTP = "exaone_edge.mtp_policy"
_DECODER_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_SKIPPED_PREFIXES = ("model.visual.", "visual.", "mtp.", "model.mtp.")
_HEADROOM = 64 << 20  # bytes of free disk kept beyond the estimate
TOKENIZER_PROBES = (  # checked against the HF tokenizer after every conversion
    "Invoice INV-2024-0042: total due $18,232.50 (VAT 10%) by 2024-12-31.",
    "대한민국 헌법 제1조 ① 대한민국은 민주공화국이다. 합계 금액: 1,823,250원",
    "| 항목 | 수량 | 단가 |\n|---|---:|---:|\n| Widget | 3 | 1,200 |\n\n\tindented  spaces 0 12 123 1234 12345",
    "émojis 🚀📄 'quotes' \"double\" don't I'VE 3.14159 -42 ₩1,000,000",
)


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    qtype: str  # F32, F16 or BF16
    source: TensorInfo | None  # None: generated (rope_freqs)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * (4 if self.qtype == "F32" else 2)


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    out_type: str
    tensors: int
    bytes: int
    source_hash: str
    seconds: float
    mtp_policy: str
    tokenizer_check: dict


def convert_to_gguf(checkpoint_dir: Path, out_path: Path, out_type: str = "F16", workers: int | None = None
                    ) -> ConvertResult:
    """Write the decoder of an EXAONE 4.5 checkpoint as a GGUF file; atomic, streaming, pieces converted
    by `workers` threads (default: one per core, up to 8)."""
    require("gguf", "quantize")
    import gguf

    out_type = out_type.upper()
    if out_type not in OUT_TYPES:
        raise InputError(f"GGUF output type '{out_type}' is not one of {', '.join(OUT_TYPES)}")
    started = time.monotonic()
    checkpoint = open_checkpoint(Path(checkpoint_dir))
    decoder = checkpoint.spec.decoder
    check_swa_depth(decoder, checkpoint.path / "config.json")
    plan = plan_tensors(checkpoint, out_type)
    total = sum(_padded(t.nbytes) for t in plan) + (8 << 20)  # + metadata and tokenizer
    ensure_free_space(Path(out_path), total)
    source_hash = checkpoint_hash(checkpoint)
    vocab = read_vocab(checkpoint)

    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    _write_metadata(writer, gguf, checkpoint, out_type, source_hash)
    write_vocab(writer, vocab)
    for tensor in plan:
        raw = getattr(gguf.GGMLQuantizationType, tensor.qtype)
        writer.add_tensor_info(tensor.gguf_name, tensor.shape, np.dtype(np.float32 if tensor.qtype == "F32" else np.float16),
                               tensor.nbytes, raw_dtype=raw)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handle = writer.fout[0]
        finished = iter(track(plan, f"convert → {out_type}", total=len(plan)))
        for job, data in ordered_map(lambda job: _convert_piece(job, decoder), _jobs(plan), workers or _workers()):
            if job.first:
                writer.write_padding(handle, handle.tell())
            handle.write(np.ascontiguousarray(data).view(np.uint8).data)
            if job.last:
                writer.write_padding(handle, handle.tell())
                next(finished, None)
        handle.flush()
        writer.close()
        tokenizer_check = check_tokenizer(tmp, checkpoint)
    size = out_path.stat().st_size
    log(f"converted: {out_type}, {len(plan)} tensors, {size / 2**20:.1f} MiB, MTP head {mtp_policy(decoder)}")
    return ConvertResult(out_path, out_type, len(plan), size, source_hash, time.monotonic() - started,
                         mtp_policy(decoder), tokenizer_check)


def mtp_policy(decoder: DecoderSpec) -> str:
    """What the GGUF holds of the MTP head: "kept", or "none" when the checkpoint has none."""
    return "kept" if decoder.nextn_layers else "none"


def check_tokenizer(gguf_path: Path, checkpoint: Checkpoint) -> dict:
    """The written vocabulary must tokenize like the checkpoint's tokenizer.json (special tokens included)."""
    require("tokenizers", "quantize")
    from tokenizers import Tokenizer

    from exaone_edge.errors import ValidationFailed
    from exaone_edge.llama import tokenize as tokenize_with_gguf

    reference = Tokenizer.from_file(str(checkpoint.tokenizer_file))
    specials = [t.content for t in reference.get_added_tokens_decoder().values() if t.special][:12]
    texts = [*TOKENIZER_PROBES, "".join(f"{token}x " for token in specials)]
    ours = tokenize_with_gguf(gguf_path, texts)
    for text, ids in zip(texts, ours):
        expected = reference.encode(text, add_special_tokens=False).ids
        if ids != expected:
            raise ValidationFailed(f"llama.cpp tokenizes {text[:40]!r} differently from tokenizer.json "
                                   f"({len(ids)} vs {len(expected)} tokens)", path=checkpoint.tokenizer_file,
                                   fix="The pre-tokenizer mapping in quantize/gguf_vocab.py does not fit this tokenizer.")
    return {"texts": len(texts), "identical": True}


def _padded(n: int, align: int = 32) -> int:
    return (n + align - 1) // align * align


def check_swa_depth(decoder: DecoderSpec, source: Path) -> None:
    """llama.cpp silently runs every layer as global unless an exaone4 decoder has exactly 64 layers."""
    if "L" in decoder.pattern and decoder.num_layers != SWA_LAYERS:
        raise CheckpointError(
            f"the decoder has {decoder.num_layers} layers with sliding-window attention; llama.cpp's exaone4 "
            f"applies the window only at exactly {SWA_LAYERS} layers and would compute wrong outputs",
            path=source,
            fix="Convert a 64-layer EXAONE 4.5 decoder (the 33B model), or one without sliding-window layers.",
        )


def ensure_free_space(out_path: Path, needed: int) -> None:
    directory = out_path.parent if out_path.parent.exists() else _existing_parent(out_path)
    free = shutil.disk_usage(directory).free
    if free < needed + _HEADROOM:
        raise InputError(
            f"not enough disk space: the output needs about {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free",
            path=directory,
            fix="Free disk space or write the output to another disk.",
        )


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    """Fingerprint of what the decoder is made from: configs, tokenizer, template, shard headers and sizes.

    Hashing every weight byte of a 65 GB checkpoint would take minutes; a changed tensor changes
    its shard's header offsets or size in practice, and downloads are checked against the hub.
    """
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        path = checkpoint.path / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    digest.update(checkpoint.chat_template.encode())
    for shard in checkpoint.shards:
        with open(shard, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            digest.update(shard.name.encode() + handle.read(header_len))
        digest.update(str(shard.stat().st_size).encode())
    return digest.hexdigest()


def plan_tensors(checkpoint: Checkpoint, out_type: str) -> list[PlannedTensor]:
    """Every GGUF tensor with its source, shape and type, in file order; unknown decoder tensors are errors."""
    import gguf

    decoder = checkpoint.spec.decoder
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, block_count(decoder))
    stored: dict[str, TensorInfo] = {}
    for shard in checkpoint.shards:
        stored.update(read_layout(shard))
    planned: list[PlannedTensor] = []
    if _rope_factors(decoder) is not None:
        planned.append(PlannedTensor("rope_freqs.weight", (decoder.head_dim // 2,), "F32", None))
    for hf_name in sorted(stored, key=_layer_order):
        if hf_name.startswith(_SKIPPED_PREFIXES):
            continue
        short = _strip_prefix(hf_name)
        gguf_name = names.get_name(short, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise CheckpointError(f"decoder tensor '{hf_name}' has no GGUF name for arch {ARCH}",
                                  path=stored[hf_name].file, fix="Is this an EXAONE 4.5 checkpoint?")
        tensor = stored[hf_name]
        planned.append(_planned(gguf_name, tensor, out_type))
    if decoder.nextn_layers:
        planned.extend(_planned(name, tensor, out_type) for name, tensor in head_tensors(stored, decoder, checkpoint.path))
    required = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(decoder.num_layers) for part in LAYER_PARTS
    }
    missing = required - {t.gguf_name for t in planned}
    if missing:
        raise CheckpointError(f"{len(missing)} decoder tensors are missing (e.g. {sorted(missing)[0]})",
                              path=checkpoint.path, fix="Download the complete checkpoint.")
    if not decoder.tie_word_embeddings and "output.weight" not in {t.gguf_name for t in planned}:
        raise CheckpointError("lm_head.weight is missing and the embeddings are not tied", path=checkpoint.path)
    return planned


def _planned(gguf_name: str, tensor: TensorInfo, out_type: str) -> PlannedTensor:
    qtype = "F32" if (out_type == "F32" or len(tensor.shape) <= 1 or gguf_name.endswith("_norm.weight")) else out_type
    return PlannedTensor(gguf_name, tensor.shape, qtype, tensor)


def _strip_prefix(name: str) -> str:
    if name.startswith("lm_head."):
        return name
    for prefix in _DECODER_PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    return name


def _layer_order(name: str) -> tuple[int, str]:
    match = re.search(r"\.layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1, name
    return (0 if "embed" in name else 1 << 20), name


@dataclass(frozen=True)
class _Job:
    tensor: PlannedTensor
    piece: Piece | None  # None: a generated tensor, written whole
    first: bool
    last: bool


def _jobs(plan: list[PlannedTensor]) -> Iterator[_Job]:
    for tensor in plan:
        parts = pieces(tensor.source) if tensor.source is not None else [None]
        for index, piece in enumerate(parts):
            yield _Job(tensor, piece, index == 0, index == len(parts) - 1)


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _convert_piece(job: _Job, decoder: DecoderSpec) -> np.ndarray:
    if job.piece is None:
        factors = _rope_factors(decoder)
        assert factors is not None
        return factors.astype(np.float32)
    values = read_piece(job.piece)
    if job.tensor.qtype == "F32":
        return values.astype(np.float32)
    if job.tensor.qtype == "F16":
        half = values.astype(np.float16)  # bf16 → f16 directly: exact wherever f16 can hold the value
        if _overflowed(values, half):
            raise CheckpointError(f"'{job.piece.tensor.name}' has values beyond F16's range (±65504)",
                                  path=job.piece.tensor.file, fix="Convert with out_type BF16 or F32.")
        return half
    return values.astype(ml_dtypes.bfloat16)  # from f32: round to nearest even, as ggml does


def _overflowed(source: np.ndarray, half: np.ndarray) -> bool:
    """Finite source values that became ±inf in f16 (an integer test: numpy's f16 isfinite is scalar code)."""
    special = (half.view(np.uint16) & 0x7C00) == 0x7C00
    return bool(special.any()) and bool((special & np.isfinite(source.astype(np.float32))).any())


def _rope_factors(decoder: DecoderSpec) -> np.ndarray | None:
    """llama3 rope scaling as per-frequency divisors, the form llama.cpp reads from `rope_freqs.weight`."""
    rope = decoder.rope.get("full_attention", decoder.rope)
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    dim = decoder.head_dim
    base = float(rope.get("rope_theta", 10_000.0))
    factor = float(rope.get("factor", 16.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    wavelen = 2 * math.pi / freqs.astype(np.float64)
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high, 1.0,
        np.where(wavelen > old_context / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


def _write_metadata(writer, gguf, checkpoint: Checkpoint, out_type: str, source_hash: str) -> None:
    decoder = checkpoint.spec.decoder
    rope = decoder.rope.get("full_attention", decoder.rope)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(checkpoint.path.resolve().name)
    writer.add_block_count(block_count(decoder))
    if decoder.nextn_layers:
        writer.add_nextn_predict_layers(decoder.nextn_layers)
    writer.add_context_length(decoder.max_position_embeddings)
    writer.add_embedding_length(decoder.hidden_size)
    writer.add_feed_forward_length(decoder.intermediate_size)
    writer.add_head_count(decoder.num_heads)
    writer.add_head_count_kv(decoder.num_kv_heads)
    writer.add_key_length(decoder.head_dim)
    writer.add_value_length(decoder.head_dim)
    writer.add_rope_dimension_count(decoder.head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10_000.0)))
    writer.add_layer_norm_rms_eps(decoder.rms_norm_eps)
    writer.add_vocab_size(decoder.vocab_size)
    if decoder.sliding_window is not None and "L" in decoder.pattern:
        writer.add_sliding_window(decoder.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in decoder.layer_types])
    writer.add_file_type(OUT_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(META_SOURCE, source_hash)
    writer.add_string(META_VERSION, __version__)
    writer.add_string(META_MTP, mtp_policy(decoder))
