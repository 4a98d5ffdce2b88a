"""The vision tower as an exportable torch module: HF's weights, geometry taken as inputs.

It reuses the submodules of `Exaone4_5_VisionModel` (patch embedding, blocks, merger) and computes
exactly what HF's forward does, but rotary tables, window order and attention boundaries arrive
as tensors (see exaone_edge.vision.geometry), so tracing records no grid-dependent control flow.
Linear layers are written as MatMul + Add so int8 QDQ and 4-bit MatMulNBits can quantize them.
Full-attention blocks are one fused attention node (export/attention.py); the graph encodes one image
per run, so their attention spans every patch, as HF's does for a single image.
"""

from __future__ import annotations

import torch
from torch import nn

from exaone_edge.export.attention import fused_attention


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    # weights stored [in, out] by VisionGraph(consume_weights=True); HF's [out, in] otherwise
    weight = layer.weight if getattr(layer, "transposed", False) else layer.weight.t()
    out = torch.matmul(x, weight)
    return out if layer.bias is None else out + layer.bias


def _transpose_in_place(visual: nn.Module) -> None:
    """Store every matmul weight as [in, out], one tensor at a time: the exporter then writes the
    weights as they are instead of constant-folding a transposed copy of each (1× less peak memory)."""
    with torch.no_grad():
        for module in visual.modules():
            if isinstance(module, nn.Linear) and not getattr(module, "transposed", False):
                module.weight = nn.Parameter(module.weight.t().contiguous(), requires_grad=False)
                module.transposed = True
        proj = visual.patch_embed.proj
        if not getattr(proj, "transposed", False):
            proj.weight = nn.Parameter(proj.weight.reshape(proj.weight.shape[0], -1).t().contiguous(),
                                       requires_grad=False)
            proj.transposed = True


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionGraph(nn.Module):
    def __init__(self, visual: nn.Module, *, consume_weights: bool = False) -> None:
        """`consume_weights`: re-lay HF's weights in place for export; `visual` no longer runs HF's forward."""
        super().__init__()
        config = visual.config
        if consume_weights:
            _transpose_in_place(visual)
        self.visual = visual
        self.hidden = config.hidden_size
        self.heads = config.num_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.unit = config.spatial_merge_size**2
        self.full_blocks = set(config.fullatt_block_indexes)

    def _qkv(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        n = x.shape[0]
        q, k, v = _linear(x, attn.qkv).split([attn.q_dim, attn.kv_dim, attn.kv_dim], dim=-1)
        q = q.reshape(n, self.heads, self.head_dim)
        k = k.reshape(n, self.kv_heads, self.head_dim)
        v = v.reshape(n, self.kv_heads, self.head_dim)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s, v

    def _attend(self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """q [B, L, heads, d], k/v [B, L, kv_heads, d], additive mask broadcast to [B, kv, groups, L, L]."""
        b, length = q.shape[0], q.shape[1]
        groups = self.heads // self.kv_heads
        # query heads j*groups … j*groups+groups-1 share kv head j (HF's repeat_kv), via broadcasting
        q = q.reshape(b, length, self.kv_heads, groups, self.head_dim).permute(0, 2, 3, 1, 4)
        k = k.permute(0, 2, 1, 3).unsqueeze(2)
        v = v.permute(0, 2, 1, 3).unsqueeze(2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling + mask
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, kv, groups, L, d]
        return out.permute(0, 3, 1, 2, 4).reshape(b * length, self.hidden)

    def _full_attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(attn, x, cos, sin)
        n, groups = x.shape[0], self.heads // self.kv_heads
        # the fused kernel wants as many kv heads as query heads: repeat each one `groups` times (HF's repeat_kv)
        k, v = (t.unsqueeze(2).expand(n, self.kv_heads, groups, self.head_dim).reshape(1, n, self.hidden) for t in (k, v))
        out = fused_attention(q.reshape(1, n, self.hidden), k, v, self.heads, attn.scaling)
        return _linear(out.reshape(n, self.hidden), attn.proj)

    def _window_attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          gather: torch.Tensor, scatter: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention inside each window, windows batched and padded to the longest one."""
        q, k, v = self._qkv(attn, x, cos, sin)
        out = self._attend(attn, q[gather], k[gather], v[gather], mask)
        return _linear(out[scatter], attn.proj)

    def _mlp(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _linear(mlp.act_fn(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)

    def forward(self, pixel_patches: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                window_index: torch.Tensor, reverse_index: torch.Tensor, window_gather: torch.Tensor,
                window_scatter: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        # Conv3d with kernel == stride over one patch is a matmul with the flattened kernel
        proj = visual.patch_embed.proj
        weight = proj.weight if getattr(proj, "transposed", False) else proj.weight.reshape(proj.weight.shape[0], -1).t()
        x = torch.matmul(pixel_patches, weight)
        n = x.shape[0]
        x = x.reshape(-1, self.unit, self.hidden)[window_index].reshape(n, self.hidden)
        # padding slots of the window layout (-1) read row 0 and are masked out as keys
        gather = torch.clamp(window_gather, min=0)
        zero, minus_inf = torch.zeros((), dtype=x.dtype), torch.full((), float("-inf"), dtype=x.dtype)
        window_mask = torch.where(window_gather >= 0, zero, minus_inf)[:, None, None, None, :]
        for index, block in enumerate(visual.blocks):
            h = block.norm1(x)
            if index in self.full_blocks:
                x = x + self._full_attention(block.attn, h, cos, sin)
            else:
                x = x + self._window_attention(block.attn, h, cos, sin, gather, window_scatter, window_mask)
            x = x + self._mlp(block.mlp, block.norm2(x))
        merger = visual.merger
        merged = merger.ln_q(x).reshape(-1, merger.hidden_size)
        merged = _linear(merged, merger.mlp[0])
        merged = _linear(merger.mlp[1](merged), merger.mlp[2])
        return merged[reverse_index]
