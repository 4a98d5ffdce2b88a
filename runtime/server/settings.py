"""One settings model for the server: CLI flags override `EXAONE_EDGE_*` environment variables override defaults."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exaone_edge.engine_settings import EngineSettings, flag_fields, parse_setting
from exaone_edge.errors import InputError
from exaone_edge.images import DocumentLimits

ENV_PREFIX = "EXAONE_EDGE_"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
LIST_SETTINGS = ("allow_remote_network", "allow_host", "allow_origin")  # comma-separated in the environment


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    # Each field is a `serve` flag (--NAME, a trailing _s dropped; cli_flags.settings_flags) and an EXAONE_EDGE_NAME
    # variable; its description is the flag's help. The API key alone is never a flag: `ps` would show it.
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port; 0 picks a free one (printed on stderr).")
    api_key: str | None = None  # clients send `Authorization: Bearer KEY`; None: no key
    api_key_file: Path | None = Field(None, description="Require 'Authorization: Bearer KEY', KEY being this file's first "
                                                        "line (or EXAONE_EDGE_API_KEY).")
    model_name: str | None = Field(None, description="Model id clients send (default: the bundle's directory name).")
    allow_dir: tuple[Path, ...] = Field((), description="Local image/PDF paths are read only from under this; repeatable.")
    allow_remote_urls: bool = Field(False, description="Fetch http(s) image URLs (off: nothing is fetched from the network).")
    allow_remote_network: tuple[str, ...] = Field((), description="A non-public network (CIDR) remote URLs may reach (an "
                                                                  "intranet file server); repeatable.")
    max_redirects: int = Field(3, ge=0, le=20, description="Redirect hops a remote fetch follows, each one checked again.")
    allow_host: tuple[str, ...] = Field((), description="Without an API key: a Host name served besides IP literals and "
                                                        "localhost ('*': any); repeatable.")
    allow_origin: tuple[str, ...] = Field((), description="A browser origin allowed, with CORS headers (e.g. "
                                                          "http://localhost:3000, '*': any); repeatable.")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body.")
    max_images: int = Field(8, ge=0, description="Images per request, PDF pages included.")
    max_pdf_pages: int = Field(8, ge=1, description="PDF pages per request.")
    max_image_pixels: int = Field(DocumentLimits().max_image_pixels, ge=1,
                                  description="Pixels per image, checked from its header before decoding.")
    # A queued request holds its pages until it runs: memory ≤ (max_queue + parallel) × 3 bytes × this (≈ 1.7 GB).
    max_request_pixels: int = Field(64_000_000, ge=1, description="Decoded pixels per request, PDF pages included.")
    max_file_bytes: int = Field(DocumentLimits().max_file_bytes, ge=1, description="Bytes per image or PDF.")
    remote_timeout_s: float = Field(10.0, gt=0, description="Seconds for one remote fetch.")
    prepare_timeout_s: float = Field(60.0, gt=0, description="Seconds to fetch, render and decode a request's images; "
                                                             "then 408.")
    max_preparing: int = Field(2, ge=1, le=64, description="Requests with images prepared at once (text-only requests "
                                                           "never wait).")
    decode_memory_bytes: int = Field(2 * 2**30, ge=256 * 2**20, description="Address space of each file-decoding worker "
                                     "process (one per preparing request); past it the decode fails with a 400.")
    # Request shape limits (each refusal names its limit). OpenAI allows 4 stop strings; vLLM has no limit.
    max_messages: int = Field(1024, ge=1, description="Messages per request.")
    max_content_parts: int = Field(1024, ge=1, description="Text, image and file parts in the whole request.")
    max_text_chars: int = Field(1_000_000, ge=1, description="Characters of message text per request (≈ the largest "
                                                             "context, 262,144 tokens).")
    max_stop: int = Field(16, ge=0, description="Stop strings per request.")
    max_stop_chars: int = Field(256, ge=1, description="Characters per stop string.")
    max_template_kwargs: int = Field(32, ge=0, description="Entries in chat_template_kwargs.")
    max_json_depth: int = Field(32, ge=8, le=512, description="Nesting of the request body's JSON.")
    max_json_nodes: int = Field(100_000, ge=1000, description="JSON values per body, counted from its bytes before "
                                                              "parsing.")
    max_parsing: int = Field(2, ge=1, le=64, description="Bodies parsed at once, off the event loop.")
    header_timeout_s: float = Field(10.0, gt=0, description="Seconds a client may take to send its request headers.")
    body_timeout_s: float = Field(30.0, gt=0, description="Seconds a client may take to send its body; then 408.")
    max_connections: int = Field(64, ge=2, description="Open connections, a new request's own included; past it 503.")
    send_timeout_s: float = Field(30.0, gt=0, description="Seconds a streaming client may accept nothing before it is "
                                                          "cut off (and its generation cancelled).")
    max_queue: int = Field(8, ge=0, description="Requests waiting beyond the running ones; more get 429.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when a request gives none.")
    # Off: document QA wants short extractive answers fast; EXAONE 4.5's own default (on) spends hundreds of tokens first.
    thinking: bool = Field(False, description="Reason before answering when a request does not say "
                                              "(chat_template_kwargs.enable_thinking).")
    # The engine's own settings (exaone_edge/engine_settings.py), read from the same flags and EXAONE_EDGE_<FIELD>
    # variables (EXAONE_EDGE_N_CTX, EXAONE_EDGE_N_GPU_LAYERS, EXAONE_EDGE_PARALLEL, …).
    engine: EngineSettings = EngineSettings()

    @classmethod
    def resolve(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                engine: Mapping[str, Any] | None = None) -> ServerSettings:
        """Flags (None: not given) over `EXAONE_EDGE_<FIELD>` variables over defaults; bad values → InputError.
        `engine`: the engine settings given on the command line, by field name."""
        environ = os.environ if environ is None else environ
        engine_values = {}
        for name in flag_fields():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw:
                engine_values[name] = parse_setting(name, raw, source=ENV_PREFIX + name.upper())
        engine_values.update(engine or {})
        values: dict[str, Any] = {"engine": EngineSettings(**engine_values)}
        for name in cls.model_fields:
            if name == "engine":
                continue
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
