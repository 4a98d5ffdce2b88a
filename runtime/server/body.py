"""The request body: only `application/json`, strict UTF-8, bounded numbers and nesting, valid Unicode text.

Each refusal is a 4xx with the OpenAI error shape; none of these inputs may reach a 500 or stall the
event loop (Python's int parser refuses > 4300 digits with a ValueError, the JSON parser recurses,
and a lone surrogate escape such as "\\ud800" parses fine but fails later when encoded).
"""

from __future__ import annotations

import json
import re
from typing import Any

from exaone_edge.runtime.server.errors import InvalidRequest, UnsupportedMediaType

MAX_INT_DIGITS = 20  # 2**64 - 1 has 20 digits; no field of a request needs more
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (unrolled: fast on megabyte data URLs)


class _BadNumber(ValueError):
    pass


def check_content_type(header: str | None) -> None:
    media, _, params = (header or "").partition(";")
    if media.strip().lower() != "application/json":
        got = f"Content-Type {header!r}" if header else "no Content-Type"
        raise UnsupportedMediaType(
            f"the request has {got}; only application/json is accepted",
            fix="Send the body as JSON with the header 'Content-Type: application/json'.",
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"charset {value.strip()!r} is not accepted: send application/json in UTF-8")


def count_nodes(body: bytes) -> int:
    """An upper bound on the JSON values in `body`, counted from its bytes before any object is built."""
    structure = _STRING.sub(b'""', body)
    return structure.count(b"{") + structure.count(b"[") + structure.count(b",") + 1


def parse_json(body: bytes, max_depth: int, max_nodes: int) -> Any:
    """Parse a request body; InvalidRequest (400) says what is wrong and where.

    The node count is bounded first: 2 MiB of `{},` is 700,000 objects, hundreds of MB once built."""
    nodes = count_nodes(body)
    if nodes > max_nodes:
        raise InvalidRequest(f"the request body holds about {nodes:,} JSON values, the limit is {max_nodes:,}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _BadNumber as exc:
        raise InvalidRequest(str(exc)) from None
    except RecursionError:
        raise InvalidRequest(f"the JSON nests deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc})") from None
    _check_tree(data, max_depth, check_text=_SURROGATE_ESCAPE.search(text) is not None)
    return data


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadNumber(f"a number in the request has {len(digits.lstrip('-')):,} digits; the limit is {MAX_INT_DIGITS}")
    return int(digits)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadNumber(f"the number {text[:32]}{'…' if len(text) > 32 else ''} is too large")
    return value


def _parse_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _check_tree(data: Any, max_depth: int, *, check_text: bool) -> None:
    """Depth, and (only when the body has surrogate escapes) that every string is valid Unicode."""
    stack: list[tuple[Any, int, tuple]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise InvalidRequest(f"the JSON nests deeper than {max_depth} levels")
            for key, item in value.items():
                if check_text:
                    _check_text(key, path)
                if isinstance(item, (dict, list)) or (check_text and isinstance(item, str)):
                    stack.append((item, depth + 1, (*path, key)))
        elif isinstance(value, list):
            if depth > max_depth:
                raise InvalidRequest(f"the JSON nests deeper than {max_depth} levels")
            for index, item in enumerate(value):
                if isinstance(item, (dict, list)) or (check_text and isinstance(item, str)):
                    stack.append((item, depth + 1, (*path, index)))
        elif isinstance(value, str):
            _check_text(value, path)


def _check_text(text: str, path: tuple) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _param(path)
        raise InvalidRequest(
            f"{where or 'body'}: the text is not valid Unicode (a lone surrogate {text[exc.start]!a} at character {exc.start})",
            param=where or None,
        ) from None


def _param(path: tuple) -> str:
    return ".".join(str(part) for part in path)
