"""The engine's settings, declared once: each field's type, default, command-line flags and help live here.

The CLI makes `run`/`serve`/`bench`/`validate`/`plan` flags from these fields (exaone_edge/cli_flags.py), `serve`
also reads them from `EXAONE_EDGE_<FIELD>` variables (runtime/server/settings.py embeds this class), and the
runtime takes the value as it is (`Engine(bundle, EngineSettings(...))`). Field names are llama.cpp's C-API
names where llama.cpp has the setting (`n_ctx`, `n_gpu_layers`, `n_threads`, `n_batch`, `flash_attn`, `swa_full`),
and the flags are spelled as llama-server spells them (`--ctx-size`/`-c`, `--gpu-layers`/`-ngl`, `--threads`/`-t`,
`--flash-attn`/`-fa` with auto|on|off, `--parallel`/`-np`, `--image-max-tokens`); `--ctx` stays as an alias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from exaone_edge.errors import InputError
from exaone_edge.llama import KV_TYPES

AUTO = "auto"
DEVICES = ("auto", "cpu", "cuda")
VISION_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
FLASH_ATTN = {"auto": None, "on": True, "off": False}  # llama-server's words → llama.cpp's flash_attn_type
DRAFTERS = {"mtp": "mtp", "off": None}  # --draft words → the drafter (None: no speculative decoding)
MAX_DRAFT = 16


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line (and in an EXAONE_EDGE_* variable)."""

    names: tuple[str, ...]
    help: str
    parse: Callable[[str, str], Any] | None = None  # (flag, text) → value; None: typer converts by the field's type
    kind: type = str  # what typer reads before `parse`


def _int_or_auto(flag: str, text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{flag} takes a number or auto, got '{text}'") from None


def _flash_attn(flag: str, text: str) -> bool | None:
    if text not in FLASH_ATTN:
        raise InputError(f"{flag} must be auto, on or off, got '{text}'")
    return FLASH_ATTN[text]


def _draft(flag: str, text: str) -> str | None:
    if text not in DRAFTERS:
        raise InputError(f"{flag} must be mtp or off, got '{text}'")
    return DRAFTERS[text]


def _setting(default: Any, flag: Flag | None = None) -> Any:
    return field(default=default, metadata={"flag": flag} if flag else {})


@dataclass(frozen=True)
class EngineSettings:
    n_ctx: int | str | None = _setting(None, Flag(
        ("--ctx-size", "-c", "--ctx"), "Context length per sequence, or auto: the largest that fits the GPU's free "
        "memory (default: min(model max, 8192)).", _int_or_auto))
    n_gpu_layers: int | str | None = _setting(None, Flag(
        ("--gpu-layers", "-ngl", "--n-gpu-layers"), "llama.cpp's n_gpu_layers: -1 all, 0 none, N the output layer and "
        "N-1 layers, auto: as many as fit the GPU's free memory (default: all when llama.cpp has a GPU backend).",
        _int_or_auto))
    n_threads: int | None = _setting(None, Flag(("--threads", "-t"), "CPU threads (default: all cores).", kind=int))
    flash_attn: bool | None = _setting(None, Flag(("--flash-attn", "-fa"), "Flash attention: auto, on or off.",
                                                  _flash_attn))
    kv_type: str = _setting("f16", Flag(("--kv-type",), f"KV cache type: {', '.join(KV_TYPES)}."))
    # llama.cpp's mtmd / llama-server flag
    image_max_tokens: int | None = _setting(None, Flag(
        ("--image-max-tokens",), "Most decoder rows (merged image tokens) an image or PDF page becomes; one row is "
        "(patch × merge)² pixels, 28×28 for EXAONE 4.5 (default: the bundle's max_pixels).", kind=int))
    parallel: int = _setting(1, Flag(("--parallel", "-np"), "Generations decoded together, each with its own "
                                                            "--ctx-size KV cache.", kind=int))
    device: str = _setting("auto", Flag(("--device",), "auto (the GPU for each part whose runtime has a GPU build), "
                                                       "cpu, or cuda (an error if a runtime lacks it)."))
    vision_provider: str = _setting("auto", Flag(("--vision-provider",), "Vision encoder's ONNX Runtime provider: auto, "
                                                                         "cpu, cuda or tensorrt (used only when asked)."))
    verify: bool = _setting(True, Flag(("--verify/--no-verify",), "Hash every bundle file before loading "
                                                                  "(--no-verify: sizes only).", kind=bool))
    draft: str | None = _setting(None, Flag(
        ("--draft",), "Speculative decoding: mtp drafts with the model's MTP head and the model verifies the drafts "
        "in one pass, keeping what its own sampler picks (identical to decoding alone with exact numerics; llama.cpp "
        "rounds a multi-token batch differently, so quantized models can differ slightly, as in vLLM); off (default).",
        _draft))
    draft_max: int = _setting(3, Flag(("--draft-max",), "Tokens drafted per step with --draft (llama-server's "
                                                        "--draft-max).", kind=int))
    # Library settings, no flags: the tests and benchmarks set them.
    n_batch: int = 512
    swa_full: bool = False
    vision_cache_entries: int = 64
    vision_cache_bytes: int = 1 << 30
    verbose: bool = False

    def __post_init__(self) -> None:
        checks = (
            (self.n_ctx in (None, AUTO) or (isinstance(self.n_ctx, int) and self.n_ctx >= 16), "n_ctx", "at least 16, or auto"),
            (self.n_gpu_layers in (None, AUTO) or (isinstance(self.n_gpu_layers, int) and self.n_gpu_layers >= -1),
             "n_gpu_layers", "-1 or more, or auto"),
            (self.n_threads is None or self.n_threads >= 1, "n_threads", "at least 1"),
            (self.kv_type in KV_TYPES, "kv_type", f"one of {', '.join(KV_TYPES)}"),
            (1 <= self.parallel <= 64, "parallel", "between 1 and 64"),
            (self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}"),
            (self.vision_provider in VISION_PROVIDERS, "vision_provider", f"one of {', '.join(VISION_PROVIDERS)}"),
            (self.draft in DRAFTERS.values(), "draft", "mtp or off"),
            (1 <= self.draft_max <= MAX_DRAFT, "draft_max", f"between 1 and {MAX_DRAFT}"),
            # a step verifies draft_max + 1 tokens of every sequence in one llama.cpp micro-batch (KV rollback)
            (self.draft is None or self.parallel * (self.draft_max + 1) <= self.n_batch, "draft_max",
             f"at most {self.n_batch} // --parallel - 1 (each step verifies every sequence's drafts in one batch)"),
        )
        for ok, name, rule in checks:
            if not ok:
                raise InputError(f"{flag_name(name)} must be {rule}, got {getattr(self, name)!r}")

    @property
    def flash_attn_mode(self) -> str:
        """The setting in llama-server's words (auto, on, off)."""
        return next(word for word, value in FLASH_ATTN.items() if value == self.flash_attn)


def flag_fields() -> dict[str, Flag]:
    """Every setting that has a flag, by field name, in declaration order."""
    return {f.name: f.metadata["flag"] for f in fields(EngineSettings) if "flag" in f.metadata}


def flag_name(name: str) -> str:
    flag = flag_fields().get(name)
    return flag.names[0].split("/")[0] if flag else name


def parse_setting(name: str, text: str, *, source: str | None = None) -> Any:
    """A setting's value from its text (a flag's or an environment variable's)."""
    flag = flag_fields()[name]
    label = source or flag.names[0].split("/")[0]
    if flag.parse is not None:
        return flag.parse(label, text)
    if flag.kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise InputError(f"{label} must be true or false, got '{text}'")
        return lowered in ("1", "true", "yes", "on")
    if flag.kind is int:
        try:
            return int(text)
        except ValueError:
            raise InputError(f"{label} takes a whole number, got '{text}'") from None
    return text


def defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(EngineSettings) if f.default is not MISSING}
