"""Bounds on every list and string of a chat request, from the server settings; each error names its limit.

The body size limit alone would still let one request carry thousands of stop strings (scanned at
every token), tens of thousands of messages or parts, or a `max_tokens` no context can hold.
"""

from __future__ import annotations

from typing import Any

from exaone_edge.runtime.server.errors import InvalidRequest
from exaone_edge.runtime.server.schemas import ChatCompletionRequest, ImageUrlPart, TextPart
from exaone_edge.runtime.server.settings import ServerSettings

# What the server itself passes to the chat template (runtime/prompt.py ChatFormat.render): a request
# may not replace them through chat_template_kwargs (a collision was a TypeError, a 500, before).
MAX_URL_CHARS = 8192  # a link (not a data: URL, which the body size bounds); browsers and proxies stop near here
RESERVED_TEMPLATE_NAMES = frozenset({
    "self",  # jinja2's Template.render(self, ...): a keyword of that name was a TypeError
    "messages", "tools", "documents", "add_generation_prompt",
    "bos_token", "eos_token", "unk_token", "pad_token",
    "raise_exception", "strftime_now", "namespace",
})


def check_lists(data: Any, settings: ServerSettings) -> None:
    """The list limits on the parsed JSON, before the request model builds (and validates) an object per item."""
    if not isinstance(data, dict):
        return  # the model says what is wrong
    messages = data.get("messages")
    if isinstance(messages, list):
        if len(messages) > settings.max_messages:
            _refuse("messages", f"{len(messages):,} messages, the limit is {settings.max_messages:,}")
        parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
        if parts > settings.max_content_parts:
            _refuse("messages", f"{parts:,} content parts in the request, the limit is {settings.max_content_parts:,}")
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > settings.max_stop:
        _refuse("stop", f"{len(stop)} stop strings, the limit is {settings.max_stop}")
    kwargs = data.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and len(kwargs) > settings.max_template_kwargs:
        _refuse("chat_template_kwargs", f"{len(kwargs)} entries, the limit is {settings.max_template_kwargs}")


def check_request(body: ChatCompletionRequest, settings: ServerSettings, n_ctx: int) -> None:
    """Raise InvalidRequest (400, with `param`) for the first limit the request exceeds."""
    if len(body.messages) > settings.max_messages:
        _refuse("messages", f"{len(body.messages):,} messages, the limit is {settings.max_messages:,}")
    parts = chars = 0
    for m, message in enumerate(body.messages):
        if isinstance(message.content, str):
            chars += len(message.content)
        elif message.content is not None:
            parts += len(message.content)
            chars += sum(len(part.text) for part in message.content if isinstance(part, TextPart))
            for p, part in enumerate(message.content):
                url = part.image_url.url if isinstance(part, ImageUrlPart) else ""
                if len(url) > MAX_URL_CHARS and not url[:5].lower() == "data:":
                    _refuse(f"messages.{m}.content.{p}.image_url.url",
                            f"a URL of {len(url):,} characters, the limit is {MAX_URL_CHARS:,}")
    if parts > settings.max_content_parts:
        _refuse("messages", f"{parts:,} content parts in the request, the limit is {settings.max_content_parts:,}")
    if chars > settings.max_text_chars:
        _refuse("messages", f"{chars:,} characters of text in the request, the limit is {settings.max_text_chars:,}")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > settings.max_stop:
        _refuse("stop", f"{len(stops)} stop strings, the limit is {settings.max_stop}")
    for index, stop in enumerate(stops):
        if len(stop) > settings.max_stop_chars:
            _refuse("stop", f"stop string {index + 1} has {len(stop):,} characters, the limit is {settings.max_stop_chars}")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value > n_ctx:
            _refuse(name, f"{value:,} exceeds the context of {n_ctx:,} positions (the prompt included)")
    kwargs = body.chat_template_kwargs or {}
    if len(kwargs) > settings.max_template_kwargs:
        _refuse("chat_template_kwargs", f"{len(kwargs)} entries, the limit is {settings.max_template_kwargs}")
    for key in kwargs:
        if not key.isidentifier() or key.startswith("_"):
            raise InvalidRequest(f"chat_template_kwargs: {key[:64]!r} is not a template variable name (letters, digits "
                                 "and '_', not starting with '_')", param="chat_template_kwargs")
        if key in RESERVED_TEMPLATE_NAMES:
            raise InvalidRequest(
                f"chat_template_kwargs.{key}: '{key}' is set by the server and cannot be overridden "
                f"(reserved: {', '.join(sorted(RESERVED_TEMPLATE_NAMES))})",
                param=f"chat_template_kwargs.{key}",
            )


def _refuse(param: str, what: str) -> None:
    raise InvalidRequest(f"{param}: {what}", param=param)
