"""The engine under failure and departure, through the HTTP server: a failure choosing a slot, a dead decode
thread (/health 503, and `serve` exits), a client that leaves during vision encoding, the slot wait or the
prefill, and a streaming client that stops reading. Faults are injected into a real engine on the tiny
bundle; the app runs under uvicorn on loopback (the exit test runs `exaone-edge serve` itself).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from exaone_edge.bundle import load_bundle
from exaone_edge.engine_settings import EngineSettings
from exaone_edge.runtime.engine import Engine
from exaone_edge.runtime.generation import GenerationParams
from exaone_edge.runtime.server import ServerSettings, create_app
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import (_wait_for_url, data_url, image_part, png_bytes, request_then_leave, serve_in_process, user,
                             wait_for)

MODEL = "bundle"
WAIT_S = 120  # the bound on every wait for a condition: generous, since a busy machine only makes them slower


class GatedEncoder:
    """A stand-in vision encoder, 4 rows of the decoder's width per image; after `hold()` every image waits in
    `encode` (`entered` set) until the test sets `gate`, so a test knows for certain that an image is in flight."""

    def __init__(self, width: int) -> None:
        self.width, self.runs = width, 0
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def rows_for(self, image_size) -> int:
        return 4

    def encode(self, image) -> np.ndarray:
        self.entered.set()
        self.gate.wait(WAIT_S)
        self.runs += 1
        return np.random.default_rng(self.runs).standard_normal((4, self.width)).astype(np.float32)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("scheduler") / MODEL)


@pytest.fixture(scope="module")
def engine(bundle):
    loaded = load_bundle(bundle)
    engine = Engine(loaded, EngineSettings(n_ctx=1024, n_threads=1, n_batch=32),
                    vision=GatedEncoder(loaded.spec.decoder.hidden_size))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_process(create_app(engine, ServerSettings())) as base:
        yield base


def body(**overrides) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, **overrides}


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=WAIT_S)


def wait_idle(url: str) -> None:
    def idle() -> bool:
        state = health(url).json()
        return state["running"] == 0 and state["queue_depth"] == 0

    wait_for(idle, "the server stayed busy")


def assert_answers(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=body(), timeout=WAIT_S)
    assert response.status_code == 200, response.text


def recording(monkeypatch, obj, name: str, hook=None) -> list:
    """Wrap `obj.name`: each call's (args, kwargs) is recorded, then `hook(*args)` runs, then the real call."""
    calls, original = [], getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        if hook is not None:
            hook(*args)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def gate(count: int = 1) -> tuple[threading.Event, threading.Event, Callable[..., None]]:
    """(open, holding, hook): the hook blocks its `count`-th call (and every later one) until `open` is set."""
    opened, holding, calls = threading.Event(), threading.Event(), []

    def hook(*args) -> None:
        calls.append(args)
        if len(calls) >= count:
            holding.set()
            opened.wait(WAIT_S)

    return opened, holding, hook


def test_a_failure_choosing_a_slot_fails_only_that_request(url, engine, monkeypatch):
    def broken(request):
        monkeypatch.undo()  # once
        raise RuntimeError("bug in slot choice")

    monkeypatch.setattr(engine.scheduler, "_choose_slot", broken)
    response = httpx.post(f"{url}/v1/chat/completions", json=body(), timeout=WAIT_S)
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    wait_idle(url)  # its queue slot and its generation are given back (the 500 may be sent a moment before)
    assert health(url).json()["status"] == "ok"
    assert_answers(url)


def test_a_client_leaving_during_vision_encoding_stops_it(url, engine, monkeypatch):
    prefills = recording(monkeypatch, engine.llama, "prefill")
    generations = recording(monkeypatch, engine, "generate")
    runs = engine.vision.runs
    pages = [image_part(data_url(png_bytes(Image.new("RGB", (16, 16), (i * 40, 0, 0))), "image/png")) for i in range(5)]
    engine.vision.hold()
    try:
        with request_then_leave(url, body(messages=user(*pages), max_tokens=8)):
            assert engine.vision.entered.wait(WAIT_S), "the first page never reached the encoder"
        # The first page stays in the encoder until the engine has been told that the client left.
        wait_for(lambda: generations and generations[0][1]["cancel"].is_set(), "the engine was never told the client left")
    finally:
        engine.vision.gate.set()
    wait_idle(url)
    assert engine.vision.runs - runs == 1 and prefills == []  # the page in flight finished; no other, and no prefill
    monkeypatch.undo()
    assert_answers(url)


def test_a_client_leaving_during_the_prefill_stops_it(url, engine, monkeypatch):
    submitted = recording(monkeypatch, engine.scheduler, "submit")
    opened, holding, hold = gate()
    batches = recording(monkeypatch, engine.llama, "_decode", hook=hold)  # 32 positions a batch
    long = body(messages=[{"role": "user", "content": "invoice total amount due " * 70}], max_tokens=4)  # ~20 batches
    try:
        with request_then_leave(url, long):
            assert holding.wait(WAIT_S), "the prefill never started"
        # Its first batch stays in llama_decode until the scheduler has been told that the client left.
        wait_for(lambda: submitted and submitted[0][0][0].cancelled, "the scheduler was never told the client left")
    finally:
        opened.set()
    wait_idle(url)
    assert len(batches) == 1  # the batch in flight when the client left, and not one more
    monkeypatch.undo()
    assert_answers(url)


def test_cancel_while_waiting_for_a_slot_or_decoding(engine, monkeypatch):
    prefills = recording(monkeypatch, engine.llama, "prefill")
    submitted = recording(monkeypatch, engine.scheduler, "submit")
    opened, holding, hold = gate(count=3)
    steps = recording(monkeypatch, engine.llama, "decode_step", hook=hold)
    first_cancel, second_cancel, ended = threading.Event(), threading.Event(), {}
    params = GenerationParams(max_tokens=900, ignore_eos=True)
    messages = [{"role": "user", "content": "Count."}]

    def run(name, cancel):
        ended[name] = list(engine.generate(messages, params, cancel=cancel))

    first = threading.Thread(target=run, args=("first", first_cancel))
    second = threading.Thread(target=run, args=("second", second_cancel))
    try:
        first.start()
        assert holding.wait(WAIT_S), "the first request never decoded"  # held in its third decode step
        second.start()  # one slot, held by the first: the second waits in the queue
        wait_for(lambda: len(submitted) == 2, "the second request was never queued")
        second_cancel.set()
        second.join(WAIT_S)
        # Ended while the decode thread is still held in the first request's step: a queued request leaves the
        # queue without waiting for any step, and never reaches a slot.
        assert ended.get("second") == [] and len(prefills) == 1 and len(steps) == 3
        first_cancel.set()  # now the decoding one
    finally:
        for event in (opened, first_cancel, second_cancel):
            event.set()
    first.join(WAIT_S)
    assert "first" in ended and all(chunk.finish_reason is None for chunk in ended["first"])  # no summary: cancelled
    assert engine.scheduler.running == 0


def test_a_stalled_streaming_client_loses_its_slot(engine, url):
    settings = ServerSettings(send_timeout_s=0.5)
    app = create_app(engine, settings)
    state = app.state
    payload = json.dumps(body(max_tokens=600, ignore_eos=True, stream=True)).encode()

    async def drive() -> list[dict]:
        sent: list[dict] = []
        pending = [{"type": "http.request", "body": payload, "more_body": False}]

        async def receive():
            if pending:
                return pending.pop()
            await asyncio.Event().wait()  # the client never leaves

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and len(sent) > 3:
                await asyncio.Event().wait()  # its TCP window and our buffers are full: nothing drains

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(payload)).encode())]}
        # The client neither reads nor leaves, and 600 tokens are asked for: only the send timeout ends this call.
        await asyncio.wait_for(app(scope, receive, send), WAIT_S)
        return sent

    sent = asyncio.run(drive())
    assert sent[0]["status"] == 200 and not any(m.get("more_body") is False for m in sent)  # cut off, never completed
    wait_for(lambda: not (state.worker.running or state.worker.admitted), "the stalled stream kept its slot")
    assert state.metrics.cancelled._value.get() == 1
    assert_answers(url)


class _Fatal(BaseException):
    """Escapes every `except Exception`: what a dying decode thread looks like."""


def test_a_dead_decode_thread_turns_health_503(bundle, monkeypatch):
    engine = Engine.load(bundle, n_ctx=256, n_threads=1)
    try:
        def fatal(steps):
            raise _Fatal("injected")

        monkeypatch.setattr(engine.llama, "decode_step", fatal)
        with serve_in_process(create_app(engine, ServerSettings())) as base:
            assert health(base).status_code == 200
            response = httpx.post(f"{base}/v1/chat/completions", json=body(max_tokens=4), timeout=WAIT_S)
            assert response.status_code == 503 and response.json()["error"]["code"] == "engine_failed"
            sick = health(base)
            assert sick.status_code == 503 and sick.json()["status"] == "error"
            assert sick.json()["error"]["type"] == "server_error"
            for stream in (False, True):
                again = httpx.post(f"{base}/v1/chat/completions", json=body(stream=stream), timeout=WAIT_S)
                assert again.status_code == 503 and again.json()["error"]["code"] == "engine_failed"
    finally:
        engine.close()


PREAMBLE = """
from exaone_edge.runtime.scheduler import Scheduler
class Fatal(BaseException):
    pass
def step(self):
    raise Fatal("injected")
Scheduler._step = step
from exaone_edge.cli import main
main()
"""


def test_serve_exits_when_the_decode_thread_dies(bundle):
    process = subprocess.Popen([sys.executable, "-c", PREAMBLE, "serve", str(bundle), "--port", "0", "--ctx", "256",
                                "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import queue

    lines, log = queue.Queue(), []

    def read():
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        base = _wait_for_url(lines, process, log)
        response = httpx.post(f"{base}/v1/chat/completions", json=body(max_tokens=4), timeout=WAIT_S)
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_failed"
        code = process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(log)
    assert code == 1, text
    assert "decode thread died" in text and text.rstrip().splitlines()[-1].startswith("error: the engine's decode thread died")
