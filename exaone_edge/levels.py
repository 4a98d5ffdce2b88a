"""Quantization levels for the decoder: one table, shared by inspect, quantize and the memory planner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    name: str  # llama.cpp's name for the file type
    bits_per_weight: float  # typical average over a dense decoder; exact sizes come from real files
    needs_imatrix: bool = False


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level("F32", 32.0),
        Level("BF16", 16.0),
        Level("F16", 16.0),
        Level("Q8_0", 8.5),
        Level("Q6_K", 6.56),
        Level("Q5_K_M", 5.69),
        Level("Q4_K_M", 4.85, needs_imatrix=True),
        Level("Q4_K_S", 4.58, needs_imatrix=True),
        Level("IQ4_XS", 4.25, needs_imatrix=True),
    )
}


def estimated_bytes(params: int, level: str) -> int:
    return int(params * LEVELS[level].bits_per_weight / 8)
