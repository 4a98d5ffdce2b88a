"""A chat request's fields → what the engine is asked (GenerationParams) and how its reply is read back (ReplyShape).

Tools: `tool_choice` `none` declares no tool to the model (so it cannot call one) and parses nothing;
`auto` (the default with tools) declares them and parses any `<tool_call>` blocks out of the answer;
`required` and a named function also constrain the answer with a grammar, so it is always one or more
(one, for a named function or `parallel_tool_calls: false`) calls that parse, with arguments matching
the function's schema. `response_format` `json_object` / `json_schema` constrain the answer to JSON (any
object, or the schema); with thinking on, only the answer after `</think>` is constrained.
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_edge.runtime.generation import GenerationParams
from exaone_edge.runtime.server.errors import InvalidRequest
from exaone_edge.runtime.server.schemas import ChatCompletionRequest, NamedToolChoice
from exaone_edge.runtime.server.settings import ServerSettings
from exaone_edge.runtime.structured import (
    ANY_JSON_OBJECT,
    Answer,
    answer_grammar,
    reasoning_end,
    tool_subset,
    unenforced_keywords,
)


@dataclass(frozen=True)
class ReplyShape:
    parse_tools: bool = False  # split `<tool_call>` blocks out of the answer into `tool_calls`
    logprobs: bool = False


def generation_params(body: ChatCompletionRequest, settings: ServerSettings, chat) -> tuple[GenerationParams, ReplyShape]:
    """`chat`: the engine's ChatFormat (reasoning markers, and whether the prompt leaves the reply in reasoning)."""
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    kwargs = {"enable_thinking": settings.thinking, **(body.chat_template_kwargs or {})}  # serve --thinking
    if not isinstance(kwargs["enable_thinking"], bool):
        _refuse("chat_template_kwargs.enable_thinking", "must be true or false")
    tools = tuple(tool.model_dump(exclude_none=True) for tool in body.tools) if body.tools else None
    choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
    if choice != "none" and not tools:
        _refuse("tool_choice", "needs 'tools' to choose from")
    answer = _answer(body, tools, choice)
    if answer is not None and body.grammar is not None:
        _refuse("grammar", "cannot be combined with response_format or a required tool call (each sets the grammar)")
    if body.top_logprobs is not None and not body.logprobs:
        _refuse("top_logprobs", "needs 'logprobs': true")
    grammar = body.grammar
    if answer is not None:
        param = "tool_choice" if answer.calls_required else "response_format"
        grammar = answer_grammar(answer, think_end=reasoning_end(chat, kwargs), param=param)
    defaults = GenerationParams()
    params = GenerationParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.default_max_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        top_k=defaults.top_k if body.top_k is None else body.top_k,
        min_p=defaults.min_p if body.min_p is None else body.min_p,
        seed=body.seed,
        stop=stop,
        ignore_eos=body.ignore_eos,
        template_kwargs=kwargs,
        grammar=grammar,
        tools=tools if choice != "none" else None,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    return params, ReplyShape(parse_tools=choice != "none", logprobs=body.logprobs)


def _answer(body: ChatCompletionRequest, tools, choice) -> Answer | None:
    schema = None
    format_ = body.response_format
    if format_ is not None and format_.type == "json_object":
        schema = ANY_JSON_OBJECT
    elif format_ is not None and format_.type == "json_schema":
        if format_.json_schema is None or format_.json_schema.schema_ is None:
            _refuse("response_format.json_schema", "needs 'schema' (a JSON Schema object)")
        schema = format_.json_schema.schema_
        loose = unenforced_keywords(schema)
        if format_.json_schema.strict and loose:
            _refuse("response_format.json_schema.schema", f"strict, but the grammar cannot enforce {', '.join(loose[:5])}"
                    " (numeric bounds, uniqueItems, not, … are not turned into grammar); drop them or set strict false")
    if isinstance(choice, NamedToolChoice):
        return Answer(tools=tool_subset(tools, choice.function.name), calls_required=True, parallel_calls=False)
    if choice == "required":
        return Answer(tools=tools, calls_required=True, parallel_calls=body.parallel_tool_calls)
    if schema is None:
        return None  # `auto` alone: the model is free to call a tool or answer
    return Answer(schema=schema, tools=tools if choice == "auto" else (), parallel_calls=body.parallel_tool_calls)


def _refuse(param: str, what: str) -> None:
    raise InvalidRequest(f"{param}: {what}", param=param)
