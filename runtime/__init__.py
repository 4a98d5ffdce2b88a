"""The deployment runtime: bundle loading, prompt assembly, ONNX vision + llama.cpp decoding. Never imports torch."""

from exaone_edge.errors import ImageRejected, PromptTooLong
from exaone_edge.runtime.generation import (
    Chunk,
    GenerationParams,
    GenerationResult,
    Timings,
    Usage,
    collect,
)

__all__ = [
    "Chunk",
    "Engine",
    "GenerationParams",
    "GenerationResult",
    "ImageRejected",
    "PromptTooLong",
    "Timings",
    "Usage",
    "collect",
]


def __getattr__(name: str):
    # The engine pulls in llama.cpp and ONNX Runtime; load them only when it is asked for.
    if name == "Engine":
        from exaone_edge.runtime.engine import Engine

        return Engine
    raise AttributeError(name)
