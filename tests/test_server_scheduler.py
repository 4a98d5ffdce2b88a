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
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from exaone_edge.bundle import load_bundle
from exaone_edge.runtime.engine import Engine, EngineOptions
from exaone_edge.runtime.generation import GenerationParams
from exaone_edge.runtime.server import ServerSettings, create_app
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import _wait_for_url, data_url, image_part, png_bytes, serve_in_process, user

MODEL = "bundle"


class SlowEncoder:
    """A stand-in vision encoder: `seconds` per image, 4 rows of the decoder's width each."""

    def __init__(self, width: int, seconds: float) -> None:
        self.width, self.seconds, self.runs = width, seconds, 0

    def rows_for(self, image_size) -> int:
        return 4

    def encode(self, image) -> np.ndarray:
        time.sleep(self.seconds)
        self.runs += 1
        return np.random.default_rng(self.runs).standard_normal((4, self.width)).astype(np.float32)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("scheduler") / MODEL)


@pytest.fixture(scope="module")
def engine(bundle):
    loaded = load_bundle(bundle)
    engine = Engine(loaded, EngineOptions(n_ctx=1024, n_threads=1, n_batch=32),
                    vision=SlowEncoder(loaded.spec.decoder.hidden_size, 0.4))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_process(create_app(engine, ServerSettings())) as base:
        yield base


def body(**overrides) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, **overrides}


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=10)


def wait_idle(url: str, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        state = health(url).json()
        if state["running"] == 0 and state["queue_depth"] == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still busy after {seconds} s: {health(url).json()}")


def assert_answers(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=body(), timeout=60)
    assert response.status_code == 200, response.text


def leave_after(url: str, payload: dict, seconds: float) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=httpx.Timeout(60, read=seconds))


def counting(monkeypatch, obj, name: str, delay: float = 0.0) -> list:
    calls, original = [], getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(delay)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_a_failure_choosing_a_slot_fails_only_that_request(url, engine, monkeypatch):
    def broken(request):
        monkeypatch.undo()  # once
        raise RuntimeError("bug in slot choice")

    monkeypatch.setattr(engine.scheduler, "_choose_slot", broken)
    response = httpx.post(f"{url}/v1/chat/completions", json=body(), timeout=30)
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    state = health(url).json()
    assert (state["status"], state["queue_depth"], state["running"]) == ("ok", 0, 0)  # its queue slot is free
    assert_answers(url)


def test_a_client_leaving_during_vision_encoding_stops_it(url, engine, monkeypatch):
    prefills = counting(monkeypatch, engine.llama, "prefill")
    runs = engine.vision.runs
    pages = [image_part(data_url(png_bytes(Image.new("RGB", (16, 16), (i * 40, 0, 0))), "image/png")) for i in range(5)]
    leave_after(url, body(messages=user(*pages), max_tokens=8), 0.6)  # 5 pages take 2 s to encode
    wait_idle(url, 3)
    time.sleep(0.5)
    assert engine.vision.runs - runs <= 3 and prefills == []  # stopped between images, never prefilled
    monkeypatch.undo()
    assert_answers(url)


def test_a_client_leaving_during_the_prefill_stops_it(url, engine, monkeypatch):
    decodes = counting(monkeypatch, engine.llama, "_decode", delay=0.1)  # 32 positions a batch, 0.1 s each
    long = body(messages=[{"role": "user", "content": "invoice total amount due " * 70}], max_tokens=4)  # ~650 positions
    left = time.monotonic()
    leave_after(url, long, 0.5)
    idle_s = wait_idle(url, 5)
    batches = len(decodes)
    monkeypatch.undo()
    print(f"prefill stopped after {batches} batches; slot free {idle_s:.2f} s after the client left")
    assert batches < 12 and time.monotonic() - left < 5  # the whole prompt is ~20 batches
    assert_answers(url)


def test_cancel_while_waiting_for_a_slot_or_decoding(engine, monkeypatch):
    prefills = counting(monkeypatch, engine.llama, "prefill")
    first_cancel, second_cancel, ended = threading.Event(), threading.Event(), {}
    params = GenerationParams(max_tokens=900, ignore_eos=True)
    messages = [{"role": "user", "content": "Count."}]

    def run(name, cancel):
        chunks = list(engine.generate(messages, params, cancel=cancel))
        ended[name] = (time.monotonic(), chunks)

    first = threading.Thread(target=run, args=("first", first_cancel))
    second = threading.Thread(target=run, args=("second", second_cancel))
    first.start()
    while not prefills:
        time.sleep(0.01)
    second.start()  # one slot: it waits
    time.sleep(0.3)
    cancelled = time.monotonic()
    second_cancel.set()
    second.join(timeout=5)
    assert ended["second"][0] - cancelled < 0.5 and ended["second"][1] == [] and len(prefills) == 1
    first_cancel.set()  # now the decoding one
    first.join(timeout=5)
    assert "first" in ended and ended["first"][1][-1].finish_reason is None  # no summary chunk: it was cancelled
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
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    start = time.monotonic()
    sent = asyncio.run(drive())
    elapsed = time.monotonic() - start
    assert sent[0]["status"] == 200 and not any(m.get("more_body") is False for m in sent)  # cut off, never completed
    deadline = time.monotonic() + 5
    while (state.worker.running or state.worker.admitted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (state.worker.running, state.worker.admitted) == (0, 0) and state.metrics.cancelled._value.get() == 1
    print(f"stalled stream cut off after {elapsed:.2f} s (send timeout 0.5 s)")
    assert elapsed < 5
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
            response = httpx.post(f"{base}/v1/chat/completions", json=body(max_tokens=4), timeout=30)
            assert response.status_code == 503 and response.json()["error"]["code"] == "engine_failed"
            sick = health(base)
            assert sick.status_code == 503 and sick.json()["status"] == "error"
            assert sick.json()["error"]["type"] == "server_error"
            for stream in (False, True):
                again = httpx.post(f"{base}/v1/chat/completions", json=body(stream=stream), timeout=30)
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
        response = httpx.post(f"{base}/v1/chat/completions", json=body(max_tokens=4), timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_failed"
        code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(log)
    assert code == 1, text
    assert "decode thread died" in text and text.rstrip().splitlines()[-1].startswith("error: the engine's decode thread died")
