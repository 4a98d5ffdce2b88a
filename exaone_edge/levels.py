"""Quantization levels for the decoder: one table, shared by inspect, quantize and the memory planner."""

from __future__ import annotations

from dataclasses import dataclass

# Bits per weight of the ggml tensor types below (block bytes × 8 / block elements).
GGML_TYPE_BITS = {"F32": 32.0, "BF16": 16.0, "F16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5,
                  "IQ4_XS": 4.25}


@dataclass(frozen=True)
class Level:
    name: str  # llama.cpp's name for the file type
    bits_per_weight: float  # typical average over a dense decoder; exact sizes come from real files
    bits: int  # the nominal width it is known by (`--bits`, report groups)
    # token_embd's type: llama.cpp's quantizer leaves it at the file type's base type for these levels
    # (src/llama-quant.cpp, llama_tensor_get_type: only IQ1/IQ2/IQ3_XXS/TQ levels pick another).
    embedding_type: str


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level("F32", 32.0, 32, "F32"),
        Level("BF16", 16.0, 16, "BF16"),
        Level("F16", 16.0, 16, "F16"),
        Level("Q8_0", 8.5, 8, "Q8_0"),
        Level("Q6_K", 6.56, 6, "Q6_K"),
        Level("Q5_K_M", 5.69, 5, "Q5_K"),
        Level("Q4_K_M", 4.85, 4, "Q4_K"),
        Level("Q4_K_S", 4.58, 4, "Q4_K"),
        Level("IQ4_XS", 4.25, 4, "IQ4_XS"),
    )
}
VISION_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int8w": 8, "int4": 4}  # the vision export's precisions


def estimated_bytes(params: int, level: str) -> int:
    return int(params * LEVELS[level].bits_per_weight / 8)


def embedding_bytes(vocab_size: int, hidden_size: int, level: str) -> int:
    """The token-embedding table (token_embd) at the type `level` stores it in."""
    return int(vocab_size * hidden_size * GGML_TYPE_BITS[LEVELS[level].embedding_type] / 8)
