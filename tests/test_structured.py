"""Grammars for structured replies, checked where llama.cpp applies them: token by token on the tiny bundle's
vocabulary, through llama.cpp's own grammar sampler (no model in the loop, so every path is reached)."""

from __future__ import annotations

import ctypes
import json
import math

import pytest

from exaone_edge.errors import InputError
from exaone_edge.runtime.grammar import check_grammar_shape
from exaone_edge.runtime.structured import ANY_JSON_OBJECT, Answer, answer_grammar, unenforced_keywords
from runtime_bundle_fixture import build_tiny_bundle

THINK_END = "</think>"
TOOLS = ({"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"id": {"type": "string", "maxLength": 4}}, "required": ["id"]}}},)
SCHEMA = {"type": "object", "properties": {"total": {"type": "integer"}, "currency": {"enum": ["KRW", "USD"]}},
          "required": ["total", "currency"], "additionalProperties": False}


@pytest.fixture(scope="module")
def vocab(tiny_model_dir, tmp_path_factory):
    from exaone_edge.bundle import load_bundle
    from exaone_edge.llama import Model

    bundle = build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("structured") / "bundle")
    model = Model(load_bundle(bundle).decoder_path, vocab_only=True)
    yield model
    model.close()


class GrammarWalk:
    """llama.cpp's grammar sampler alone: which tokens it allows next, and accepting one."""

    def __init__(self, model, grammar: str) -> None:
        import llama_cpp

        self.model, self.lib, self.llama_cpp = model, model._lib, llama_cpp
        self.sampler = self.lib.llama_sampler_init_grammar(model._vocab, grammar.encode(), b"root")
        assert self.sampler, "llama.cpp refused the grammar"

    def allowed(self) -> set[int]:
        n = self.model.n_vocab
        data = (self.llama_cpp.llama_token_data * n)(*[self.llama_cpp.llama_token_data(i, 0.0, 0.0) for i in range(n)])
        array = self.llama_cpp.llama_token_data_array(data, n, -1, False)
        self.lib.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return {data[i].id for i in range(array.size) if not math.isinf(data[i].logit)}

    def accept_text(self, text: str) -> None:
        for token in self.model.tokenize(text, parse_special=True):
            assert token in self.allowed(), (text, self.model.piece(token, special=True))
            self.lib.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        self.lib.llama_sampler_free(self.sampler)


def eog(model) -> set[int]:
    return {t for t in range(model.n_vocab) if model.is_end_of_generation(t)}


def test_with_thinking_the_reasoning_is_free_and_the_answer_is_constrained(vocab):
    end = vocab.tokenize(THINK_END, parse_special=True)
    assert len(end) == 1
    walk = GrammarWalk(vocab, answer_grammar(Answer(schema=SCHEMA), think_end=THINK_END))
    any_text = GrammarWalk(vocab, "root ::= [^\\x00]*")  # what any free text may start with
    # Any token free text may start with (byte-split characters included), the marker too...
    assert walk.allowed() == any_text.allowed() - eog(vocab)
    assert end[0] in walk.allowed() and not walk.allowed() & eog(vocab)  # ...but the turn cannot end in the reasoning
    any_text.close()
    walk.accept_text("합계는 하단에 { not JSON yet </thin")  # reasoning: Hangul, braces, a near-marker
    walk.accept_text(THINK_END + "\n\n")
    assert not walk.allowed() & eog(vocab)
    assert all(vocab.piece(t, special=True).lstrip().startswith(b"{") or not vocab.piece(t, special=True).strip()
               for t in walk.allowed())  # the answer can only open an object
    walk.accept_text('{"total": 1250, "currency": "USD"}')
    assert walk.allowed() <= eog(vocab) | {t for t in walk.allowed() if vocab.piece(t, special=True).strip() == b""}
    walk.close()


def test_without_thinking_the_reply_is_only_the_answer(vocab):
    walk = GrammarWalk(vocab, answer_grammar(Answer(schema=SCHEMA), think_end=None))
    with pytest.raises(AssertionError):
        walk.accept_text(THINK_END)
    walk.close()


def test_a_required_call_must_name_a_declared_function_with_valid_arguments(vocab):
    grammar = answer_grammar(Answer(tools=TOOLS, calls_required=True, parallel_calls=False), think_end=None)
    walk = GrammarWalk(vocab, grammar)
    walk.accept_text('<tool_call>{"name": "lookup", "arguments": {"id": "A7"}}</tool_call>')
    assert walk.allowed() <= eog(vocab)  # one call only, then the end of the turn
    walk.close()
    for wrong in ('<tool_call>{"name": "other"', '<tool_call>{"name": "lookup", "arguments": {"id": "A7", "x"',
                  '<tool_call>{"name": "lookup", "arguments": {"id": "A7xyz', "Sure"):
        walk = GrammarWalk(vocab, grammar)
        with pytest.raises(AssertionError):
            walk.accept_text(wrong)
        walk.close()


def test_strings_in_json_answers_refuse_raw_control_characters(vocab):
    walk = GrammarWalk(vocab, answer_grammar(Answer(schema=ANY_JSON_OBJECT), think_end=None))
    walk.accept_text('{"note": "line')
    newline = vocab.tokenize("\n", parse_special=False)
    assert not set(newline) & walk.allowed()  # json.loads and pydantic refuse a raw newline inside a string
    walk.accept_text('\\n"}')
    assert json.loads('{"note": "line\\n"}')
    walk.close()


def test_unenforced_keywords_are_listed_with_their_path():
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 0, "description": "ok"},
        "tags": {"type": "array", "items": {"type": "string", "format": "email"}, "uniqueItems": True},
        "code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 4}},
        "$defs": {"X": {"not": {"type": "null"}}}}
    assert sorted(unenforced_keywords(schema)) == sorted([
        "/properties/n/minimum", "/properties/tags/uniqueItems", "/properties/tags/items/format:email",
        "/properties/code/maxLength", "/$defs/X/not"])
    assert unenforced_keywords(SCHEMA) == []


def test_schemas_the_converter_cannot_take_are_input_errors():
    with pytest.raises(InputError, match="cannot be turned into a grammar"):
        answer_grammar(Answer(schema={"$ref": "https://example.com/remote.json"}), think_end=None)
    with pytest.raises(InputError, match="nothing to constrain"):
        answer_grammar(Answer(), think_end=None)


def test_repetitions_are_bounded_before_the_converter_writes_them_out(vocab):
    """The converter writes `minItems: n` as n copies of the item's rule: 10^12 is refused before anything is built
    (it would be terabytes in the server); a line-item list with maxItems 200 (200 nested optional groups) passes,
    and llama.cpp's sampler takes it."""
    for schema in ({"type": "array", "items": {"type": "integer"}, "minItems": 10**12},
                   {"type": "string", "maxLength": 10**12},
                   {"type": "string", "pattern": "^((a{1000}){1000}){1000}$"}):
        with pytest.raises(InputError, match="too large to turn into a grammar"):
            answer_grammar(Answer(schema=schema), think_end=None)
    lines = {"type": "array", "items": SCHEMA, "maxItems": 200}
    walk = GrammarWalk(vocab, answer_grammar(Answer(schema=lines), think_end=None))
    walk.accept_text('[{"total": 1, "currency": "KRW"}, {"total": 2, "currency": "USD"}]')
    walk.close()


def test_every_generated_grammar_passes_the_shape_check():
    for answer in (Answer(schema=SCHEMA), Answer(schema=ANY_JSON_OBJECT), Answer(tools=TOOLS, calls_required=True),
                   Answer(schema=SCHEMA, tools=TOOLS)):
        for think in (None, THINK_END):
            check_grammar_shape(answer_grammar(answer, think_end=think))
