"""The engine's settings as command-line flags, declared once: run, serve, bench, validate and plan each take
the ones they use (`@engine_flags(...)`) and receive them as one `EngineFlags` value.

Flag name = setting name of `EngineOptions` / `ServerSettings` (`--gpu-layers` ↔ `gpu_layers`). `--ctx` and
`--gpu-layers` also take `auto`: the engine fits them to the GPU's free memory (exaone_edge/fit.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any

import typer

from exaone_edge.errors import InputError
from exaone_edge.llama import KV_TYPES

AUTO = "auto"
AUTO_FLAGS = ("ctx", "gpu_layers")  # an int, or "auto"


@dataclass(frozen=True)
class EngineFlags:
    ctx: int | str | None = None
    threads: int | None = None
    flash_attn: str | None = "auto"
    kv_type: str | None = "f16"
    verify: bool | None = True
    image_max_tokens: int | None = None
    device: str | None = "auto"
    gpu_layers: int | str | None = None
    vision_provider: str | None = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def flash_attn_mode(self) -> bool | None:
        """--flash-attn as llama.cpp takes it: None (auto), True or False."""
        modes = {"auto": None, "on": True, "off": False}
        if self.flash_attn not in modes:
            raise InputError(f"--flash-attn must be auto, on or off, got '{self.flash_attn}'")
        return modes[self.flash_attn]


def int_or_auto(name: str, value: int | str | None) -> int | str | None:
    """An `AUTO_FLAGS` value as typed: None, "auto" or an int."""
    if value is None or isinstance(value, int) or value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--{name.replace('_', '-')} takes a number or auto, got '{value}'") from None


FLAG_TYPES: dict[str, Any] = {
    "ctx": Annotated[str | None, typer.Option("--ctx", help="Context length, or auto: the largest that fits the GPU's "
                                              "free memory (default: min(model max, 8192)).")],
    "threads": Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")],
    "flash_attn": Annotated[str | None, typer.Option(help="Flash attention: auto, on or off.")],
    "kv_type": Annotated[str | None, typer.Option(help=f"KV cache type: {', '.join(KV_TYPES)}.")],
    "verify": Annotated[bool | None, typer.Option(help="Hash every bundle file before loading (--no-verify: sizes only).")],
    # named as llama.cpp's mtmd / llama-server flag
    "image_max_tokens": Annotated[int | None, typer.Option(
        help="Most decoder rows (merged image tokens) an image or PDF page becomes; one row is (patch × merge)² "
             "pixels, 28×28 for EXAONE 4.5 (default: the bundle's max_pixels).")],
    # exaone_edge/device.py decides where each part runs
    "device": Annotated[str | None, typer.Option(help="auto (the GPU for each part whose runtime has a GPU build), "
                                                  "cpu, or cuda (an error if a runtime lacks it).")],
    "gpu_layers": Annotated[str | None, typer.Option(help="llama.cpp's n_gpu_layers: -1 all, 0 none, N the output layer "
                                                      "and N-1 layers, auto: as many as fit the GPU's free memory "
                                                      "(default: all when llama.cpp has a GPU backend).")],
    "vision_provider": Annotated[str | None, typer.Option(help="Vision encoder's ONNX Runtime provider: auto, cpu, "
                                                           "cuda or tensorrt (used only when asked).")],
}
DEFAULTS = {field.name: field.default for field in fields(EngineFlags)}


def engine_flags(*names: str, unset: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds the named engine flags to a typer command (before its --json), passed to it as `engine: EngineFlags`.

    `unset`: every default is None, so that a later layer (serve's EXAONE_EDGE_* variables) can fill it."""
    unknown = sorted(set(names) - set(FLAG_TYPES))
    if unknown:
        raise ValueError(f"unknown engine flags {unknown}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "engine"]
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=FLAG_TYPES[name],
                                   default=None if unset else DEFAULTS[name]) for name in names]
        last = [p for p in own if p.name == "json_output"]
        parameters = [p for p in own if p.name != "json_output"] + added + last

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = dict.fromkeys(DEFAULTS) if unset else {}
            values.update({name: kwargs.pop(name) for name in names})
            values.update({name: int_or_auto(name, values[name]) for name in AUTO_FLAGS if name in values})
            return command(*args, engine=EngineFlags(**values), **kwargs)

        wrapper.__signature__ = inspect.Signature(parameters)  # what typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
