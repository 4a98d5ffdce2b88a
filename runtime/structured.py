"""Structured replies as llama.cpp grammars: JSON that matches a schema, and tool calls that always parse.

Schemas become GBNF through llama-cpp-python's own converter (`llama_cpp.llama_grammar.SchemaConverter`,
the Python twin of llama.cpp's json-schema-to-grammar), never a second one written here. On top of it:
- a tool call is EXAONE 4.5's `<tool_call>{"name": …, "arguments": {…}}</tool_call>` with `name` fixed to
  one of the declared functions and `arguments` matching its `parameters` schema;
- with thinking on, the reasoning stays free: any text without `</think>`, then `</think>`, then the
  constrained answer. The end-of-turn token is allowed only once the whole grammar is matched, so the
  model cannot stop inside the reasoning or the answer (llama.cpp allows end-of-generation only on a
  complete match); `max_tokens` can still cut it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exaone_edge.errors import InputError
from exaone_edge.runtime.grammar import check_grammar_shape
from exaone_edge.runtime.tool_calls import TOOL_CALL_MARKERS

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


# What llama-cpp-python 0.3.36's converter turns into grammar; `annotations` change nothing in a reply.
ENFORCED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "pattern", "format", "minLength", "maxLength",
})
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                         "readOnly", "writeOnly"})
ENFORCED_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
# The converter writes a repetition out in full: `minItems: n` becomes n copies of the item's rule name (a path of
# the schema's own keys, so at most twice the schema's text), a pattern's `{n}` n copies of what it repeats (nested
# quantifiers multiply). Such a count is checked before any of it is built; a result this long could never pass
# MAX_GRAMMAR_CHARS anyway, and building it would take a request-chosen amount of memory in the server.
MAX_EXPANSION_CHARS = 2**24
REPETITION_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength")
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def unenforced_keywords(schema: Any, path: str = "") -> list[str]:
    """`path/keyword` of every constraint in `schema` that the grammar would not enforce (the converter ignores
    `minimum`, `maximum`, `multipleOf`, `uniqueItems`, `not`, …), so a strict schema can be refused rather than
    half-kept."""
    if not isinstance(schema, Mapping):
        return []
    found = [f"{path}/{key}" for key in schema if key not in ENFORCED_KEYWORDS | ANNOTATIONS]
    if "format" in schema and schema["format"] not in ENFORCED_FORMATS:
        found.append(f"{path}/format:{schema['format']}")
    if "pattern" in schema:  # the converter follows the pattern alone
        found += [f"{path}/{key}" for key in ("minLength", "maxLength") if key in schema]
    for key in ("properties", "$defs", "definitions"):
        for name, child in (schema.get(key) or {}).items() if isinstance(schema.get(key), Mapping) else ():
            found += unenforced_keywords(child, f"{path}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        found += unenforced_keywords(schema.get(key), f"{path}/{key}")
    for key in ("prefixItems", "anyOf", "oneOf", "items"):
        if isinstance(schema.get(key), list):
            for index, child in enumerate(schema[key]):
                found += unenforced_keywords(child, f"{path}/{key}/{index}")
    return found


@dataclass(frozen=True)
class Answer:
    """What the reply after any reasoning must be: JSON for `schema`, and/or tool calls to `tools`."""

    schema: Mapping[str, Any] | None = None  # a JSON Schema; ANY_JSON_OBJECT for `json_object`
    tools: tuple[Mapping[str, Any], ...] = ()  # OpenAI function tools a call may name
    calls_required: bool = False  # True: the answer is one or more tool calls, never text
    parallel_calls: bool = True  # more than one call allowed


def answer_grammar(answer: Answer, *, think_end: str | None, param: str = "response_format") -> str:
    """GBNF whose `root` is [reasoning `</think>`] answer; `think_end`: the marker that ends the reasoning when the
    reply starts inside it (thinking on), else None."""
    converter = _converter()
    choices = []
    if answer.schema is not None and not answer.calls_required:
        choices.append(_visit(converter, answer.schema, "answer-json", param))
    extra = []
    if answer.tools:
        call_rule, calls = _call_rules(converter, answer, param="tools")
        extra.append(call_rule)
        choices.append(calls)
    if not choices:
        raise InputError(f"{param}: nothing to constrain the answer to")
    # Our rule names (root, answer, tool-call) cannot collide: the converter's own are primitives or prefixed.
    rules = [_strict_strings(converter.format_grammar()), *extra, f"answer ::= {' | '.join(choices)}"]
    if think_end is None:
        rules.append("root ::= answer")
    else:
        # Text, not token ids: a token-level `!<[id]>` would also refuse tokens that end inside a UTF-8
        # character (byte-split Hangul), so the reasoning is any text without the marker, then the marker.
        rules += _text_then(think_end, "reasoning", '[ \\t\\n]* answer')
        rules.append("root ::= reasoning-0")
    grammar = "\n".join(rules) + "\n"
    check_grammar_shape(grammar, param=param)
    return grammar


def _text_then(marker: str, name: str, then: str) -> list[str]:
    """Rules `NAME-k` for: any text in which `marker` does not occur, then `marker`, then `then`.

    One rule per automaton state (k characters of the marker matched, as in Knuth-Morris-Pratt), so the
    marker is the only way out; the recursion is in tail position, which llama.cpp's grammar does not stack.
    """
    chars = sorted(set(marker))

    def step(k: int, char: str) -> int:  # the longest prefix of `marker` that ends the text marker[:k] + char
        text = marker[:k] + char
        return next(n for n in range(min(len(text), len(marker)), -1, -1) if text.endswith(marker[:n]))

    other = "[^" + "".join(_class_char(c) for c in chars) + "]"
    rules = []
    for k in range(len(marker)):
        alternatives = [f"{json.dumps(c)} " + (then if step(k, c) == len(marker) else f"{name}-{step(k, c)}")
                        for c in chars]
        rules.append(f"{name}-{k} ::= " + " | ".join([*alternatives, f"{other} {name}-0"]))
    return rules


def _class_char(char: str) -> str:
    return "\\" + char if char in "]^-\\" else char


def _strict_strings(rules: str) -> str:
    """The converter's `char` rule admits raw control characters, which JSON forbids inside strings (json.loads and
    pydantic refuse them); llama.cpp's C++ converter has since excluded them, and so does this."""
    lines = rules.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("char ::= "):
            lines[index] = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
    return "\n".join(lines)


def _converter():
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False)


def check_expansion(schema: Any, text_chars: int, param: str) -> None:
    """InputError when a repetition in `schema` (serialized in `text_chars` characters) would be written out beyond
    MAX_EXPANSION_CHARS: a walk without recursion, before the converter builds anything."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, Mapping):
            continue
        pending.extend(node.values())
        for key in REPETITION_KEYWORDS:
            count = node.get(key)
            if isinstance(count, int) and count * 2 * text_chars > MAX_EXPANSION_CHARS:
                raise InputError(f"{param}: {key} {count:,} is too large to turn into a grammar "
                                 f"(the schema would be repeated past {MAX_EXPANSION_CHARS:,} characters)",
                                 fix="Lower the count, or drop it (the reply's length is bounded by max_tokens).")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            counts = [int(high or low) for low, high in _QUANTIFIER.findall(pattern)]
            if counts and math.prod(counts) * len(pattern) > MAX_EXPANSION_CHARS:
                raise InputError(f"{param}: the pattern's {{n}} repetitions are too large to turn into a grammar",
                                 fix="Use smaller counts, or + and * instead of {n,m}.")


def _visit(converter, schema: Mapping[str, Any], name: str, param: str) -> str:
    if not isinstance(schema, Mapping):
        raise InputError(f"{param}: the schema must be a JSON object")
    text = json.dumps(schema)
    check_expansion(schema, len(text), param)
    try:
        resolved = converter.resolve_refs(json.loads(text), "input")
        return converter.visit(resolved, name)
    except RecursionError:
        raise InputError(f"{param}: the schema nests too deeply to be turned into a grammar") from None
    except Exception as exc:  # the converter asserts and raises plain errors on what it does not support
        detail = str(exc) or type(exc).__name__
        raise InputError(f"{param}: this JSON Schema cannot be turned into a grammar ({detail[:200]})",
                         fix="Remove remote $ref URLs and unsupported keywords, or simplify the schema.") from None


def _call_rules(converter, answer: Answer, param: str) -> tuple[str, str]:
    """The `tool-call` rule, and the expression for the calls the answer may hold."""
    alternatives = []
    for index, tool in enumerate(answer.tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InputError(f"{param}.{index}: a function tool needs function.name")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        schema = {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                  "required": ["name", "arguments"], "additionalProperties": False}
        alternatives.append(_visit(converter, schema, f"call-{index}", f"{param}.{index}.function.parameters"))
    opening, closing = (json.dumps(marker) for marker in TOOL_CALL_MARKERS)
    rule = f"tool-call ::= {opening} space ({' | '.join(alternatives)}) space {closing}"
    return rule, ('(tool-call ("\\n" tool-call)*)' if answer.parallel_calls else "tool-call")


def reasoning_end(chat, template_kwargs: Mapping[str, Any] | None) -> str | None:
    """The marker that ends the reasoning (`</think>`) when the generation prompt leaves the reply inside it,
    else None (`chat`: the engine's runtime.prompt.ChatFormat)."""
    if chat.reasoning_markers is None or not chat.starts_in_reasoning(template_kwargs):
        return None
    return chat.reasoning_markers[1]


def tool_subset(tools: Sequence[Mapping[str, Any]], name: str) -> tuple[Mapping[str, Any], ...]:
    """The one tool a named `tool_choice` asks for; InputError when it was not declared."""
    chosen = tuple(t for t in tools if isinstance(t.get("function"), Mapping) and t["function"].get("name") == name)
    if not chosen:
        raise InputError(f"tool_choice: no declared tool is named {name[:64]!r}")
    return chosen
