"""A real `exaone-edge serve` process (or an in-process uvicorn) on loopback, and request payloads for the tests."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from exaone_edge.benchmarks.server_load import stop

START_TIMEOUT_S = 120


@contextmanager
def serve_process(bundle: Path, *args: str, env: dict[str, str] | None = None):
    """`exaone-edge serve BUNDLE --port 0 ARGS`; yields (base URL, pid). Stopped and reaped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "exaone_edge.cli", "serve", str(bundle), "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = _wait_for_url(lines, process, log)
        yield url, process.pid
    finally:
        stop(process, timeout_s=15)
        reader.join(timeout=5)
        sys.stderr.write("".join(log[-20:]))


def _wait_for_url(lines: queue.Queue[str], process: subprocess.Popen, log: list[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}:\n{''.join(log)}") from None
            continue
        if line.startswith("serving ") and " on http://" in line:
            url = line.rsplit(" on ", 1)[1].strip().removesuffix("/v1")
            _wait_healthy(url)
            return url
    raise AssertionError(f"serve did not start in {START_TIMEOUT_S} s:\n{''.join(log)}")


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=START_TIMEOUT_S).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/health never answered in {START_TIMEOUT_S} s")


@contextmanager
def serve_in_process(app):
    """The same app under uvicorn in a thread (for engines built with a test vision encoder)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        _wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for(condition, what: str, seconds: float = START_TIMEOUT_S) -> None:
    """Poll `condition` until it holds; a busy machine only makes this slower, never wrong."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {seconds:g} s)")
        time.sleep(0.02)


@contextmanager
def request_then_leave(url: str, payload: dict, headers: dict[str, str] | None = None):
    """A client that sends a whole chat request, reads nothing, and hangs up when the block ends."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(payload).encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    with socket.create_connection((host, int(port)), timeout=START_TIMEOUT_S) as client:
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        yield


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_bytes(pages: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width×height pixels, with a few compressed rows (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def text_page(text: str, size: tuple[int, int] = (160, 120)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), text, fill="black")
    return image


def openai_client(url: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def engine_answer(engine, images, question: str, max_tokens: int = 8) -> str:
    """The engine called in this process on the same pages, with the server's default: thinking off (EXAONE
    4.5's template alone would think)."""
    from exaone_edge.runtime.generation import GenerationParams, collect

    parts = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": question}]
    params = GenerationParams(max_tokens=max_tokens).thinking(False)
    return collect(engine.generate([{"role": "user", "content": parts}], params)).text


def image_part(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def user(*parts, text: str = "What is on this page?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


class LocalWeb:
    """A tiny HTTP server on a loopback address that records every request (path, Host) it gets.

    Routes: /page.png (a PNG), /missing (404), /to?u=URL (302 to URL), /loop (302 to itself),
    /slow (announces 100 kB, then sends one byte every 0.2 s), /gzip (a gzip-encoded body, asked or not),
    /held.png (sets `arrived`, then sends nothing until the test sets `release`, then the PNG: an upstream
    that is provably still busy for as long as the test wants; sets `gone` instead if the client closes the
    connection first). Any other path answers 200 "proxied".
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        self.hits: list[tuple[str, str]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.gone = threading.Event()
        png = png_bytes(Image.new("RGB", (32, 24), "white"))
        web = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                web.hits.append((self.path, self.headers.get("Host", "")))
                parts = urlsplit(self.path)
                if parts.path == "/page.png":
                    self._answer(200, png, "image/png")
                elif parts.path == "/to":
                    self._redirect(parse_qs(parts.query)["u"][0])
                elif parts.path == "/loop":
                    self._redirect("/loop")
                elif parts.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(500):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                elif parts.path == "/held.png":
                    web.arrived.set()
                    if self._client_left_before(web.release):
                        web.gone.set()
                    else:
                        self._answer(200, png, "image/png")
                elif parts.path == "/gzip":  # 100 kB of zeros sent as a 0.1 kB gzip body, whatever the client asked
                    body = gzip.compress(b"\0" * 100_000)
                    self.send_response(200)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif parts.path == "/missing":
                    self._answer(404, b"secret upstream body", "text/plain")
                else:
                    self._answer(200, b"proxied", "text/plain")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _client_left_before(self, event: threading.Event) -> bool:
                """Wait for `event` (at most START_TIMEOUT_S); True if the client closed the connection first."""
                deadline = time.monotonic() + START_TIMEOUT_S
                while not event.is_set() and time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0.05)
                    try:  # the request was read, so the only thing left to read is the end of the connection
                        if readable and not self.connection.recv(1, socket.MSG_PEEK):
                            return True
                    except OSError:
                        return True
                return False

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hold(self) -> None:
        """The next /held.png request waits until `release` is set."""
        for event in (self.release, self.arrived, self.gone):
            event.clear()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
