"""The engine's chunks → OpenAI replies: one whole `chat.completion`, or `chat.completion.chunk` events (SSE).

Each chunk goes through the same steps either way: reasoning split from the answer (runtime/reasoning.py),
`<tool_call>` blocks split out of the answer when tools are in play (runtime/tool_calls.py), and token
log-probabilities turned into OpenAI's `logprobs.content` entries. A reply with tool calls ends with
`finish_reason: "tool_calls"`; its content is null when it holds nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from exaone_edge.runtime.generation import Chunk
from exaone_edge.runtime.reasoning import parser_for, split_chunks_async
from exaone_edge.runtime.server.errors import ClientGone, error_body
from exaone_edge.runtime.server.params import ReplyShape
from exaone_edge.runtime.server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    Delta,
    FunctionCallOut,
    PromptTokensDetails,
    TokenLogprob,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
)
from exaone_edge.runtime.tool_calls import ToolCall, ToolCallParser

log = logging.getLogger("exaone_edge.serve")
DISCONNECT_POLL_S = 0.25


@dataclass
class Piece:
    """What one engine chunk adds to the reply."""

    reasoning: str = ""
    content: str = ""
    calls: tuple[ToolCall, ...] = ()
    logprobs: list[TokenLogprob] = field(default_factory=list)


class ReplyReader:
    """Reads the (reasoning-split) chunks of one reply; `read` returns each chunk's piece."""

    def __init__(self, engine, shape: ReplyShape) -> None:
        self.engine = engine
        self.shape = shape
        self.tools = ToolCallParser() if shape.parse_tools else None
        self.called = 0

    def read(self, chunk: Chunk) -> Piece:
        piece = Piece(reasoning=chunk.reasoning, content=chunk.text)
        if self.tools is not None:
            found = self.tools.feed(chunk.text)
            calls = list(found.calls)
            content = found.content
            if chunk.finish_reason is not None:
                rest = self.tools.finish()
                content += rest.content
            piece.content, piece.calls = content, tuple(calls)
            self.called += len(calls)
        if self.shape.logprobs:
            piece.logprobs = [self._logprob(entry) for entry in chunk.logprobs]
        return piece

    def finish_reason(self, engine_reason: str) -> str:
        return "tool_calls" if self.called and engine_reason == "stop" else engine_reason

    def _logprob(self, entry) -> TokenLogprob:
        top = [self._top(token, logprob) for token, logprob in entry.top]
        return TokenLogprob(**self._top(entry.token, entry.logprob).model_dump(), top_logprobs=top)

    def _top(self, token: int, logprob: float) -> TopLogprob:
        data = self.engine.token_bytes(token)
        return TopLogprob(token=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(data))


def usage_of(chunk: Chunk) -> CompletionUsage:
    u = chunk.usage
    return CompletionUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           total_tokens=u.total_tokens, prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens))


def record(state, last: Chunk, admitted: float) -> dict[str, Any]:
    """Metrics for a finished generation; returns the timings reported to the client."""
    elapsed = time.perf_counter() - admitted
    t, u = last.timings, last.usage
    queue_s = max(elapsed - t.total_s, 0.0)
    m = state.metrics
    m.prompt_tokens.inc(u.prompt_tokens)
    m.cached_tokens.inc(u.cached_tokens)
    m.completion_tokens.inc(u.completion_tokens)
    m.ttft.observe(queue_s + t.ttft_s)
    m.duration.observe(elapsed)
    return {**asdict(t), "queue_s": queue_s, "image_rows": u.image_rows, "vision_runs": u.vision_runs}


def _tool_calls(calls) -> list[ToolCallOut]:
    return [ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments)) for call in calls]


async def complete(request, state, messages, params, shape: ReplyShape, completion_id: str, admitted: float) -> JSONResponse:
    """The whole reply; raises ClientGone (the generation is cancelled) if the client disconnects meanwhile."""
    reader = ReplyReader(state.engine, shape)

    async def collect():
        pieces, last = [], None
        parser = parser_for(state.engine.chat, params.template_kwargs)
        async with aclosing(split_chunks_async(state.worker.stream(messages, params), parser)) as chunks:
            async for chunk in chunks:
                pieces.append(reader.read(chunk))
                last = chunk
        return pieces, last

    task = asyncio.ensure_future(collect())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            state.metrics.cancelled.inc()
            raise ClientGone()
    pieces, last = task.result()
    timings = record(state, last, admitted)
    content = "".join(p.content for p in pieces)
    reasoning = "".join(p.reasoning for p in pieces)
    calls = [call for p in pieces for call in p.calls]
    message = AssistantMessage(content=content if content or not calls else None, reasoning_content=reasoning or None,
                               tool_calls=_tool_calls(calls) or None)
    logprobs = ChoiceLogprobs(content=[e for p in pieces for e in p.logprobs]) if shape.logprobs else None
    completion = ChatCompletion(
        id=completion_id, created=int(time.time()), model=state.model_id,
        choices=[Choice(message=message, finish_reason=reader.finish_reason(last.finish_reason), logprobs=logprobs)],
        usage=usage_of(last), timings=timings,
    )
    return JSONResponse(completion.model_dump(exclude_none=True))


async def events(state, messages, params, shape: ReplyShape, completion_id: str, include_usage: bool, admitted: float):
    """The reply as SSE lines: role, then reasoning / content / tool-call deltas, the finish, usage, [DONE]."""
    created = int(time.time())
    reader = ReplyReader(state.engine, shape)

    def event(choices, usage=None) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=state.model_id, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
    finished = False
    try:
        parser = parser_for(state.engine.chat, params.template_kwargs)
        async with aclosing(split_chunks_async(state.worker.stream(messages, params), parser)) as chunks:
            async for chunk in chunks:
                piece = reader.read(chunk)
                logprobs = ChoiceLogprobs(content=piece.logprobs) if piece.logprobs else None
                if piece.reasoning:  # reasoning travels in its own deltas, as vLLM sends it
                    yield event([ChunkChoice(delta=Delta(reasoning_content=piece.reasoning), logprobs=logprobs)])
                    logprobs = None
                if piece.content or logprobs is not None:
                    yield event([ChunkChoice(delta=Delta(content=piece.content), logprobs=logprobs)])
                first = reader.called - len(piece.calls)  # OpenAI numbers a reply's calls from 0
                for offset, call in enumerate(piece.calls):
                    delta = ToolCallDelta(index=first + offset, id=call.id,
                                          function=FunctionCallOut(name=call.name, arguments=call.arguments))
                    yield event([ChunkChoice(delta=Delta(tool_calls=[delta]))])
                if chunk.finish_reason is not None:
                    finished = True
                    record(state, chunk, admitted)
                    yield event([ChunkChoice(delta=Delta(), finish_reason=reader.finish_reason(chunk.finish_reason))])
                    if include_usage:
                        yield event([], usage=usage_of(chunk))
    except Exception as exc:  # headers are sent: the error travels as an event, as OpenAI does
        log.exception("generation failed")
        yield f"data: {json.dumps(error_body(exc)[1])}\n\n"
    finally:
        if not finished:
            state.metrics.cancelled.inc()
    yield "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """SSE that frees its queue slot however it ends: finished, failed, the client disconnected, or stalled.

    A client that accepts no byte for `send_timeout_s` while events wait (its TCP window and the
    server's buffers are full) loses the response: generation is cancelled and the connection closed.
    """

    def __init__(self, events, on_close, send_timeout_s: float) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close
        self._send_timeout_s = send_timeout_s

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            except TimeoutError:
                log.warning("a streaming client accepted nothing for %g s: its generation is cancelled", self._send_timeout_s)
                return  # the response stays incomplete: the server closes the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self._on_close()
