"""EXAONE 4.5's MTP head in GGUF, named as llama.cpp's own converter names it (conversion/exaone.py, 0c1e570).

The head becomes decoder block `num_hidden_layers` (blk.64 on the 33B): `mtp.layers.0.*` as an ordinary
EXAONE 4 layer, and `mtp.fc`, `mtp.pre_fc_norm_embedding`, `mtp.pre_fc_norm_hidden`, `mtp.norm` as
`nextn.eh_proj`, `nextn.enorm`, `nextn.hnorm`, `nextn.shared_head_norm` of every head block. `block_count`
counts the head (65) and `exaone4.nextn_predict_layers` (1) marks it, so llama.cpp's decoder depth stays 64
and its sliding-window switch stays on. llama.cpp loads the head only for an MTP context (load_mtp), with the
graph from patches/llama.cpp/0001-exaone4-mtp-graph.patch; the target never reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from exaone_edge.errors import CheckpointError
from exaone_edge.safetensors_stream import TensorInfo
from exaone_edge.spec import DecoderSpec

# mtp.<stem> → the NextN tensor llama.cpp reads, written for every head block
NEXTN_TENSORS = {
    "fc": "NEXTN_EH_PROJ",
    "pre_fc_norm_embedding": "NEXTN_ENORM",
    "pre_fc_norm_hidden": "NEXTN_HNORM",
    "norm": "NEXTN_SHARED_HEAD_NORM",
}
# Every EXAONE 4 block's tensors (the trunk's and the head's)
LAYER_PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "post_attention_norm",
               "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")


def block_count(decoder: DecoderSpec) -> int:
    return decoder.num_layers + decoder.nextn_layers


def head_blocks(decoder: DecoderSpec) -> range:
    return range(decoder.num_layers, block_count(decoder))


def head_tensors(stored: dict[str, TensorInfo], decoder: DecoderSpec, source: Path) -> list[tuple[str, TensorInfo]]:
    """(GGUF name, source tensor) for the head's tensors; a missing or unknown `mtp.*` tensor is an error."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, block_count(decoder))
    found: list[tuple[str, TensorInfo]] = []
    for hf_name in sorted(stored):
        short = hf_name.removeprefix("model.")
        if not short.startswith("mtp."):
            continue
        gguf_names = _gguf_names(short, decoder, names, gguf)
        if not gguf_names:
            raise CheckpointError(f"MTP tensor '{hf_name}' has no GGUF name for arch exaone4",
                                  path=stored[hf_name].file, fix="Is this an EXAONE 4.5 checkpoint?")
        found.extend((name, stored[hf_name]) for name in gguf_names)
    expected = {f"blk.{bid}.{part}.weight" for bid in head_blocks(decoder) for part in LAYER_PARTS} | {
        f"{gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)].format(bid=bid)}.weight"
        for bid in head_blocks(decoder) for kind in NEXTN_TENSORS.values()
    }
    missing = expected - {name for name, _ in found}
    if missing:
        raise CheckpointError(f"{len(missing)} MTP head tensors are missing (e.g. {sorted(missing)[0]})", path=source,
                              fix="Download the checkpoint's MTP shard (config.json's num_nextn_predict_layers "
                                  "says it has a head).")
    return found


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
