"""Load only the vision tower of an EXAONE 4.5 checkpoint, in float32, one tensor at a time.

The 32B decoder is never read: shards are memory-mapped and only `model.visual.*` tensors are
copied out, so export needs about the tower's fp32 size plus one tensor.
"""

from __future__ import annotations

from pathlib import Path

from exaone_edge.checkpoint import Checkpoint
from exaone_edge.errors import CheckpointError

PREFIXES = ("model.visual.", "visual.")


def vision_tensor_names(checkpoint: Checkpoint) -> dict[str, str]:
    """Module-relative name → stored name, for the vision tower only."""
    found = {}
    for name in checkpoint.tensors:
        for prefix in PREFIXES:
            if name.startswith(prefix):
                found[name[len(prefix):]] = name
    if not found:
        raise CheckpointError(
            "the checkpoint has no vision-tower tensors (model.visual.*)", path=checkpoint.path,
            fix="Export from the full EXAONE 4.5 checkpoint, not a text-only or decoder-only copy.",
        )
    return found


vision_tensors = vision_tensor_names


def load_vision_model(checkpoint: Checkpoint):
    """HF `Exaone4_5_VisionModel` in float32, eager attention, with the checkpoint's weights."""
    import torch
    from safetensors import safe_open
    from transformers import Exaone4_5_Config
    from transformers.models.exaone4_5.modeling_exaone4_5 import (
        Exaone4_5_VisionModel,
        Exaone4_5_VisionRotaryEmbedding,
    )

    names = vision_tensor_names(checkpoint)
    config = Exaone4_5_Config.from_pretrained(checkpoint.path).vision_config
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = Exaone4_5_VisionModel._from_config(config, dtype=torch.float32)
    model = model.to_empty(device="cpu").eval()
    params = dict(model.named_parameters())
    missing, unexpected = sorted(set(params) - set(names)), sorted(set(names) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"vision tensors do not fit vision_config (missing {missing[:3]}, unexpected {unexpected[:3]})",
            path=checkpoint.path, fix="Use the config.json that came with these weights.",
        )
    by_file: dict[Path, list[str]] = {}
    for name in params:
        by_file.setdefault(checkpoint.tensors[names[name]].file, []).append(name)
    with torch.no_grad():
        for file, members in by_file.items():
            with safe_open(str(file), framework="pt") as shard:
                for name in members:
                    tensor = shard.get_tensor(names[name])
                    if tuple(tensor.shape) != tuple(params[name].shape):
                        raise CheckpointError(
                            f"tensor '{names[name]}' has shape {tuple(tensor.shape)}, "
                            f"vision_config implies {tuple(params[name].shape)}", path=file,
                        )
                    params[name].copy_(tensor.to(torch.float32))
                    del tensor
        # non-persistent buffers were left empty on the meta device: recompute them
        inv_freq, _ = Exaone4_5_VisionRotaryEmbedding.compute_axial_rope_parameters(config)
        model.rotary_pos_emb.inv_freq = inv_freq
        model.rotary_pos_emb.original_inv_freq = inv_freq.clone()
    return model
