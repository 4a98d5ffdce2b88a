"""OpenAI messages → engine messages: data URLs, allowed local paths and (opt-in) remote URLs decoded to images.

Limits are checked before anything is decoded: parts per request, bytes per file, pixels from the image
header (decompression bombs), PDF pages. Decoding reuses `runtime.documents`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from exaone_edge.errors import ImageRejected, InputError
from exaone_edge.decode_process import DecodePool, DecodeTimedOut
from exaone_edge.images import is_pdf
from exaone_edge.runtime.server.errors import NotAllowed, Unsupported
from exaone_edge.runtime.server.prepare import Deadline
from exaone_edge.runtime.server.remote import fetch
from exaone_edge.runtime.server.schemas import ChatMessage, FilePart, ImageUrlPart, TextPart
from exaone_edge.runtime.server.settings import ServerSettings


@dataclass(frozen=True)
class Source:
    data: bytes
    name: str
    pages: str | None


def count_documents(messages: list[ChatMessage]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
        if isinstance(part, (ImageUrlPart, FilePart))
    )


def engine_messages(
    messages: list[ChatMessage], settings: ServerSettings, max_pixels: int, decoders: DecodePool | None = None,
    deadline: Deadline | None = None,
) -> list[dict[str, Any]]:
    """Decode every image/PDF part (blocking: run it in a worker thread); text passes through.

    Files are decoded in a worker process of `decoders` (killed at the deadline); each one is sized from its
    header or page sizes against what is left of the request's pixel budget before any pixel is decoded.
    `deadline` is checked before each part and bounds remote fetches (per block).
    """
    if count_documents(messages) > settings.max_images:
        raise InputError(f"{count_documents(messages)} images/files in the request, the limit is {settings.max_images}")
    out: list[dict[str, Any]] = []
    images = pdf_pages = pixels = 0
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        extra = _turn_fields(message)
        if not isinstance(message.content, list):
            content = message.content if message.content is not None or role == "assistant" else ""
            out.append({"role": role, "content": content, **extra})
            continue
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
                continue
            if decoders is None:
                raise RuntimeError("engine_messages: a request with files needs the server's decoder pool")
            deadline = deadline or Deadline(settings.prepare_timeout_s)
            deadline.check("reading the request's images")
            source = _source(part, settings, deadline)
            limits = replace(settings.limits, max_pdf_pages=max(settings.max_pdf_pages - pdf_pages, 0))
            if is_pdf(source.data) and limits.max_pdf_pages == 0:
                raise InputError(f"the request holds more than {settings.max_pdf_pages} PDF pages")
            try:
                pages = decoders.worker().decode(
                    source.data, name=source.name, pages=source.pages, max_pixels=max_pixels, limits=limits,
                    pixel_budget=settings.max_request_pixels - pixels, timeout_s=deadline.remaining())
            except DecodeTimedOut:
                deadline.check(f"decoding {source.name}")
                raise
            if is_pdf(source.data):
                pdf_pages += len(pages)
            images += len(pages)
            pixels += sum(page.width * page.height for page in pages)
            if images > settings.max_images:
                raise InputError(f"the request holds more than {settings.max_images} images (PDF pages included)")
            parts.extend({"type": "image", "image": page} for page in pages)
        out.append({"role": role, "content": parts, **extra})
    return out


def _turn_fields(message: ChatMessage) -> dict[str, Any]:
    """Tool calls, the tool call a result answers, and earlier reasoning, as the chat template reads them."""
    fields: dict[str, Any] = {}
    if message.tool_calls:
        fields["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        fields["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:
        fields["reasoning_content"] = message.reasoning_content
    return fields


def _source(part: ImageUrlPart | FilePart, settings: ServerSettings, deadline: Deadline) -> Source:
    if isinstance(part, FilePart):
        if part.file.file_data is None:
            raise Unsupported("'file' parts need 'file_data' (a data URL); there is no file store for 'file_id'")
        name = part.file.filename or "file"
        return Source(_data_url(part.file.file_data, name, settings), name, part.file.pages)
    url = part.image_url.url
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        return Source(_data_url(url, "image", settings), "image", part.image_url.pages)
    if scheme in ("http", "https"):
        return Source(_fetch(url, settings, deadline), urlparse(url).hostname or "remote file", part.image_url.pages)
    if scheme == "file" or url.startswith("/"):
        path = _allowed_path(Path(unquote(urlparse(url).path)) if scheme == "file" else Path(url), settings)
        return Source(_read_file(path, settings), str(path), part.image_url.pages)
    raise ImageRejected(f"unsupported image URL scheme '{scheme or url[:16]}'", fix="Send a data: URL.")


def _data_url(url: str, name: str, settings: ServerSettings) -> bytes:
    header, comma, payload = url.partition(",")
    if not header.lower().startswith("data:") or not comma:
        raise ImageRejected(f"{name}: not a data URL (data:<type>;base64,<data>)")
    if not header.lower().endswith(";base64"):
        raise ImageRejected(f"{name}: only base64 data URLs are accepted")
    if len(payload) * 3 // 4 > settings.max_file_bytes:
        raise ImageRejected(f"{name}: more than {settings.max_file_bytes:,} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(f"{name}: the data URL is not valid base64") from None


def _allowed_path(path: Path, settings: ServerSettings) -> Path:
    if not settings.allow_dir:
        raise NotAllowed("local paths are not allowed", fix="Start the server with --allow-dir DIR, or send a data: URL.")
    if not path.is_absolute():
        raise NotAllowed("local paths must be absolute")
    resolved = path.resolve()  # symlinks and '..' resolved before the check
    if not any(resolved.is_relative_to(root.resolve()) for root in settings.allow_dir):
        raise NotAllowed(f"{path} is outside the allowed directories")
    if not resolved.is_file():
        raise InputError(f"{path}: file not found")
    return resolved


def _read_file(path: Path, settings: ServerSettings) -> bytes:
    size = path.stat().st_size
    if size > settings.max_file_bytes:
        raise ImageRejected(f"{path}: {size:,} bytes exceeds the limit of {settings.max_file_bytes:,}")
    return path.read_bytes()


def _fetch(url: str, settings: ServerSettings, deadline: Deadline) -> bytes:
    if not settings.allow_remote_urls:
        raise NotAllowed(
            "remote image URLs are refused (nothing leaves this machine)",
            fix="Send a data: URL, or start the server with --allow-remote-urls.",
        )
    return fetch(
        url, max_bytes=settings.max_file_bytes, timeout_s=settings.remote_timeout_s, max_redirects=settings.max_redirects,
        deadline=deadline, allowed_networks=settings.allow_remote_network,
    )
