"""One settings model for the server: CLI flags override `EXAONE_EDGE_*` environment variables override defaults."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exaone_edge.errors import InputError
from exaone_edge.images import DocumentLimits

ENV_PREFIX = "EXAONE_EDGE_"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
LIST_SETTINGS = ("allow_remote_network", "allow_host", "allow_origin")  # comma-separated in the environment


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port (printed on stderr)
    api_key: str | None = None  # clients send `Authorization: Bearer KEY`; None: no key. Never a flag: it would show in `ps`
    api_key_file: Path | None = None  # a file whose first line is the key (what `serve --api-key-file` takes)
    model_name: str | None = None  # the id clients must send (default: the bundle's directory name)
    allow_dir: tuple[Path, ...] = ()  # local image/PDF paths are read only from under these
    allow_remote_urls: bool = False  # fetch http(s) image URLs; off: nothing is fetched from the network
    # Networks (CIDR) remote fetching may reach although they are not public (an intranet file server).
    allow_remote_network: tuple[str, ...] = ()
    max_redirects: int = Field(3, ge=0, le=20)  # redirect hops a remote fetch follows, each one checked again
    # Without an API key: Host names besides IP literals and localhost, and browser origins, that are served.
    allow_host: tuple[str, ...] = ()
    allow_origin: tuple[str, ...] = ()  # also get CORS headers
    max_body_bytes: int = Field(32 * 2**20, ge=1024)
    max_images: int = Field(8, ge=0)  # images per request, PDF pages included
    max_pdf_pages: int = Field(8, ge=1)  # PDF pages per request
    max_image_pixels: int = Field(DocumentLimits().max_image_pixels, ge=1)  # header check, before decoding
    # Decoded pixels per request, PDF pages included: a queued request holds its pages until it runs,
    # so this bounds memory at (max_queue + parallel) × 3 bytes × this (≈ 1.7 GB with the defaults).
    max_request_pixels: int = Field(64_000_000, ge=1)
    max_file_bytes: int = Field(DocumentLimits().max_file_bytes, ge=1)
    remote_timeout_s: float = Field(10.0, gt=0)
    # One deadline for all of a request's input preparation (fetch, PDF render, decode) → 408 past it.
    prepare_timeout_s: float = Field(60.0, gt=0)
    max_preparing: int = Field(2, ge=1, le=64)  # requests with images prepared at once; text-only ones never wait
    # Address space of each file-decoding worker process (one per preparing request); past it the decode fails (400).
    decode_memory_bytes: int = Field(2 * 2**30, ge=256 * 2**20)
    # Request shape limits (each refusal names its limit). OpenAI allows 4 stop strings; vLLM has no limit.
    max_messages: int = Field(1024, ge=1)
    max_content_parts: int = Field(1024, ge=1)  # text, image and file parts in the whole request
    max_text_chars: int = Field(1_000_000, ge=1)  # all message text together (≈ the largest context, 262,144 tokens)
    max_stop: int = Field(16, ge=0)
    max_stop_chars: int = Field(256, ge=1)
    max_template_kwargs: int = Field(32, ge=0)
    max_json_depth: int = Field(32, ge=8, le=512)
    # JSON values per body, counted from its bytes before parsing (a request with 1,024 messages of a few parts
    # and a long tool list stays far below); bodies parsed at once, off the event loop.
    max_json_nodes: int = Field(100_000, ge=1000)
    max_parsing: int = Field(2, ge=1, le=64)
    # Seconds a client may take to send its request headers, and its body; past them the connection is closed.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(64, ge=2)  # open connections, a new request's own included; past it: 503 at once
    # A streaming client that accepts no byte for this long loses its response (and its slot).
    send_timeout_s: float = Field(30.0, gt=0)
    max_queue: int = Field(8, ge=0)  # requests waiting for the engine beyond the running ones; more → 429
    parallel: int = Field(1, ge=1, le=64)  # generations decoded together (slots); each holds a ctx-sized KV cache
    default_max_tokens: int = Field(512, ge=1)
    # Reasoning when a request does not say (chat_template_kwargs.enable_thinking). Off: document QA wants short
    # extractive answers fast; EXAONE 4.5's own default (on) spends hundreds of tokens first.
    thinking: bool = False
    # Engine options (EngineOptions), passed through by `serve`.
    ctx: Annotated[int, Field(ge=16)] | Literal["auto"] | None = None  # auto: the largest that fits (exaone_edge/fit.py)
    # Decoder rows an image or PDF page may become (llama.cpp's --image-max-tokens); None: the bundle's max_pixels.
    # Checked against the bundle's min_pixels when the engine loads.
    image_max_tokens: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where each part runs (exaone_edge/device.py)
    gpu_layers: Annotated[int, Field(ge=-1)] | Literal["auto"] | None = None  # llama.cpp's n_gpu_layers; None: all
    vision_provider: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    threads: int | None = Field(None, ge=1)
    flash_attn: Literal["auto", "on", "off"] = "auto"
    kv_type: str = "f16"
    verify: bool = True

    @classmethod
    def resolve(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Flags (None: not given) over `EXAONE_EDGE_<FIELD>` variables over defaults; bad values → InputError."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw:
                if name == "allow_dir":
                    values[name] = tuple(p for p in raw.split(os.pathsep) if p)
                elif name in LIST_SETTINGS:
                    values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
                else:
                    values[name] = raw
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            where = f"server setting '{field}': " if field else ""
            raise InputError(f"{where}{first['msg'].removeprefix('Value error, ')}") from None

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, values: Any) -> Any:
        if not isinstance(values, dict) or values.get("api_key_file") is None:
            return values
        if values.get("api_key") is not None:
            raise ValueError("give the API key once: EXAONE_EDGE_API_KEY or the key file, not both")
        path = Path(values["api_key_file"])
        try:
            key = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size <= 4096 else ""
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ValueError(f"{path}: cannot read the API key ({getattr(exc, 'strerror', None) or 'empty or not text'})") from None
        if not key:
            raise ValueError(f"{path}: the first line should hold the key (at most 4 KiB)")
        return {**values, "api_key": key}

    @field_validator("allow_remote_network")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for spec in value:
            try:
                ipaddress.ip_network(spec, strict=False)
            except ValueError:
                raise ValueError(f"{spec!r} is not a network like 10.0.0.0/8") from None
        return value

    @property
    def limits(self) -> DocumentLimits:
        return DocumentLimits(
            max_image_pixels=self.max_image_pixels, max_pdf_pages=self.max_pdf_pages, max_file_bytes=self.max_file_bytes
        )

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    def engine_options(self) -> dict[str, Any]:
        flash = {"auto": None, "on": True, "off": False}[self.flash_attn]
        return dict(
            n_ctx=self.ctx, image_max_tokens=self.image_max_tokens, device=self.device, n_gpu_layers=self.gpu_layers, vision_provider=self.vision_provider,
            n_threads=self.threads, flash_attn=flash,
            kv_type=self.kv_type, verify=self.verify, parallel=self.parallel,
        )
