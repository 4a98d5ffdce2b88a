"""Full attention as one fused ONNX node: ONNX Runtime's `com.microsoft.MultiHeadAttention`.

Written as matmul → softmax → matmul, a full-attention block holds a [heads, patches, patches] score
matrix: 3.4 GB in float32 for a 5,120-patch page of the released tower (32 heads). ORT's fused kernel
never holds it (flash attention on the CPU, memory-efficient attention on CUDA): on 4,096 patches × 32
heads the CPU kernel peaked 73 MiB above its inputs instead of 4.2 GB, and ran 8× faster.
The torch side is a custom op, so the dynamo exporter records one call that the translation table
below turns into the contrib node; its eager body (SDPA) only serves tracing.
"""

from __future__ import annotations

import torch

DOMAIN = "com.microsoft"


@torch.library.custom_op("exaone_edge::attention", mutates_args=())
def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
                    scale: float) -> torch.Tensor:
    """query/key/value [batch, length, heads·head_dim] (key/value already repeated to `heads`)."""
    batch, length, width = query.shape
    split = [t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (query, key, value)]
    out = torch.nn.functional.scaled_dot_product_attention(*split, scale=scale)
    return out.transpose(1, 2).reshape(batch, length, width)


@fused_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    return torch.empty_like(query)


def translation_table() -> dict:
    """For `torch.onnx.export(custom_translation_table=…)`: the custom op → MultiHeadAttention."""
    import onnxscript
    from onnx.defs import OpSchema

    # onnx has no schema for ORT's contrib ops; onnxscript needs one to emit the node
    schema = OpSchema(
        "MultiHeadAttention", DOMAIN, 1,
        inputs=[OpSchema.FormalParameter(name, "T") for name in ("query", "key", "value")],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
                    OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale")],
    )
    multi_head_attention = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), "MultiHeadAttention", schema)

    def translate(query, key, value, heads: int, scale: float):
        return multi_head_attention(query, key, value, num_heads=heads, scale=scale)

    return {torch.ops.exaone_edge.attention.default: translate}
