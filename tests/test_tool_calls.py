"""`<tool_call>` blocks out of generated text, whole and streamed (runtime/tool_calls.py)."""

from __future__ import annotations

import json
import random

import pytest

from exaone_edge.runtime.tool_calls import ToolCallParser, parse_tool_calls

# As EXAONE 4.5's template writes a call (exaone_edge/data/chat_template.jinja, tests/test_chat_template.py).
CALL = '<tool_call>{"name": "lookup_vendor", "arguments": {"vat_id": "KR-1", "이름": "한울"}}</tool_call>'
CALL2 = '<tool_call>{"name": "get_total", "arguments": {}}</tool_call>'


def _streamed(text: str, pieces: list[int]) -> tuple[str, list, list[str]]:
    """Feed `text` cut at `pieces`; the joined content, the calls, and each content delta."""
    parser, deltas, calls, start = ToolCallParser(), [], [], 0
    for end in [*pieces, len(text)]:
        out = parser.feed(text[start:end])
        deltas.append(out.content)
        calls.extend(out.calls)
        start = end
    tail = parser.finish()
    deltas.append(tail.content)
    calls.extend(tail.calls)
    return "".join(deltas), calls, deltas


def _names(calls) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def test_content_and_calls():
    content, calls = parse_tool_calls(f"Checking both.\n{CALL}\n{CALL2}")
    assert content == "Checking both."
    assert _names(calls) == [("lookup_vendor", {"vat_id": "KR-1", "이름": "한울"}), ("get_total", {})]
    assert calls[0].arguments == '{"vat_id": "KR-1", "이름": "한울"}'  # JSON text, non-ASCII kept
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    assert calls[0].to_openai() == {"id": calls[0].id, "type": "function",
                                    "function": {"name": "lookup_vendor", "arguments": calls[0].arguments}}


@pytest.mark.parametrize("text", ["Plain answer.", "  spaced\n\n answer \n", "a < b and <tool> is not <tool_call", ""])
def test_text_without_calls_is_unchanged(text):
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize("body", [
    '{"name": "f", "arguments": {"a": 1}',  # cut short
    "{'name': 'f', 'arguments': {}}",  # not JSON
    '["f", {}]',  # not an object
    '{"name": "", "arguments": {}}',
    '{"name": "f", "arguments": "{}"}',  # arguments must be an object
    '{"name": "f"}',
    '{"name": "f", "arguments": {"x": NaN}}',
    "[" * 100_000,
])
def test_a_malformed_block_stays_content(body):
    text = f"Before {CALL2} middle <tool_call>{body}</tool_call> after"
    content, calls = parse_tool_calls(text)
    assert content == f"Before middle <tool_call>{body}</tool_call> after"  # the space before a call stays
    assert _names(calls) == [("get_total", {})]


def test_an_unclosed_block_stays_content():
    assert parse_tool_calls(f"Answer {CALL[:-5]}") == (f"Answer {CALL[:-5]}", [])


@pytest.mark.parametrize("seed", range(20))
def test_streaming_in_any_pieces_equals_the_whole(seed):
    text = f"Let me <b>check</b> <tool_ <\n{CALL}\n\n{CALL2} then <tool_call>oops</tool_call>. <tool_ca"
    rng = random.Random(seed)
    pieces = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) // 3)))
    content, calls, _ = _streamed(text, pieces)
    whole_content, whole_calls = parse_tool_calls(text)
    assert content == whole_content == "Let me <b>check</b> <tool_ <\nthen <tool_call>oops</tool_call>. <tool_ca"
    assert _names(calls) == _names(whole_calls) == [("lookup_vendor", {"vat_id": "KR-1", "이름": "한울"}), ("get_total", {})]


def test_one_character_at_a_time_holds_back_a_possible_marker():
    text = f"Total due.\n{CALL}"
    content, calls, deltas = _streamed(text, list(range(1, len(text))))
    assert content == "Total due." and _names(calls) == [("lookup_vendor", {"vat_id": "KR-1", "이름": "한울"})]
    assert not any("<" in delta for delta in deltas)  # no piece of the block leaked into the content
    parser = ToolCallParser()
    assert parser.feed("x <tool").content == "x"  # " <tool" may still be a call
    assert parser.feed("box").content == " <toolbox"  # now it is not
    assert parser.feed(" ").content == "" and parser.finish().content == " "  # whitespace waits, then is kept


def test_after_the_reasoning_parser_on_a_streamed_reply():
    """The server's order: reasoning split off first, then calls parsed out of the answer text."""
    from exaone_edge.runtime.reasoning import ReasoningParser

    reply = f"I should look the vendor up.\n</think>\n\nOne moment.\n{CALL}"
    reasoning_parser, call_parser = ReasoningParser(in_reasoning=True), ToolCallParser()
    reasoning, content, calls = [], [], []
    for index in range(0, len(reply), 3):
        split = reasoning_parser.feed(reply[index:index + 3])
        reasoning.append(split.reasoning)
        out = call_parser.feed(split.content)
        content.append(out.content)
        calls.extend(out.calls)
    rest = reasoning_parser.finish()
    reasoning.append(rest.reasoning)
    out, tail = call_parser.feed(rest.content), call_parser.finish()
    content += [out.content, tail.content]
    assert "".join(reasoning) == "I should look the vendor up.\n"
    assert "".join(content) == "One moment."
    assert _names(calls + list(out.calls)) == [("lookup_vendor", {"vat_id": "KR-1", "이름": "한울"})]
