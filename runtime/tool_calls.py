"""Tool calls out of generated text: `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks, as
EXAONE 4.5's chat template writes an assistant's calls (exaone_edge/data/chat_template.jinja).

Handled on text deltas, so streamed and whole replies split the same way (`parse_tool_calls` is the
stream fed at once):
- text that could still become `<tool_call>` (`<tool_c`) is held back until it is whole or proven not;
- a block is held until `</tool_call>`; one whose body is not a JSON object with a string `name` and an
  object `arguments` is kept in the content as written, as is a block the reply never closes;
- the template joins content and calls with `\\n`: whitespace between content and a call, between calls
  and after the last one is dropped, so trailing whitespace is held back until the next text shows whether
  a call follows (text after a call keeps the whitespace that came before the call).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

TOOL_CALL_MARKERS = ("<tool_call>", "</tool_call>")
_OPEN, _CLOSE = TOOL_CALL_MARKERS


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the arguments object as JSON text, as OpenAI's `function.arguments`
    id: str = field(default_factory=_call_id)

    def to_openai(self) -> dict[str, object]:
        """The OpenAI `tool_calls[]` entry (also what ChatFormat.render takes back in an assistant message)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    content: str  # answer text that is settled
    calls: tuple[ToolCall, ...]  # calls completed by this piece


class ToolCallParser:
    """Feed answer-text deltas in order; each call returns the content and the tool calls settled so far."""

    def __init__(self) -> None:
        self._buffer = ""  # undecided text: a possible `<tool_call>` prefix, or an open block's body
        self._in_call = False
        self._space = ""  # whitespace held until we know whether a call follows it
        self._after_call = False  # no text since the last parsed call: its whitespace is dropped

    def feed(self, delta: str) -> ToolCallDelta:
        self._buffer += delta
        content: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(_CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(_CLOSE) :]
                self._in_call = False
                call = parse_call(body)
                if call is None:
                    content.append(self._text(_OPEN + body + _CLOSE))
                else:
                    calls.append(call)
                    self._after_call = True
                continue
            start = self._buffer.find(_OPEN)
            if start >= 0:
                content.append(self._text(self._buffer[:start]))
                self._buffer, self._in_call = self._buffer[start + len(_OPEN) :], True
                continue
            keep = _prefix_at_end(self._buffer, _OPEN)
            content.append(self._text(self._buffer[: len(self._buffer) - keep]))
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return ToolCallDelta("".join(content), tuple(calls))

    def finish(self) -> ToolCallDelta:
        """End of the reply: an unclosed block and held text are content, as written."""
        rest, self._buffer = (_OPEN if self._in_call else "") + self._buffer, ""
        self._in_call = False
        text = self._text(rest)
        if not self._after_call:
            text += self._space
        self._space, self._after_call = "", False
        return ToolCallDelta(text, ())

    def _text(self, text: str) -> str:
        """Outside text as settled so far: trailing whitespace is held, whitespace right after a call dropped."""
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            self._after_call = False
        body = text.rstrip()
        if not body:
            self._space += text
            return ""
        settled, self._space = self._space + body, text[len(body) :]
        return settled


def parse_call(body: str) -> ToolCall | None:
    """The call in a block's body, or None when it is not `{"name": str, "arguments": {…}}`."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    name, arguments = value.get("name"), value.get("arguments")
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ToolCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """A whole reply's answer text split into content and tool calls, exactly as streaming would split it."""
    parser = ToolCallParser()
    head, tail = parser.feed(text), parser.finish()
    return head.content + tail.content, list(head.calls)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: json.loads accepts them, clients would not


def _prefix_at_end(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
