"""`exaone-edge serve` as a real process on loopback, driven by the official `openai` client and raw HTTP.

Text-only tiny bundle (F32 decoder). Images are decoded and validated before the engine refuses them,
so every image error path is tested here too; image and PDF answers are in test_server_vision.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys

import httpx
import openai
import pytest
from PIL import Image

from conftest import run_cli
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import (bomb_png, data_url, image_part, pdf_bytes, png_bytes, request_then_leave, rss_bytes,
                             serve_process, user, wait_for)

KEY = "test-key-123"
MODEL = "bundle"
# One llama.cpp thread: with two on two shared cores, every step waits for the other thread to be scheduled
# (measured under load: 2 tokens/s with two threads, 70 with one). Context 2048: room for generations far
# longer than any client's departure takes, while _long_prompt (2,709 positions) still does not fit.
SERVER_ARGS = ("--ctx", "2048", "--threads", "1", "--max-images", "2", "--max-pdf-pages", "2",
               "--max-body-bytes", str(2 * 2**20), "--default-max-tokens", "4", "--max-request-pixels", "300000")
LONG = 2000  # tokens: a generation that cannot end before the test has left it


@pytest.fixture(scope="module")
def text_bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("serve") / MODEL)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("allowed")
    Image.new("RGB", (64, 48), "white").save(directory / "page.png")
    (directory / "escape.png").symlink_to("/etc/hostname")
    return directory


@pytest.fixture(scope="module")
def server(text_bundle, allowed):
    with serve_process(text_bundle, *SERVER_ARGS, "--allow-dir", str(allowed), "--max-queue", "3",
                       env={"EXAONE_EDGE_API_KEY": KEY}) as (url, pid):
        yield url, pid


def client(url: str, key: str = KEY, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=timeout)


def ask(url: str, max_tokens: int = 2, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Total amount?"}])
    kwargs.setdefault("model", MODEL)
    return client(url).chat.completions.create(max_tokens=max_tokens, **kwargs)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=120).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_openai_client_streaming_and_not(server):
    url, _ = server
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the total?"}]
    full = ask(url, max_tokens=12, messages=messages)
    assert full.model == MODEL and full.object == "chat.completion"
    assert full.choices[0].finish_reason in ("stop", "length") and full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens <= 12 and full.usage.prompt_tokens > 5
    stream = client(url).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content  # greedy: same answer streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # same prompt: prefix reused from the KV cache


def test_models_health_metrics(server):
    url, _ = server
    assert [m.id for m in client(url).models.list().data] == [MODEL]
    health = httpx.get(f"{url}/health", timeout=120).json()
    assert health["status"] == "ok" and health["model"] == MODEL
    before = metric(url, "exaone_edge_completion_tokens_total")
    answer = ask(url, max_tokens=3)
    assert metric(url, "exaone_edge_completion_tokens_total") == before + answer.usage.completion_tokens
    text = httpx.get(f"{url}/metrics", timeout=120).text
    for name in ("exaone_edge_queue_depth", "exaone_edge_time_to_first_token_seconds_count",
                 'exaone_edge_requests_total{path="/v1/chat/completions",status="200"}', "exaone_edge_prompt_tokens_total"):
        assert name in text


def _body(**overrides) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **overrides}


def _long_prompt() -> dict:
    return _body(messages=[{"role": "user", "content": "invoice total amount due " * 300}])


# name → (request body (bytes are sent raw), headers, expected status, expected error code)
BAD = {
    "invalid JSON": (b'{"model": "bundle", "messages": [', None, 400, "invalid_request"),
    "body not an object": (b"[1, 2]", None, 400, "invalid_request"),
    "content of the wrong type": (_body(messages=[{"role": "user", "content": 5}]), None, 400, "invalid_request"),
    "max_tokens of the wrong type": (_body(max_tokens="many"), None, 400, "invalid_request"),
    "unknown role": (_body(messages=[{"role": "wizard", "content": "x"}]), None, 400, "invalid_request"),
    "no messages": (_body(messages=[]), None, 400, "invalid_request"),
    "n > 1": (_body(n=2), None, 400, "invalid_request"),
    "negative temperature": (_body(temperature=-1), None, 400, "invalid_request"),
    "image that is not an image": (
        _body(messages=user(image_part(data_url(b"this is not a PNG at all", "image/png")))), None, 400, "invalid_image"),
    "data URL not base64": (_body(messages=user(image_part("data:image/png;base64,@@@"))), None, 400, "invalid_image"),
    "decompression bomb": (_body(messages=user(image_part(data_url(bomb_png(), "image/png")))), None, 400, "invalid_image"),
    "too many images": (
        _body(messages=user(*[image_part(data_url(png_bytes(Image.new("RGB", (8, 8))), "image/png"))] * 3)), None, 400, None),
    "too many pixels in one request": (
        _body(messages=user(*[image_part(data_url(png_bytes(Image.new("RGB", (400, 400))), "image/png"))] * 2)),
        None, 400, "invalid_image"),
    "too many PDF pages": (
        _body(messages=user(image_part(data_url(pdf_bytes([Image.new("RGB", (50, 70))] * 3), "application/pdf")))),
        None, 400, None),
    "PDF page out of range": (
        _body(messages=user({"type": "file", "file": {"file_data": data_url(pdf_bytes([Image.new("RGB", (50, 70))]),
                                                                          "application/pdf"), "pages": "4"}})),
        None, 400, None),
    "prompt longer than the context": (_long_prompt(), None, 400, "context_length_exceeded"),
    "unknown model": (_body(model="gpt-4o"), None, 404, "model_not_found"),
    "missing API key": (_body(), {"Authorization": ""}, 401, "invalid_api_key"),
    "wrong API key": (_body(), {"Authorization": "Bearer wrong-key"}, 401, "invalid_api_key"),
    "path outside the allowed directory": (_body(messages=user(image_part("/etc/hostname"))), None, 403, "not_allowed"),
    "file URL with .. out of the allowed directory": (None, None, 403, "not_allowed"),  # filled in by the test
    "symlink out of the allowed directory": (None, None, 403, "not_allowed"),
    "remote URL": (_body(messages=user(image_part("https://example.com/page.png"))), None, 403, "not_allowed"),
    "body too large": (_body(messages=[{"role": "user", "content": "x" * (3 * 2**20)}]), None, 413, "request_too_large"),
    "image on a text-only bundle": (None, None, 400, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_openai_error_and_next_request_succeeds(server, allowed, case):
    url, _ = server
    body, headers, status, code = BAD[case]
    if case.startswith("file URL"):
        body = _body(messages=user(image_part(f"file://{allowed}/../../etc/hostname")))
    elif case.startswith("symlink"):
        body = _body(messages=user(image_part(str(allowed / "escape.png"))))
    elif case.startswith("image on a text-only"):
        body = _body(messages=user(image_part(f"file://{allowed / 'page.png'}")))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})},
        timeout=120,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    assert error["type"] == {401: "invalid_request_error", 403: "permission_error"}.get(status, "invalid_request_error")
    if case.startswith("image on a text-only"):
        assert "no vision encoder" in error["message"]
    assert ask(url).choices[0].finish_reason in ("stop", "length")  # the server is still fine


def test_official_client_raises_typed_errors(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, key="nope").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        ask(url, model="other")
    with pytest.raises(openai.BadRequestError) as info:
        ask(url, messages=_long_prompt()["messages"])
    assert info.value.code == "context_length_exceeded"


def _wait_idle(url: str) -> None:
    def idle() -> bool:
        health = httpx.get(f"{url}/health", timeout=120).json()
        return health["running"] == 0 and health["queue_depth"] == 0

    wait_for(idle, "a generation kept running after its client left")


def test_client_disconnect_stops_generation(server):
    url, _ = server
    cancelled = metric(url, "exaone_edge_cancelled_generations_total")
    tokens = metric(url, "exaone_edge_completion_tokens_total")
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=_body(max_tokens=LONG, stream=True, ignore_eos=True),
                      headers=headers, timeout=120) as response:
        events = response.iter_lines()
        assert next(e for e in events if '"content"' in e and '"role"' not in e)  # generation has started
    _wait_idle(url)
    # The non-streaming path: the client leaves once its generation has reached the engine.
    started = metric(url, "exaone_edge_generations_started")
    with request_then_leave(url, _body(max_tokens=LONG, ignore_eos=True), headers):
        wait_for(lambda: metric(url, "exaone_edge_generations_started") == started + 1, "the generation never started")
    wait_for(lambda: metric(url, "exaone_edge_cancelled_generations_total") == cancelled + 2,
             "the server never noticed that the client left")
    _wait_idle(url)
    # No time window is judged: the metrics prove that neither generation ran to its end (a finished one adds
    # its tokens; 2,000 tokens take far longer than a departure to notice) and that both were cancelled.
    assert metric(url, "exaone_edge_cancelled_generations_total") == cancelled + 2
    assert metric(url, "exaone_edge_completion_tokens_total") == tokens
    assert ask(url).choices[0].finish_reason in ("stop", "length")


def test_a_request_that_leaves_while_queued_never_runs(server):
    url, _ = server
    started = metric(url, "exaone_edge_generations_started")
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=_body(max_tokens=LONG, stream=True, ignore_eos=True),
                         headers=headers) as running:
            lines = running.iter_lines()
            next(e for e in lines if '"content"' in e and '"role"' not in e)  # the first request is generating
            with http.stream("POST", f"{url}/v1/chat/completions", json=_body(max_tokens=LONG, stream=True),
                             headers=headers) as queued:
                assert queued.status_code == 200
                wait_for(lambda: httpx.get(f"{url}/health", timeout=120).json()["queue_depth"] == 1,
                         "the second request never queued")
    _wait_idle(url)
    assert metric(url, "exaone_edge_generations_started") == started + 1


def _one_client(url: str, requests: int) -> tuple[int, int, list[str]]:
    done = refused = 0
    other: list[str] = []
    for _ in range(requests):
        try:
            stream = client(url).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Summarize the page."}], max_tokens=3, stream=True
            )
            finish = [c.choices[0].finish_reason for c in stream if c.choices][-1]
            done += finish in ("stop", "length")
        except openai.RateLimitError as error:
            refused += error.status_code == 429
        except Exception as error:  # noqa: BLE001 — every other outcome is a failure, collected for the message
            other.append(repr(error))
    return done, refused, other


def test_load_8_streaming_clients_complete_or_get_429_and_memory_is_flat(server):
    url, pid = server
    rss = []
    for round_ in range(3):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _one_client(url, 5), range(8)))
        done, refused = sum(r[0] for r in results), sum(r[1] for r in results)
        other = [e for r in results for e in r[2]]
        assert not other, other[:3]
        assert done + refused == 40 and done >= 5
        rss.append(rss_bytes(pid))
        print(f"round {round_ + 1}: {done} completed, {refused} got 429, server RSS {rss[-1] / 2**20:.1f} MiB")
    assert metric(url, 'exaone_edge_requests_total{path="/v1/chat/completions",status="5') == 0
    assert rss[2] - rss[1] < 16 * 2**20 and rss[2] - rss[0] < 32 * 2**20
    _wait_idle(url)


def test_four_concurrent_requests_queue_and_each_runs_once(server):
    # Speed belongs to `exaone-edge bench` (its server line); here, the outcome: one slot and --max-queue 3, so
    # four at once are all admitted, each runs exactly once, and each gets the answer it would get alone.
    url, _ = server
    messages = [{"role": "user", "content": "Describe it."}]
    alone = ask(url, max_tokens=10, messages=messages).choices[0].message.content
    started = metric(url, "exaone_edge_generations_started")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(url, max_tokens=10, messages=messages), range(4)))
    assert [a.choices[0].message.content for a in answers] == [alone] * 4
    assert metric(url, "exaone_edge_generations_started") == started + 4


def test_parallel_server_batches_concurrent_requests(text_bundle):
    # F32 KV cache and no flash attention: greedy answers must not depend on what else is in the batch. That the
    # four share one llama_decode per step is recorded in test_runtime_engine.py; the speed that buys is
    # `exaone-edge bench`'s server line, not a unit test's.
    args = ("--ctx", "2048", "--threads", "1", "--parallel", "4", "--max-queue", "0", "--kv-type", "f32", "--flash-attn", "off")
    questions = ["What is the total?", "Who signed the contract?", "List the parties.", "요약해 주세요."]

    def answer(url: str, question: str, max_tokens: int = 12, stream: bool = False) -> dict:
        body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                "ignore_eos": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    with serve_process(text_bundle, *args) as (url, _):
        alone = [answer(url, q)["choices"][0]["message"]["content"] for q in questions]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda q: answer(url, q), questions))
        assert [a["choices"][0]["message"]["content"] for a in together] == alone
        assert all(a["usage"]["completion_tokens"] == 12 for a in together)
        assert metric(url, "exaone_edge_completion_tokens_total") == 8 * 12

        # Four long streams hold the four slots; with --max-queue 0 a fifth request is refused, not queued.
        with httpx.Client(timeout=120) as http, contextlib.ExitStack() as streams:
            lines = []  # kept: a dropped line iterator closes its connection
            for question in questions:
                body = _body(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=2000,
                             stream=True, ignore_eos=True)
                lines.append(streams.enter_context(http.stream("POST", f"{url}/v1/chat/completions", json=body)).iter_lines())
                next(e for e in lines[-1] if '"content"' in e and '"role"' not in e)
            assert httpx.get(f"{url}/health", timeout=120).json()["running"] == 4
            assert metric(url, "exaone_edge_requests_running") == 4
            assert http.post(f"{url}/v1/chat/completions", json=_body()).status_code == 429
        _wait_idle(url)


def test_import_loads_neither_torch_nor_transformers(text_bundle):
    code = (
        "import sys\n"
        "import exaone_edge.runtime.server as server\n"
        "from exaone_edge.runtime.engine import Engine\n"
        f"app = server.create_app(Engine.load({str(text_bundle)!r}, n_ctx=128, n_threads=1), server.ServerSettings())\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('heavy:', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_settings_flags_over_env_over_defaults(tmp_path):
    from exaone_edge.errors import InputError
    from exaone_edge.runtime.server import ServerSettings

    env = {"EXAONE_EDGE_MAX_QUEUE": "3", "EXAONE_EDGE_API_KEY": "env-key", "EXAONE_EDGE_ALLOW_DIR": f"{tmp_path}{os.pathsep}/srv"}
    settings = ServerSettings.resolve({"api_key": "flag-key", "port": None}, env)
    assert (settings.max_queue, settings.api_key, settings.port, settings.host) == (3, "flag-key", 8000, "127.0.0.1")
    assert settings.allow_dir == (tmp_path, tmp_path.__class__("/srv"))
    with pytest.raises(InputError, match="max_queue"):
        ServerSettings.resolve({}, {"EXAONE_EDGE_MAX_QUEUE": "many"})


def test_serve_cli_errors_are_one_line(tmp_path, text_bundle):
    missing = run_cli("serve", str(tmp_path / "nope"), "--port", "0")
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error:")
    bad_env = run_cli("serve", str(text_bundle), env={"EXAONE_EDGE_MAX_QUEUE": "-1"})
    assert bad_env.returncode != 0 and bad_env.stderr.strip().count("\n") == 0 and "max_queue" in bad_env.stderr
    bad_dir = run_cli("serve", str(text_bundle), "--allow-dir", str(tmp_path / "absent"))
    assert bad_dir.returncode != 0 and bad_dir.stderr.strip().count("\n") == 0 and "allow-dir" in bad_dir.stderr


def test_error_table_maps_typed_errors_once():
    from exaone_edge.errors import ArtifactError, InputError
    from exaone_edge.errors import ImageRejected
    from exaone_edge.errors import PromptTooLong
    from exaone_edge.runtime.server.errors import NotAllowed, QueueFull, error_body

    class NarrowerImageError(ImageRejected):
        pass

    expected = {PromptTooLong("x"): (400, "context_length_exceeded"), NarrowerImageError("x"): (400, "invalid_image"),
                InputError("x"): (400, None), NotAllowed("x"): (403, "not_allowed"), QueueFull("x"): (429, "queue_full"),
                ArtifactError("secret path"): (500, None), RuntimeError("secret"): (500, None)}
    for error, (status, code) in expected.items():
        got_status, body = error_body(error)
        assert (got_status, body["error"]["code"]) == (status, code), error
        if status == 500:
            assert "secret" not in body["error"]["message"]  # internals stay in the server log
