"""The checkpoint's tensors into torch modules, read on demand; the one loader of the vision tower.

Used by export (the tower to trace), quantize (calibration image rows) and validate (the layer-streamed
reference). Tensors are read with one positional read each into a fresh buffer, not memory-mapped, so a
tensor already used never counts against the process. torch and transformers are imported lazily: the
runtime never loads this module's dependencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint, open_checkpoint
from exaone_edge.errors import CheckpointError

VISION_PREFIXES = ("model.visual.", "visual.")
_READ_BYTES = 1 << 30  # one read() moves at most ~2 GiB on Linux


def vision_prefix(names: Any, path: Path | None = None) -> str:
    """The prefix under which this checkpoint stores its vision tower; an error if it has none."""
    for prefix in VISION_PREFIXES:
        if any(name.startswith(prefix) for name in names):
            return prefix
    raise CheckpointError(
        "the checkpoint has no vision-tower tensors (model.visual.*)", path=path,
        fix="Use the full EXAONE 4.5 checkpoint, not a text-only or decoder-only copy.",
    )


class ShardReader:
    """Every tensor of the checkpoint by name, read on demand (one positional read per tensor)."""

    def __init__(self, checkpoint: Checkpoint | Path) -> None:
        from exaone_edge.safetensors_stream import read_layout

        if not isinstance(checkpoint, Checkpoint):
            checkpoint = open_checkpoint(Path(checkpoint), read_weights=True)
        self.path = checkpoint.path
        self.layout = {}
        for shard in checkpoint.shards:
            self.layout.update(read_layout(shard))
        self.bytes_read = 0

    def names(self, prefix: str) -> list[str]:
        return [name for name in self.layout if name.startswith(prefix)]

    def read(self, name: str, dtype, device: str):
        import torch

        stored = self.layout[name]
        torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(stored.dtype)
        if torch_dtype is None:
            raise CheckpointError(f"tensor '{name}' has dtype {stored.dtype}; BF16, F16 or F32 is expected",
                                  path=stored.file)
        buffer = torch.empty(stored.nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        with open(stored.file, "rb", buffering=0) as handle:
            done = 0
            while done < stored.nbytes:
                handle.seek(stored.offset + done)
                got = handle.readinto(view[done:done + _READ_BYTES])
                if not got:
                    raise CheckpointError(f"tensor '{name}' is truncated", path=stored.file,
                                          fix="Download the shard again.")
                done += got
        self.bytes_read += stored.nbytes
        return buffer.view(torch_dtype).reshape(stored.shape).to(device=device, dtype=dtype)

    def load(self, module, prefix: str, dtype, device: str) -> None:
        """Materialise a meta module from the tensors under `prefix` (every parameter must be there, in its shape)."""
        expected = {name: tuple(param.shape) for name, param in module.named_parameters()}
        stored = {name[len(prefix):]: name for name in self.names(prefix)}
        missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"weights under '{prefix}' do not fit the config (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})", path=self.path,
                                  fix="Use the config.json that came with these weights.")
        for name, full in stored.items():
            if tuple(self.layout[full].shape) != expected[name]:
                raise CheckpointError(f"tensor '{full}' has shape {tuple(self.layout[full].shape)}, the config "
                                      f"implies {expected[name]}", path=self.layout[full].file,
                                      fix="Use the config.json that came with these weights.")
        state = {name: self.read(full, dtype, device) for name, full in stored.items()}
        module.load_state_dict(state, strict=False, assign=True)  # buffers are not stored


def load_vision_tower(checkpoint: Checkpoint | Path, dtype: Any = None, device: str = "cpu",
                      attention: str | None = None, reader: ShardReader | None = None):
    """transformers' `Exaone4_5_VisionModel` (tower + merger) with the checkpoint's weights, float32 by default.

    Only the vision tensors are read: the 32B decoder never is. `attention` picks transformers' attention
    implementation (export traces "eager")."""
    import torch
    from transformers import Exaone4_5_Config
    from transformers.models.exaone4_5.modeling_exaone4_5 import Exaone4_5_VisionModel

    reader = reader or ShardReader(checkpoint)
    prefix = vision_prefix(reader.layout, reader.path)
    config = Exaone4_5_Config.from_pretrained(reader.path).vision_config
    if attention:
        config._attn_implementation = attention
    dtype = dtype or torch.float32
    with torch.device("meta"):
        model = Exaone4_5_VisionModel._from_config(config, dtype=dtype)
    # The rotary table is a non-persistent buffer computed in __init__: build that module for real.
    model.rotary_pos_emb = type(model.rotary_pos_emb)(config).to(device)
    reader.load(model, prefix, dtype, device)
    return model.eval()
