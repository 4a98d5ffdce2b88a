"""The ASGI app: /v1/chat/completions (JSON or SSE), /v1/models, /health, /metrics, over one Engine.

    app = create_app(engine, ServerSettings())
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from contextlib import aclosing, asynccontextmanager
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from exaone_edge.decode_process import ProcessLimits
from exaone_edge.errors import ExaoneEdgeError
from exaone_edge.runtime.generation import GenerationParams
from exaone_edge.runtime.reasoning import parser_for, split_chunks_async
from exaone_edge.runtime.server.body import check_content_type, parse_json
from exaone_edge.runtime.server.errors import (
    AuthenticationFailed,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    InvalidRequest,
    ModelNotFound,
    error_body,
    error_status,
)
from exaone_edge.runtime.server.guard import RequestGuard
from exaone_edge.runtime.server.inputs import count_documents, engine_messages
from exaone_edge.runtime.server.limits import check_lists, check_request
from exaone_edge.runtime.server.metrics import ServerMetrics
from exaone_edge.runtime.server.prepare import Preparation
from exaone_edge.runtime.server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ModelCard,
    ModelList,
    PromptTokensDetails,
)
from exaone_edge.runtime.server.settings import ServerSettings
from exaone_edge.runtime.server.worker import EngineWorker

log = logging.getLogger("exaone_edge.serve")
DISCONNECT_POLL_S = 0.25


class ServerState:
    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.model_id = settings.model_name or engine.model_id
        self.created = int(time.time())
        self.worker = EngineWorker(engine, settings.max_queue, engine.parallel)  # the engine's slots, however it was loaded
        self.metrics = ServerMetrics(self.worker)
        self.parsing = asyncio.Semaphore(settings.max_parsing)
        self.preparation = Preparation(settings.max_preparing, settings.prepare_timeout_s,  # image work only
                                       ProcessLimits(memory_bytes=settings.decode_memory_bytes, cpu_s=settings.prepare_timeout_s))


def create_app(engine: Any, settings: ServerSettings | None = None) -> CountRequests:
    """An app serving `engine` (an `Engine`, already loaded); the caller owns and closes the engine."""
    state = ServerState(engine, settings or ServerSettings())
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {ExaoneEdgeError: typed_error, HTTPException: http_error, Exception: unexpected_error}
    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        state.worker.close()
        state.preparation.close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = state
    return CountRequests(RequestGuard(app, state.settings), state)


class CountRequests:
    """Counts every response by path and status for /metrics (pure ASGI, so streaming is not buffered)."""

    def __init__(self, app: RequestGuard, state: ServerState) -> None:
        self.app = app
        self.state = state

    @property
    def model_id(self) -> str:
        return self.state.model_id

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in ("/health", "/metrics", "/v1/models", "/v1/chat/completions") else "other"

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.state.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


# -- routes --------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.server
    failure = getattr(state.engine, "failure", None)
    if failure is not None:  # the decode thread is gone: nothing can be generated until a restart
        status, body = error_body(failure)
        return JSONResponse({"status": "error", "model": state.model_id, **body}, status_code=status)
    placement = getattr(state.engine, "placement", None)
    image = getattr(state.engine, "image", None)
    return JSONResponse(
        {"status": "ok", "model": state.model_id, "queue_depth": state.worker.waiting, "running": state.worker.running,
         **({"placement": placement.as_dict()} if placement is not None else {}),
         # The page budget in force, so an operator can check that --image-max-tokens took effect.
         **({"image_max_tokens": state.engine.image_max_tokens, "image_max_pixels": image.max_pixels}
            if image is not None else {})}
    )


async def metrics(request: Request) -> Response:
    return Response(request.app.state.server.metrics.render(), media_type="text/plain; version=0.0.4")


async def models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    _authorize(request, state.settings)
    return JSONResponse(ModelList(data=[ModelCard(id=state.model_id, created=state.created)]).model_dump())


async def chat_completions(request: Request) -> Response:
    state: ServerState = request.app.state.server
    settings, engine = state.settings, state.engine
    _authorize(request, settings)
    check_content_type(request.headers.get("content-type"))
    raw = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    async with state.parsing:  # off the event loop, a few at a time: parsing a large body takes CPU time
        body = await asyncio.to_thread(_parse, raw, settings)
    del raw
    if body.model != state.model_id:
        raise ModelNotFound(f"model '{body.model[:256]}' is not served here", fix=f"This server serves '{state.model_id}'.")
    check_request(body, settings, engine.n_ctx)
    params = _params(body, settings)
    failure = getattr(engine, "failure", None)
    if failure is not None:
        raise failure
    ticket = state.worker.admit()
    admitted = time.perf_counter()
    try:
        max_pixels = engine.image.max_pixels  # the bundle's, or lower with --image-max-tokens
        if count_documents(body.messages):  # its own pool and deadline (408), so text-only requests never wait here
            messages = await state.preparation.run(engine_messages, body.messages, settings, max_pixels,
                                                   state.preparation.decoders)
        else:
            messages = engine_messages(body.messages, settings, max_pixels)
        # Images are decoded and checked even for a text-only bundle, so a bad file gets its own error;
        # engine.check then refuses images without a vision encoder, and prompts longer than the context.
        await state.worker.run_blocking(engine.check, messages, params)  # 4xx now, before any byte is streamed
    except BaseException:
        ticket.release()
        raise
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(state, messages, params, completion_id, include_usage, admitted)
        return EventStream(events, on_close=ticket.release, send_timeout_s=settings.send_timeout_s)
    try:
        return await _complete(request, state, messages, params, completion_id, admitted)
    except ClientGone:
        return Response(status_code=499)
    finally:
        ticket.release()


# -- request handling ----------------------------------------------------------------------------


def _authorize(request: Request, settings: ServerSettings) -> None:
    if settings.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed("missing API key", fix="Send the header 'Authorization: Bearer <key>'.")
    if not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
        raise AuthenticationFailed("incorrect API key")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"the request body has {int(length):,} bytes, the limit is {limit:,}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):  # a client trickling its body holds a connection and a buffer
            async for block in request.stream():
                body += block
                if len(body) > limit:
                    raise BodyTooLarge(f"the request body exceeds {limit:,} bytes")
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s",
                          fix="Send the whole body at once (the limit is the server's --body-timeout).") from None
    return bytes(body)


def _parse(body: bytes, settings: ServerSettings) -> ChatCompletionRequest:
    data = parse_json(body, settings.max_json_depth, settings.max_json_nodes)
    check_lists(data, settings)  # before any object is built from them
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        # Union branches add their type names to the location; keep the field path a client can find.
        param = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "list"))))
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param or None) from None


def _params(body: ChatCompletionRequest, settings: ServerSettings) -> GenerationParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    kwargs = {"enable_thinking": settings.thinking, **(body.chat_template_kwargs or {})}  # serve --thinking
    if not isinstance(kwargs["enable_thinking"], bool):
        param = "chat_template_kwargs.enable_thinking"
        raise InvalidRequest(f"{param}: must be true or false", param=param)
    defaults = GenerationParams()
    return GenerationParams(
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.default_max_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        top_k=defaults.top_k if body.top_k is None else body.top_k,
        min_p=defaults.min_p if body.min_p is None else body.min_p,
        seed=body.seed,
        stop=stop,
        ignore_eos=body.ignore_eos,
        template_kwargs=kwargs,
        grammar=body.grammar,
    )


def _usage(chunk) -> CompletionUsage:
    u = chunk.usage
    return CompletionUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
    )


def _record(state: ServerState, last, admitted: float) -> dict[str, Any]:
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


async def _complete(request, state, messages, params, completion_id, admitted) -> Response:
    async def collect():
        parts, thoughts, last = [], [], None
        parser = parser_for(state.engine.chat, params.template_kwargs)
        async with aclosing(split_chunks_async(state.worker.stream(messages, params), parser)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                thoughts.append(chunk.reasoning)
                last = chunk
        return "".join(parts), "".join(thoughts), last

    task = asyncio.ensure_future(collect())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            state.metrics.cancelled.inc()
            raise ClientGone()
    text, reasoning, last = task.result()
    timings = _record(state, last, admitted)
    completion = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=state.model_id,
        choices=[Choice(message=AssistantMessage(content=text, reasoning_content=reasoning or None),
                        finish_reason=last.finish_reason)],
        usage=_usage(last),
        timings=timings,
    )
    return JSONResponse(completion.model_dump(exclude_none=True))


async def _events(state, messages, params, completion_id, include_usage, admitted):
    created = int(time.time())

    def event(choices, usage=None) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=state.model_id, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
    finished = False
    try:
        parser = parser_for(state.engine.chat, params.template_kwargs)
        async with aclosing(split_chunks_async(state.worker.stream(messages, params), parser)) as chunks:
            async for chunk in chunks:
                if chunk.reasoning:  # reasoning travels in its own deltas, as vLLM sends it
                    yield event([ChunkChoice(delta=Delta(reasoning_content=chunk.reasoning))])
                if chunk.text:
                    yield event([ChunkChoice(delta=Delta(content=chunk.text))])
                if chunk.finish_reason is not None:
                    finished = True
                    _record(state, chunk, admitted)
                    yield event([ChunkChoice(delta=Delta(), finish_reason=chunk.finish_reason)])
                    if include_usage:
                        yield event([], usage=_usage(chunk))
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


# -- errors --------------------------------------------------------------------------------------


def _error_response(error: BaseException) -> JSONResponse:
    status, body = error_body(error)
    headers = {"Retry-After": "1"} if status == 429 else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers=headers)


async def typed_error(request: Request, error: Exception) -> Response:
    return _error_response(error)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    body = {"error": {"message": str(error.detail), "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def unexpected_error(request: Request, error: Exception) -> Response:
    if error_status(error)[0] == 500:  # a dead decoder (503) was logged once, with its cause, when it died
        log.error("unexpected error on %s", request.url.path, exc_info=error)
    return _error_response(error)
