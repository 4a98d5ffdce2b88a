"""The OpenAI API that document apps use, against a real `serve` process and the real `openai` client: tool calls
(a full round trip, streamed and not), JSON-schema output (pydantic models out of `parse`), log-probabilities,
and unknown fields refused by name.

The tiny model's weights are random, so nothing here depends on what it "wants" to say: a required or named
tool call and a JSON schema are guaranteed by the grammar, and the schemas bound every string and list so
that the grammar admits only replies shorter than `max_tokens` (after a complete match only the end-of-turn
token is allowed).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import data_url, png_bytes, serve_process, text_page

MODEL = "api-bundle"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_invoice_total", "description": "The total of an invoice in the ledger.",
        "parameters": {"type": "object", "properties": {"invoice_id": {"type": "string", "maxLength": 12}},
                       "required": ["invoice_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount.",
        "parameters": {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 0, "maximum": 10**6},
                                                        "to": {"enum": ["KRW", "USD"]}},
                       "required": ["amount", "to"], "additionalProperties": False}}},
]


class LineItem(BaseModel):
    description: str = Field(max_length=16)
    amount: float


class Invoice(BaseModel):
    invoice_number: str = Field(max_length=12)
    currency: Literal["KRW", "USD"]
    total: float
    items: list[LineItem] = Field(max_length=2)


class BoundedInvoice(BaseModel):
    total: int = Field(ge=0)  # a numeric bound: the grammar cannot enforce it


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    bundle = build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("api") / MODEL, vision_dir=tiny_vision_dir)
    with serve_process(bundle, "--ctx", "8192", "--threads", "1") as (url, _):  # one: two contend on a busy box
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    # Generous: a grammar-bound reply may run to hundreds of tokens, and a busy machine slows every one.
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=900)


def invoice_page() -> dict:
    png = png_bytes(text_page("INVOICE A-7  TOTAL 1,250 USD", size=(224, 112)))
    return {"type": "image_url", "image_url": {"url": data_url(png, "image/png")}}


def ask_total() -> list[dict]:
    return [{"role": "user", "content": [invoice_page(), {"type": "text", "text": "What is the total of invoice A-7?"}]}]


def check_call(call, tools=TOOLS) -> dict:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in schemas
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == set(schemas[call.function.name]["required"])
    return arguments


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "convert_currency"}}])
def test_a_tool_call_round_trip(client, choice):
    first = client.chat.completions.create(model=MODEL, messages=ask_total(), tools=TOOLS, tool_choice=choice,
                                           max_tokens=200, temperature=0.8, seed=3)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    if isinstance(choice, dict):
        assert [call.function.name for call in message.tool_calls] == ["convert_currency"]
    results = []
    for call in message.tool_calls:
        check_call(call)
        results.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"total": 1250, "currency": "USD"})})
    history = [*ask_total(), message.model_dump(exclude_none=True), *results]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt
    none = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_tool_call(client):
    stream = client.chat.completions.create(model=MODEL, messages=ask_total(), tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, max_tokens=200, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                calls.setdefault(delta.index, delta)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]  # parallel_tool_calls=false: exactly one
    check_call(calls[0])
    history = [*ask_total(), {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude={"index"})]},
               {"role": "tool", "tool_call_id": calls[0].id, "content": "1,250 USD"}]
    answer = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4, stream=True)
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in answer)


def test_json_schema_output_parses_and_validates_every_time(client):
    for seed in range(4):  # sampled, not greedy: each reply differs, each must still validate
        completion = client.chat.completions.parse(model=MODEL, messages=ask_total(), response_format=Invoice,
                                                   max_tokens=600, temperature=1.0, seed=seed)
        assert completion.choices[0].finish_reason == "stop"
        invoice = completion.choices[0].message.parsed
        assert isinstance(invoice, Invoice)
    anything = client.chat.completions.create(model=MODEL, messages=ask_total(), max_tokens=600, seed=1, temperature=1.0,
                                              response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":  # an object's size is unbounded: length may cut it
        assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_top_logprobs_come_back_streamed_and_not(client):
    completion = client.chat.completions.create(model=MODEL, messages=ask_total(), max_tokens=5, logprobs=True,
                                                top_logprobs=5)
    entries = completion.choices[0].logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    for entry in entries:
        assert len(entry.top_logprobs) == 5 and entry.logprob <= 0
        assert sum(math.exp(top.logprob) for top in entry.top_logprobs) <= 1 + 1e-6
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the chosen is the likeliest
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    text = "".join(bytes(b for e in entries for b in e.bytes).decode("utf-8", errors="replace"))
    assert text.strip() == (completion.choices[0].message.content or "").strip() or not text
    stream = client.chat.completions.create(model=MODEL, messages=ask_total(), max_tokens=5, logprobs=True,
                                            top_logprobs=2, stream=True, stream_options={"include_usage": True})
    streamed, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed.extend(choice.logprobs.content if choice.logprobs else [])
    assert len(streamed) == usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in streamed)
    assert [e.token for e in streamed] == [e.token for e in entries]  # greedy: the same tokens either way


@pytest.mark.parametrize("extra, param", [({"frequency_penalty": 0.5}, "frequency_penalty"),
                                          ({"logit_bias": {"1": 5}}, "logit_bias"),
                                          ({"reasoning_effort": "low"}, "reasoning_effort")])
def test_an_unimplemented_field_is_refused_by_name(client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ask_total(), max_tokens=2, **extra)
    assert info.value.code == "unsupported_parameter" and info.value.param == param
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi", "name": "clerk"}])
    assert info.value.param == "messages.0.name"


def test_tool_and_format_mistakes_are_400s(client):
    cases = [dict(tool_choice="required"),  # no tools
             dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "missing"}}),
             dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),  # no schema
             dict(response_format={"type": "json_schema",
                                   "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}}),
             dict(top_logprobs=3)]  # without logprobs
    with pytest.raises(openai.BadRequestError) as info:  # strict (as parse() sends it) and not enforceable
        client.chat.completions.parse(model=MODEL, messages=ask_total(), max_tokens=2, response_format=BoundedInvoice)
    assert "/properties/total/minimum" in info.value.message
    for case in cases:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=ask_total(), max_tokens=2, **case)


def test_the_readme_extraction_example_runs_as_written(server, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## A page in, your own types out"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert 'model="bundle-q4"' in code and "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000/v1", f"{server}/v1").replace('model="bundle-q4"', f'model="{MODEL}"')
    (tmp_path / "key.txt").write_text("any-key\n")  # the test server has no key: any is accepted
    text_page("INVOICE A-7  2026-11-30  TOTAL 1,250 USD", size=(224, 112)).save(tmp_path / "invoice.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)  # not this file's __future__ import
    invoice = namespace["invoice"]
    assert type(invoice).__name__ == "Invoice" and invoice.currency in ("KRW", "USD", "EUR")
