"""Small on the wire, huge to handle: a real `exaone-edge serve` (tiny bundle with its ONNX vision export)
against the inputs that crashed, froze or exhausted it before. One test per class; in each, a valid request
is answered right after the bad ones, and the server's RSS stays within 1 GiB of its steady state while
they run (sampled every 20 ms by a thread of this process).

No test judges a time window: deadlines are asserted by their outcome (the status and the error), and
waits are bounded generously, so a busy machine only makes them slower.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from hostile_inputs import empty_messages_body, lying_page_tree_pdf, nested_grammar, nested_xobject_pdf, transparent_png
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import data_url, image_part, png_bytes, rss_bytes, serve_process, text_page, user

MODEL = "hostile"
GIB = 2**30
KEY = "k-" + "7" * 30
SETTINGS = {
    "EXAONE_EDGE_DECODE_MEMORY_BYTES": str(GIB),  # each decoding worker's address space
    "EXAONE_EDGE_HEADER_TIMEOUT_S": "2",
    "EXAONE_EDGE_BODY_TIMEOUT_S": "20",
    "EXAONE_EDGE_MAX_CONNECTIONS": "6",
}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    bundle = build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("hostile") / MODEL, vision_dir=tiny_vision_dir)
    key_file = tmp_path_factory.mktemp("secrets") / "api-key"
    key_file.write_text(KEY + "\n")
    args = ("--ctx", "1024", "--threads", "1", "--default-max-tokens", "2", "--prepare-timeout", "30",
            "--max-preparing", "2", "--api-key-file", str(key_file))
    with serve_process(bundle, *args, env=SETTINGS) as (url, pid):
        assert post(url, valid_image_request()).status_code == 200  # warm: the steady state includes the encoder
        yield url, pid


@pytest.fixture
def server(served):
    """The server, with its RSS watched for the whole test."""
    url, pid = served
    with rss_watch(pid) as peak:
        yield url, pid
        assert post(url, valid_image_request()).status_code == 200  # answered right after the bad requests
    assert peak.grown < GIB, f"server RSS grew by {peak.grown / 2**20:.0f} MiB"


class Peak:
    def __init__(self, baseline: int) -> None:
        self.baseline = baseline
        self.highest = baseline

    @property
    def grown(self) -> int:
        return self.highest - self.baseline


@contextmanager
def rss_watch(pid: int):
    peak = Peak(rss_bytes(pid))
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.highest = max(peak.highest, rss_bytes(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def post(url: str, content: bytes | dict, timeout: float = 120) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if isinstance(content, bytes):
        return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=timeout)
    return httpx.post(f"{url}/v1/chat/completions", json=content, headers=headers, timeout=timeout)


def request(messages=None, **extra) -> dict:
    return {"model": MODEL, "messages": messages or [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


def valid_image_request() -> dict:
    return request(user(image_part(data_url(png_bytes(text_page("TOTAL 12.50")), "image/png"))))


def pdf_request(pdf: bytes, pages: str | None = None) -> dict:
    file = {"file_data": data_url(pdf, "application/pdf"), "filename": "hostile.pdf", **({"pages": pages} if pages else {})}
    return request(user({"type": "file", "file": file}))


def error_of(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    assert response.status_code in ((status,) if isinstance(status, int) else status), response.text
    return response.json()["error"]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_pdf_bombs_are_stopped_in_their_worker_and_free_their_turn(server):
    url, pid = server
    bomb = nested_xobject_pdf(depth=9, fanout=10)  # ~5 KB asking pdfium for 10^9 fills
    assert len(bomb) < 8_000
    health: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        bombs = [pool.submit(post, url, pdf_request(bomb)) for _ in range(3)]
        while not all(f.done() for f in bombs):  # the event loop stays free meanwhile
            health.append(httpx.get(f"{url}/health", timeout=30).status_code)
            time.sleep(0.2)
    for future in bombs:
        error = error_of(future.result(), (400, 408))
        assert "hostile.pdf" in error["message"] and ("stopped" in error["message"] or "took longer" in error["message"])
    assert health and set(health) == {200}
    assert len(children(pid)) <= 2  # at most one decoding worker per preparation turn (--max-preparing 2)
    # A PNG right behind them gets its turn and its answer.
    assert post(url, valid_image_request()).status_code == 200


def test_a_pdf_whose_page_tree_lies_is_the_senders_error(server):
    url, _ = server
    error = error_of(post(url, pdf_request(lying_page_tree_pdf(claimed=5), pages="2")), 400)
    assert error["code"] == "invalid_image" and "page 2 cannot be read" in error["message"]
    # A tree claiming a million pages: "every page" and a huge range are sized by arithmetic, never expanded.
    for pages in (None, "1-999999"):
        error = error_of(post(url, pdf_request(lying_page_tree_pdf(claimed=1_000_000), pages=pages)), 400)
        assert "999,999 pages selected" in error["message"] or "1,000,000 pages selected" in error["message"]


def test_images_are_sized_before_they_are_decoded(server):
    url, _ = server
    big = transparent_png(4096)  # ~64 KiB for 16.7 M pixels (320 MiB while decoding RGBA)
    assert len(big) < 100_000
    parts = [image_part(data_url(big, "image/png")) for _ in range(4)]  # 67 M pixels > the 64 M request cap
    error = error_of(post(url, request(user(*parts))), 400)
    assert "left for this request" in error["message"]
    with ThreadPoolExecutor(2) as pool:  # two at once, each decoded in its own worker
        answers = list(pool.map(lambda _: post(url, request(user(image_part(data_url(big, "image/png"))))), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]


def test_a_grammar_nested_32000_deep_is_refused_before_llama_cpp_parses_it(server):
    url, _ = server
    grammar = nested_grammar(32_000)
    assert len(grammar) < 65_536  # under the length cap: only the shape check stops it
    error = error_of(post(url, request(grammar=grammar)), 400)
    assert "nest deeper than" in error["message"]
    error = error_of(post(url, request(grammar="root ::= (")), 400)  # one llama.cpp itself would reject
    assert "grammar" in error["message"]
    error = error_of(post(url, request(grammar='root ::= "a" undefined-rule')), 400)
    assert "grammar" in error["message"]
    answer = post(url, request(grammar='root ::= "yes" | "no"', max_tokens=4))
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] in ("yes", "no")


def test_a_body_of_700000_empty_messages_is_refused_before_it_is_built(server):
    url, _ = server
    body = empty_messages_body(700_000, MODEL)
    assert len(body) < 2_200_000
    with ThreadPoolExecutor(3) as pool:
        floods = [pool.submit(post, url, body) for _ in range(2)]
        health = [httpx.get(f"{url}/health", timeout=30).status_code for _ in range(5)]
        errors = [error_of(f.result(), 400) for f in floods]
    assert set(health) == {200}
    assert all("JSON values, the limit is" in e["message"] for e in errors)
    # Under the node bound, a long list is still cut at its own limit before pydantic builds the messages.
    error = error_of(post(url, empty_messages_body(5_000, MODEL)), 400)
    assert error["param"] == "messages" and "limit is 1,024" in error["message"]


@pytest.mark.parametrize("kwargs", [{"self": 1}, {"messages": []}, {"__class__": 1}, {"not a name": 1}])
def test_template_arguments_that_could_collide_with_the_renderer_are_refused(server, kwargs):
    url, _ = server
    error = error_of(post(url, request(chat_template_kwargs=kwargs)), 400)
    assert error["param"].startswith("chat_template_kwargs")


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=120)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_clients_lose_their_connection(server):
    url, _ = server
    headers = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
    # Headers that never end: closed at the header deadline (2 s here), with nothing sent back.
    trickle = _connect(url)
    trickle.sendall(headers.encode())
    assert _read_all(trickle) == b""
    # Complete headers and a body that never ends: these hold connections (the body deadline is 20 s)...
    held = []
    for _ in range(5):
        sock = _connect(url)
        sock.sendall((headers + "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"").encode())
        held.append(sock)
    # ...so the next request is the 6th open connection (--max-connections 6, its own included): 503 at once.
    assert httpx.get(f"{url}/health", timeout=30).status_code == 503
    # Each held one gets 408 at its body deadline and is closed.
    for sock in held:
        reply = _read_all(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        sock.close()


def test_the_api_key_is_not_on_the_command_line(served):
    url, pid = served
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert KEY.encode() not in command and b"--api-key-file" in command
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
