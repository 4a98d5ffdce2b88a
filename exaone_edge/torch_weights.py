"""The checkpoint's tensors into torch modules, read on demand; the one loader of the vision tower.

Used by export (the tower to trace), quantize (calibration image rows) and validate (the layer-streamed
reference, and a GPTQ checkpoint read as the dense model it encodes). Tensors are read with one positional read each into a fresh buffer, not memory-mapped, so a
tensor already used never counts against the process. torch and transformers are imported lazily: the
runtime never loads this module's dependencies.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint, open_checkpoint, read_json
from exaone_edge.errors import CheckpointError

VISION_PREFIXES = ("model.visual.", "visual.")
GPTQ_CONFIG = "quantize_config.json"  # beside a GPTQ checkpoint's shards
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

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.layout[name].shape)

    def read(self, name: str, dtype=None, device: str = "cpu"):
        """One tensor on `device`, cast to `dtype`; None keeps the stored dtype (the only way to read I32)."""
        import torch

        stored = self.layout[name]
        torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                       "I32": torch.int32}.get(stored.dtype)
        if torch_dtype is None:
            raise CheckpointError(f"tensor '{name}' has dtype {stored.dtype}; BF16, F16, F32 or I32 is expected",
                                  path=stored.file)
        if not torch_dtype.is_floating_point and dtype not in (None, torch_dtype):
            raise CheckpointError(f"tensor '{name}' holds integers ({stored.dtype}): it is read as stored, "
                                  f"not as {dtype}", path=stored.file)
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
        return buffer.view(torch_dtype).reshape(stored.shape).to(device=device, dtype=dtype or torch_dtype)

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
            if self.shape(full) != expected[name]:
                raise CheckpointError(f"tensor '{full}' has shape {self.shape(full)}, the config implies "
                                      f"{expected[name]}", path=self.path,
                                      fix="Use the config.json that came with these weights.")
        state = {name: self.read(full, dtype, device) for name, full in stored.items()}
        module.load_state_dict(state, strict=False, assign=True)  # buffers are not stored


def load_vision_tower(checkpoint: Checkpoint | Path, dtype: Any = None, device: str = "cpu",
                      attention: str | None = None, reader: ShardReader | None = None):
    """transformers' `Exaone4_5_VisionModel` (tower + merger) with the checkpoint's weights, float32 by default.

    Only the vision tensors are read: the 32B decoder never is. `attention` picks transformers' attention
    implementation (export's reference runs "sdpa": no score matrix)."""
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


class GptqShardReader(ShardReader):
    """A GPTQ checkpoint read as the dense model it encodes; norms, embeddings, head, vision and MTP as stored.

    A quantized Linear's `weight` is made when it is read, from its qweight / qzeros / scales / g_idx, by
    GPTQModel's `TorchLinear.dequantize_weight` (after GPTQModel's v1 → v2 zero-point shift): on CUDA GPTQModel 7.7
    runs its Triton kernel there (`triton_utils/dequant.py`, unless GPTQ_TORCH_TRITON_DEQUANT=0), on the CPU its
    torch code (`dequantize_weight_cached_248`), the weight transformers multiplies by on the CPU; kept as the
    kernel's [in, out] layout, transposed."""

    PARTS = ("qweight", "qzeros", "scales", "g_idx")

    def __init__(self, checkpoint) -> None:
        super().__init__(checkpoint)
        self.quantization = read_json(self.path / GPTQ_CONFIG, "GPTQ quantize_config.json")
        checkpoint_format = self.quantization.get("checkpoint_format") or self.quantization.get("format")
        overrides = {rule: kept for rule, kept in (self.quantization.get("dynamic") or {}).items() if kept}
        if checkpoint_format not in ("gptq", "gptq_v2") or overrides:  # "-:" rules (modules left dense) are fine
            raise CheckpointError(f"GPTQ format '{checkpoint_format}' with per-module overrides {overrides} is not "
                                  "supported here", path=self.path,
                                  fix="Use a checkpoint written by `exaone-edge quantize --format gptq`.")
        self.v1_zeros = checkpoint_format == "gptq"
        self.packed = {name[:-len("qweight")] + "weight": name[:-len("qweight")]
                       for name in self.layout if name.endswith(".qweight")}
        self.parts = {module + part for module in self.packed.values() for part in self.PARTS}

    def names(self, prefix: str) -> list[str]:
        return ([name for name in super().names(prefix) if name not in self.parts]  # a packed Linear's bias stays
                + [name for name in self.packed if name.startswith(prefix)])

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.packed:
            return super().shape(name)
        module = self.packed[name]
        return (self.layout[module + "qweight"].shape[1], self.layout[module + "g_idx"].shape[0])

    def load(self, module, prefix: str, dtype, device: str) -> None:
        super().load(module, prefix, dtype, device)
        gc.collect()  # TorchLinear refers to itself (`weight` shim): else its tensors stay for layers (+0.1 GiB each)

    def read(self, name: str, dtype=None, device: str = "cpu"):
        if name not in self.packed:
            return super().read(name, dtype, device)
        import torch
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

        (out_features, in_features), q = self.shape(name), self.quantization
        bits, pack_dtype = q["bits"], getattr(torch, q.get("pack_dtype", "int32"))
        linear = TorchLinear(bits=bits, group_size=q["group_size"], sym=q["sym"], desc_act=q["desc_act"], bias=False,
                             in_features=in_features, out_features=out_features, pack_dtype=pack_dtype,
                             register_buffers=False)  # the checkpoint's tensors are set just below
        for part in self.PARTS:
            setattr(linear, part, super().read(self.packed[name] + part, None, device))  # int32 / fp16 as stored
        if self.v1_zeros:
            convert_gptq_v1_to_v2_format_module(linear, bits=bits, pack_dtype=pack_dtype)
        weight = linear.eval().dequantize_weight()  # [in, out] in the scales' dtype (see dequant_kernel), not compiled
        return weight.t().to(dtype=dtype or weight.dtype)


def dequant_kernel(device: str) -> str:
    """Which code of GPTQModel 7.7's TorchLinear.dequantize_weight makes a GPTQ weight on `device` (for reports)."""
    return "Triton dequant kernel" if device.startswith("cuda") else "torch dequantization"


def open_weights(model_dir: Path) -> ShardReader:
    """The checkpoint's tensors; a GPTQ checkpoint (with quantize_config.json) as the dense model it encodes."""
    return GptqShardReader(model_dir) if (Path(model_dir) / GPTQ_CONFIG).is_file() else ShardReader(model_dir)
