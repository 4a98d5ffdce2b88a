"""EXAONE 4.5's MTP head in GGUF, named as llama.cpp's own converter names it (conversion/exaone.py, 0c1e570).

The head becomes decoder block `num_hidden_layers` (blk.64 on the 33B): `mtp.layers.0.*` as an ordinary
EXAONE 4 layer, and `mtp.fc`, `mtp.pre_fc_norm_embedding`, `mtp.pre_fc_norm_hidden`, `mtp.norm` as
`nextn.eh_proj`, `nextn.enorm`, `nextn.hnorm`, `nextn.shared_head_norm` of every head block. `block_count`
counts the head (65) and `exaone4.nextn_predict_layers` (1) marks it, so llama.cpp's decoder depth stays 64
and its sliding-window switch stays on. llama.cpp runs the head only in an MTP context, with the graph
from patches/llama.cpp/0001-exaone4-mtp-graph.patch.

`mtp_tensor_plan` is what the converter adds to its plan; `add_mtp_head` gives a GGUF converted without
the head (F32, F16 or BF16: quantize afterwards) its head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.errors import CheckpointError, InputError, require
from exaone_edge.files import atomic_path
from exaone_edge.progress import log
from exaone_edge.quantize.gguf_convert import ARCH, META_MTP, OUT_TYPES, PlannedTensor
from exaone_edge.safetensors_stream import TensorInfo, iter_f32_chunks, read_layout
from exaone_edge.spec import DecoderSpec

# mtp.<stem> → the NextN tensor llama.cpp reads, written for every head block
NEXTN_TENSORS = {
    "fc": "NEXTN_EH_PROJ",
    "pre_fc_norm_embedding": "NEXTN_ENORM",
    "pre_fc_norm_hidden": "NEXTN_HNORM",
    "norm": "NEXTN_SHARED_HEAD_NORM",
}
LAYER_PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "post_attention_norm",
               "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")
F16_MAX = 65504.0


def block_count(decoder: DecoderSpec) -> int:
    return decoder.num_layers + decoder.nextn_layers


def head_blocks(decoder: DecoderSpec) -> range:
    return range(decoder.num_layers, block_count(decoder))


def mtp_tensor_plan(stored: dict[str, TensorInfo], decoder: DecoderSpec, out_type: str) -> list[PlannedTensor]:
    """The head's GGUF tensors with their sources; a missing or unknown `mtp.*` tensor is an error."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, block_count(decoder))
    planned: list[PlannedTensor] = []
    for hf_name in sorted(stored):
        short = hf_name.removeprefix("model.")
        if not short.startswith("mtp."):
            continue
        gguf_names = _gguf_names(short, decoder, names, gguf)
        if not gguf_names:
            raise CheckpointError(f"MTP tensor '{hf_name}' has no GGUF name for arch {ARCH}",
                                  path=stored[hf_name].file, fix="Is this an EXAONE 4.5 checkpoint?")
        tensor = stored[hf_name]
        qtype = "F32" if out_type == "F32" or len(tensor.shape) <= 1 else out_type
        planned.extend(PlannedTensor(name, tensor.shape, qtype, tensor) for name in gguf_names)
    expected = {f"blk.{bid}.{part}.weight" for bid in head_blocks(decoder) for part in LAYER_PARTS} | {
        f"{gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)].format(bid=bid)}.weight"
        for bid in head_blocks(decoder) for kind in NEXTN_TENSORS.values()
    }
    missing = expected - {t.gguf_name for t in planned}
    if missing:
        raise CheckpointError(f"{len(missing)} MTP head tensors are missing (e.g. {sorted(missing)[0]})",
                              fix="Download the checkpoint's MTP shard, or convert without the head.")
    return planned


def _gguf_names(short: str, decoder: DecoderSpec, names, gguf) -> list[str]:
    layer = re.fullmatch(r"mtp\.layers\.(\d+)\.(.+)", short)
    if layer:
        index = int(layer.group(1))
        if index >= decoder.nextn_layers:
            return []
        name = names.get_name(f"model.layers.{decoder.num_layers + index}.{layer.group(2)}",
                              try_suffixes=(".weight", ".bias"))
        return [name] if name else []
    stem, _, suffix = short.removeprefix("mtp.").rpartition(".")
    kind = NEXTN_TENSORS.get(stem)
    if kind is None:
        return []
    template = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)]
    return [f"{template.format(bid=bid)}.{suffix}" for bid in head_blocks(decoder)]


@dataclass(frozen=True)
class MtpHeadResult:
    path: Path
    head_tensors: int
    bytes: int


def add_mtp_head(gguf_path: Path, checkpoint_dir: Path, out_path: Path) -> MtpHeadResult:
    """Copy `gguf_path` (converted from `checkpoint_dir` without its head) to `out_path` with the head added."""
    require("gguf", "quantize")
    import gguf

    checkpoint = open_checkpoint(Path(checkpoint_dir))
    decoder = checkpoint.spec.decoder
    if decoder.nextn_layers == 0:
        raise CheckpointError("the checkpoint has no MTP head (num_nextn_predict_layers is 0)",
                              path=checkpoint.path / "config.json")
    reader = gguf.GGUFReader(gguf_path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    _check_source(fields, decoder, Path(gguf_path))
    out_type = {code: name for name, code in OUT_TYPES.items()}[fields["general.file_type"]]
    stored: dict[str, TensorInfo] = {}
    for shard in checkpoint.shards:
        stored.update(read_layout(shard))
    head = mtp_tensor_plan(stored, decoder, out_type)

    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    skipped = {"general.architecture", f"{ARCH}.block_count", META_MTP}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skipped:
            continue
        writer.add_key_value(name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    writer.add_block_count(block_count(decoder))
    writer.add_nextn_predict_layers(decoder.nextn_layers)
    writer.add_string(META_MTP, "kept")
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.n_bytes,
                               raw_dtype=tensor.tensor_type)
    for tensor in head:
        dtype = np.dtype(np.float32 if tensor.qtype == "F32" else np.float16)
        writer.add_tensor_info(tensor.gguf_name, tensor.shape, dtype, tensor.nbytes,
                               raw_dtype=getattr(gguf.GGMLQuantizationType, tensor.qtype))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handle = writer.fout[0]
        for tensor in reader.tensors:
            writer.write_padding(handle, handle.tell())
            handle.write(np.ascontiguousarray(tensor.data).view(np.uint8).data)
        for tensor in head:
            writer.write_padding(handle, handle.tell())
            for chunk in iter_f32_chunks(tensor.source):
                handle.write(_cast(chunk, tensor).data)
        writer.write_padding(handle, handle.tell())
        handle.flush()
        writer.close()
    size = out_path.stat().st_size
    log(f"MTP head added: {len(head)} tensors as blocks {head_blocks(decoder).start}–{block_count(decoder) - 1}, "
        f"{size / 2**20:.1f} MiB")
    return MtpHeadResult(out_path, len(head), size)


def _check_source(fields: dict, decoder: DecoderSpec, path: Path) -> None:
    if fields.get("general.architecture") != ARCH:
        raise InputError(f"not an {ARCH} GGUF (architecture {fields.get('general.architecture')!r})", path=path)
    if f"{ARCH}.nextn_predict_layers" in fields:
        raise InputError("the GGUF already has an MTP head", path=path)
    if fields.get(f"{ARCH}.block_count") != decoder.num_layers:
        raise InputError(f"the GGUF has {fields.get(f'{ARCH}.block_count')} blocks, the checkpoint's decoder "
                         f"{decoder.num_layers}", path=path, fix="Pass the checkpoint the GGUF was converted from.")
    if fields.get("general.file_type") not in OUT_TYPES.values():
        raise InputError("the GGUF is quantized", path=path,
                         fix="Add the head to the F32/F16/BF16 conversion, then quantize that (with its head).")


def _cast(chunk: np.ndarray, tensor: PlannedTensor) -> np.ndarray:
    if tensor.qtype == "F32":
        return np.ascontiguousarray(chunk, dtype=np.float32)
    if tensor.qtype == "F16":
        if chunk.size and float(np.abs(chunk).max()) > F16_MAX:
            raise CheckpointError(f"'{tensor.source.name}' has values beyond F16's range (±65504)",
                                  path=tensor.source.file, fix="Convert with out_type BF16 or F32.")
        return np.ascontiguousarray(chunk, dtype=np.float16)
    return np.ascontiguousarray(chunk.astype(ml_dtypes.bfloat16))
