"""The ASGI app: /v1/chat/completions (JSON or SSE), /v1/models, /health, /metrics, over one Engine.

    app = create_app(engine, ServerSettings())
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exaone_edge.decode_process import ProcessLimits
from exaone_edge.errors import ExaoneEdgeError
from exaone_edge.runtime.server.body import check_content_type, parse_json
from exaone_edge.runtime.server.errors import (
    AuthenticationFailed,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    InvalidRequest,
    ModelNotFound,
    UnsupportedParameter,
    error_body,
    error_status,
)
from exaone_edge.runtime.server.guard import RequestGuard
from exaone_edge.runtime.server.inputs import count_documents, engine_messages
from exaone_edge.runtime.server.limits import check_lists, check_request
from exaone_edge.runtime.server.metrics import ServerMetrics
from exaone_edge.runtime.server.params import generation_params
from exaone_edge.runtime.server.prepare import Preparation
from exaone_edge.runtime.server.replies import EventStream, complete, events
from exaone_edge.runtime.server.schemas import ChatCompletionRequest, ModelCard, ModelList
from exaone_edge.runtime.server.settings import ServerSettings
from exaone_edge.runtime.server.worker import EngineWorker

log = logging.getLogger("exaone_edge.serve")


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
         # What --ctx auto / --gpu-layers auto chose, from the free GPU memory at load.
         **({"fit": state.engine.fit.as_dict()} if getattr(state.engine, "fit", None) is not None else {}),
         # --draft: the drafter, k, acceptance rate and tokens/s since start.
         **({"draft": state.engine.drafting} if getattr(state.engine, "drafting", None) else {}),
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
    async with state.parsing:  # so is turning a JSON schema into a grammar
        params, shape = await asyncio.to_thread(generation_params, body, settings, engine.chat)
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
        stream = events(state, messages, params, shape, completion_id, include_usage, admitted)
        return EventStream(stream, on_close=ticket.release, send_timeout_s=settings.send_timeout_s)
    try:
        return await complete(request, state, messages, params, shape, completion_id, admitted)
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


_BRANCHES = ("str", "list", "NamedToolChoice")  # union branch names pydantic puts in a location


def _parse(body: bytes, settings: ServerSettings) -> ChatCompletionRequest:
    data = parse_json(body, settings.max_json_depth, settings.max_json_nodes)
    check_lists(data, settings)  # before any object is built from them
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        # Union branches add their type names to the location; keep the field path a client can find.
        def path(error) -> str:
            return ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p in _BRANCHES)))
        extra = next((e for e in errors if e["type"] == "extra_forbidden"), None)
        if extra is not None:  # a field we do not implement: refused by name, never silently dropped
            raise UnsupportedParameter(f"{path(extra)}: this server does not implement this field",
                                       param=path(extra)) from None
        first = errors[0]
        param = path(first)
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param or None) from None


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
