"""The per-image inputs of the vision graph, computed in numpy from the patch grid.

These are the data-dependent parts of the Qwen2.5-VL-style tower (2D rotary tables, window order and
window boundaries). Computing them here keeps the ONNX graph free of shape-driven
control flow, so one graph serves every page size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exaone_edge.spec import VisionSpec


Grid = tuple[int, int, int]


def rope_theta(vision_config: dict) -> float:
    params = vision_config.get("rope_parameters") or {}
    return float(params.get("rope_theta", vision_config.get("rope_theta", 10000.0)))


def position_ids(grids: Sequence[Grid], merge: int) -> np.ndarray:
    """(h, w) of every patch [n, 2], in the processor's merge-block-major patch order."""
    out = []
    for t, h, w in grids:
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
    return np.concatenate(out, axis=0)


def rotary(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [n, head_dim] float32: the h angles, then the w angles, repeated for both halves."""
    spatial = head_dim // 2
    inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial))))
    freqs = positions[..., None].astype(np.float32) * inv_freq.astype(np.float32)  # [n, 2, spatial/2]
    hw = np.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
    angles = np.concatenate([hw, hw], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def window_index(grids: Sequence[Grid], spec: VisionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Order of the merge units window by window, and each window's length in merge units."""
    merge = spec.spatial_merge_size
    size = spec.window_size // merge // spec.patch_size
    order, lengths, offset = [], [], 0
    for t, h, w in grids:
        llm_h, llm_w = h // merge, w // merge
        index = np.arange(t * llm_h * llm_w).reshape(t, llm_h, llm_w)
        pad_h, pad_w = size - llm_h % size, size - llm_w % size
        windows_h, windows_w = (llm_h + pad_h) // size, (llm_w + pad_w) // size
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        padded = padded.reshape(t, windows_h, size, windows_w, size).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, windows_h * windows_w, size * size)
        lengths.append((padded != -100).sum(-1).reshape(-1))
        flat = padded.reshape(-1)
        order.append(flat[flat != -100] + offset)
        offset += t * llm_h * llm_w
    return np.concatenate(order).astype(np.int64), np.concatenate(lengths).astype(np.int64)


def window_layout(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows as a padded [windows, longest] gather of sequence positions (-1 = padding), and where each
    position lands in that layout flattened: window blocks then cost O(n · window), not O(n²)."""
    lengths = lengths[lengths > 0]  # windows made only of padding hold no patch
    longest = int(lengths.max())
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(longest)
    gather = np.where(offsets < lengths[:, None], starts[:, None] + offsets, -1)
    window_of = np.repeat(np.arange(len(lengths)), lengths)
    scatter = window_of * longest + (np.arange(int(lengths.sum())) - np.repeat(starts, lengths))
    return gather.astype(np.int64), scatter.astype(np.int64)


def graph_inputs(grids: Sequence[Grid], spec: VisionSpec, theta: float) -> dict[str, np.ndarray]:
    """Every graph input except the pixels, for one still image (a one-element `grids`)."""
    if len(grids) != 1 or grids[0][0] != 1:
        # full-attention blocks span every patch of the run: two images (or frames) would see each other
        raise ValueError(f"the vision graph encodes one still image per run, got grids {list(grids)}")
    unit = spec.spatial_merge_size**2
    order, lengths = window_index(grids, spec)
    cos, sin = rotary(position_ids(grids, spec.spatial_merge_size), spec.head_dim, theta)
    permute = (lambda table: table.reshape(len(order), unit, -1)[order].reshape(len(order) * unit, -1))
    gather, scatter = window_layout(lengths * unit)
    return {
        "cos": np.ascontiguousarray(permute(cos)),
        "sin": np.ascontiguousarray(permute(sin)),
        "window_index": order,
        "reverse_index": np.argsort(order).astype(np.int64),
        "window_gather": gather,
        "window_scatter": scatter,
    }
