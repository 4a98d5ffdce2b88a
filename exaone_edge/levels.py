"""Quantization levels for the decoder: one table, shared by inspect, quantize and the memory planner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    name: str  # llama.cpp's name for the file type
    bits_per_weight: float  # typical average over a dense decoder; exact sizes come from real files
    bits: int  # the nominal width it is known by (`--bits`, report groups)


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level("F32", 32.0, 32),
        Level("BF16", 16.0, 16),
        Level("F16", 16.0, 16),
        Level("Q8_0", 8.5, 8),
        Level("Q6_K", 6.56, 6),
        Level("Q5_K_M", 5.69, 5),
        Level("Q4_K_M", 4.85, 4),
        Level("Q4_K_S", 4.58, 4),
        Level("IQ4_XS", 4.25, 4),
    )
}
VISION_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}  # the vision export's precisions


def estimated_bytes(params: int, level: str) -> int:
    return int(params * LEVELS[level].bits_per_weight / 8)
