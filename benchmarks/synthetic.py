"""Checkpoint skeletons and seeded random weights: an EXAONE 4.5 checkpoint rebuilt without transformers.

A skeleton is a checkpoint folder without its weights: config, tokenizer, chat template, preprocessor config, and
`tensors.json` (every tensor's name, safetensors dtype and shape). `synthesize` draws weights for it from a seed
with numpy, as `exaone_edge.fixtures.tiny_model` initialises them (norms 1 + 0.2·N(0,1), biases and weights 0.02·N(0,1)),
and writes one safetensors file. The GPU check carries skeletons to a box whose transformers predates EXAONE 4.5,
and whose 64 MiB carry limit rules out real-width weights (the bench preset is 2.4 GB).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.files import OUTPUT_MARKER, atomic_dir
from exaone_edge.safetensors_stream import ordered_map

LAYOUT_FILE = "tensors.json"
WEIGHTS_FILE = "model.safetensors"
_NOT_COPIED = ("model.safetensors", "model.safetensors.index.json", OUTPUT_MARKER)
_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16)}
_CHUNK = 1 << 24  # values drawn at a time: 64 MiB of float32, whatever the tensor's size
NORM_JITTER = 0.2
WEIGHT_STD = 0.02  # transformers' initializer_range, as the tiny model's weights are drawn


def skeleton(checkpoint_dir: Path, out: Path) -> Path:
    """`checkpoint_dir` without its weights: every other file, and the tensors' layout in tensors.json."""
    checkpoint = open_checkpoint(Path(checkpoint_dir))
    layout = {name: {"dtype": info.dtype, "shape": list(info.shape)} for name, info in sorted(checkpoint.tensors.items())}
    with atomic_dir(Path(out), overwrite=True) as tmp:
        for path in sorted(checkpoint.path.iterdir()):
            if path.is_file() and not path.name.endswith(".safetensors") and path.name not in _NOT_COPIED:
                shutil.copy2(path, tmp / path.name)
        (tmp / LAYOUT_FILE).write_text(json.dumps(layout, indent=1) + "\n", encoding="utf-8")
    return Path(out)


def _is_norm(name: str) -> bool:
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    return name.endswith(".weight") and ("norm" in module or module.startswith("ln_"))


def _values(name: str, shape: tuple[int, ...], dtype: np.dtype, seed: int, index: int) -> list[bytes]:
    """The tensor's bytes, drawn in chunks from its own stream (seed, index): the same on every machine and order."""
    rng = np.random.default_rng([seed, index])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    scale, offset = (NORM_JITTER, 1.0) if _is_norm(name) else (WEIGHT_STD, 0.0)
    parts = []
    for start in range(0, count, _CHUNK):
        drawn = rng.standard_normal(min(_CHUNK, count - start), dtype=np.float32)
        drawn *= scale
        drawn += offset
        parts.append(drawn.astype(dtype).tobytes())
    return parts


def synthesize(skeleton_dir: Path, out: Path, seed: int = 0, skip_prefixes: tuple[str, ...] = (),
               workers: int = 8) -> Path:
    """A checkpoint folder from a skeleton: its files, and weights drawn from `seed` (tensors whose names start with
    `skip_prefixes` left out, e.g. a vision tower nobody will export)."""
    skeleton_dir = Path(skeleton_dir)
    layout = json.loads((skeleton_dir / LAYOUT_FILE).read_text(encoding="utf-8"))
    names = [name for name in layout if not name.startswith(skip_prefixes)]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        entry = layout[name]
        size = int(np.prod(entry["shape"], dtype=np.int64)) * _DTYPES[entry["dtype"]].itemsize
        header[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes
    with atomic_dir(Path(out), overwrite=True) as tmp:
        for path in skeleton_dir.iterdir():
            if path.is_file() and path.name not in (LAYOUT_FILE, OUTPUT_MARKER):
                shutil.copy2(path, tmp / path.name)
        with open(tmp / WEIGHTS_FILE, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)

            def draw(item: tuple[int, str]) -> list[bytes]:
                index, name = item
                entry = layout[name]
                return _values(name, tuple(entry["shape"]), _DTYPES[entry["dtype"]], seed, index)

            for _, parts in ordered_map(draw, list(enumerate(names)), workers):
                for part in parts:
                    handle.write(part)
    return Path(out)
