"""A quantized decoder against its F16 source, through llama.cpp: KL divergence and top-1 agreement per position.

Only one model is mapped at a time (for the 33B, F16 is 65 GB and Q4_K_M 20 GB): the reference's logits
at every evaluation position are computed first into a scratch file (positions × vocabulary float32,
memory-mapped, so RAM does not grow with it), the reference is closed, then the candidate is opened and
compared batch by batch; prompts beyond the scratch budget take further passes. The scratch file holds
full rows, so the numbers are exact, not a top-k approximation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from exaone_edge.budgets import LLAMA_GPU_RESERVE
from exaone_edge.device import describe_gpu_layers
from exaone_edge.errors import ArtifactError
from exaone_edge.llama import ALL_LAYERS, gpu_memory
from exaone_edge.llama_context import LlamaContext, reference_options
from exaone_edge.progress import log

# Reference logits kept per pass. EXAONE 4.5's 153,600-token vocabulary makes a position 0.6 MB, so this holds
# about 27,000 positions; more prompts than that take several passes, each reopening both models (reading the
# F16 GGUF again costs far less than decoding it).
SCRATCH_BYTES = 16 * 2**30
# GPU memory kept free beside the offloaded layers: CUDA context and cuBLAS workspace, and the compute buffer, whose
# [512 × 153,600] float32 logits alone are 0.3 GB.


def layers_that_fit(gguf_path: Path, free_bytes: int, n_ctx: int) -> int:
    """llama.cpp's `n_gpu_layers` for the model to fit `free_bytes` of GPU memory beside LLAMA_GPU_RESERVE, with its f32 KV
    cache of `n_ctx` positions, the MTP head not loaded (imatrix and KL never load it). llama.cpp's rule
    (exaone_edge.device.gpu_layer_split, from src/llama-model.cpp `load_tensors`): N puts the output layer and the
    last N - 1 blocks on the GPU, the MTP blocks a file keeps being the last; unloaded, they take no memory and no KV
    (the target context's cache filters them out). So the output layer is counted first (0 when it does not fit:
    then nothing goes to the GPU), then the MTP blocks for free, then layers from the last one down. While any
    repeating layer stays in host memory, its matmuls over ≥ 32 rows still run on the GPU on a copy of one weight at
    a time (op offload), so room for the largest repeating weight is kept too. ALL_LAYERS when everything fits (the
    F16 33B is 65 GB: on a 24 GB card about a third of it)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    trunk, head = _blocks(reader.fields)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def number(key: str) -> int:
        return int(reader.fields[f"{arch}.{key}"].parts[-1][0])

    kv_heads, heads = number("attention.head_count_kv"), number("attention.head_count")
    head_dim = number("attention.key_length") if f"{arch}.attention.key_length" in reader.fields else \
        number("embedding_length") // heads
    kv_per_layer = n_ctx * 2 * kv_heads * head_dim * 4
    layers: dict[int, int] = {}
    output, largest = 0, 0
    for tensor in reader.tensors:
        if tensor.name.startswith("blk."):
            index = int(tensor.name.split(".")[1])
            if index >= trunk:  # an MTP block: not loaded
                continue
            layers[index] = layers.get(index, 0) + int(tensor.n_bytes)
            largest = max(largest, int(tensor.n_bytes))
        elif tensor.name.startswith("output"):  # output.weight and output_norm
            output += int(tensor.n_bytes)
    if free_bytes - LLAMA_GPU_RESERVE >= output + sum(layers.values()) + kv_per_layer * len(layers):
        return ALL_LAYERS
    room = free_bytes - LLAMA_GPU_RESERVE - largest - output
    if room < 0:
        return 0
    count = 1 + head  # the output layer, then the MTP blocks
    for index in sorted(layers, reverse=True):
        room -= layers[index] + kv_per_layer
        if room < 0:
            break
        count += 1
    return count


def _blocks(fields) -> tuple[int, int]:
    """(repeating layers, MTP blocks) of a GGUF file, from its fields: `block_count` counts both,
    `<arch>.nextn_predict_layers` the MTP blocks."""
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    field = fields.get(f"{arch}.nextn_predict_layers")
    head = int(field.parts[-1][0]) if field is not None else 0
    return int(fields[f"{arch}.block_count"].parts[-1][0]) - head, head


def default_gpu_layers(gguf_path: Path, n_ctx: int) -> int:
    """`--gpu-layers` default for imatrix and KL: as many layers as fit the GPU's free memory; none without a GPU."""
    memory = gpu_memory()
    if memory is None:
        return 0
    layers = layers_that_fit(gguf_path, memory[0], n_ctx)
    from gguf import GGUFReader

    what = describe_gpu_layers(layers, *_blocks(GGUFReader(str(gguf_path)).fields))
    log(f"llama.cpp: {what} of {gguf_path.name} on the GPU, n_gpu_layers {layers} "
        f"({memory[0] / 2**30:.1f} GiB free; --gpu-layers to choose)")
    return layers


def context_for(gguf_path: Path, prompts: Sequence[Sequence], gpu_layers: int | None = None,
                threads: int | None = None):
    """(options, lengths): a reference context that holds the longest prompt (a multiple of 256 positions)."""
    lengths = [sum(len(segment) for segment in prompt) for prompt in prompts]
    n_ctx = (max(lengths) + 255) // 256 * 256
    layers = default_gpu_layers(Path(gguf_path), n_ctx) if gpu_layers is None else gpu_layers
    return reference_options(n_ctx, n_gpu_layers=layers, n_threads=threads), lengths


@dataclass(frozen=True)
class Comparison:
    kl: np.ndarray  # KL(reference ‖ candidate) per position
    top1: np.ndarray  # the two argmaxes agree, per position


def compare_decoders(reference: Path, candidate: Path, prompts: Sequence[Sequence], *, scratch_dir: Path,
                     gpu_layers: int | None = None, threads: int | None = None,
                     scratch_bytes: int = SCRATCH_BYTES) -> Comparison:
    """KL and top-1 agreement at every position of `prompts`, in passes whose reference logits fit `scratch_bytes`
    (each pass opens the reference, then the candidate; one pass unless the prompts are many). `gpu_layers` is the
    F16 reference's; the candidate, far smaller, gets as many layers as fit once the reference is closed (every
    one on a 24 GB card, as plan --stages assumes), or none when `gpu_layers` is 0."""
    options, lengths = context_for(reference, prompts, gpu_layers, threads)
    candidate_options = None
    firsts = np.cumsum([0, *lengths])
    kls: list[np.ndarray] = []
    agree: list[np.ndarray] = []
    start = 0
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".kl-") as tmp:
        while start < len(prompts):
            with LlamaContext(reference, options) as llama:
                n_vocab = llama.n_vocab
                stop = start + 1  # at least one prompt a pass, then as many as the budget holds
                while stop < len(prompts) and (firsts[stop + 1] - firsts[start]) * n_vocab * 4 <= scratch_bytes:
                    stop += 1
                saved = np.lib.format.open_memmap(Path(tmp) / "reference-logits.npy", mode="w+", dtype=np.float32,
                                                  shape=(int(firsts[stop] - firsts[start]), n_vocab))
                for index in range(start, stop):
                    def keep(first: int, rows: np.ndarray, base: int = int(firsts[index] - firsts[start])) -> None:
                        saved[base + first:base + first + len(rows)] = rows
                    llama.evaluate(prompts[index], keep)
                saved.flush()
            if candidate_options is None:  # measured once the reference is closed: its GPU memory is free again
                layers = 0 if options.n_gpu_layers == 0 else default_gpu_layers(Path(candidate), options.n_ctx)
                candidate_options = replace(options, n_gpu_layers=layers)
            with LlamaContext(candidate, candidate_options) as llama:  # opened only after the reference is closed
                if llama.n_vocab != n_vocab:
                    raise ArtifactError(f"the candidate has {llama.n_vocab} tokens, its reference {n_vocab}",
                                        path=candidate, fix="Quantize from the same F16 GGUF.")
                for index in range(start, stop):
                    def compare(first: int, rows: np.ndarray, base: int = int(firsts[index] - firsts[start])) -> None:
                        kl, same = kl_rows(saved[base + first:base + first + len(rows)], rows)
                        kls.append(kl)
                        agree.append(same)
                    llama.evaluate(prompts[index], compare)
            saved = None  # unmapped before the next pass rewrites the file, and before its directory goes
            start = stop
    return Comparison(np.concatenate(kls), np.concatenate(agree))


def kl_rows(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL(softmax(reference) ‖ softmax(candidate)) per row, and whether the argmaxes agree."""
    from exaone_edge.metrics import kl_per_row

    return kl_per_row(reference, candidate), np.asarray(reference).argmax(-1) == candidate.argmax(-1)
