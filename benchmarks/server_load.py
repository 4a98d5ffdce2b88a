"""Aggregate completion tokens/s of the HTTP server: N concurrent requests vs one at a time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from exaone_edge.benchmarks.decode import PASSAGE
from exaone_edge.benchmarks.timing import interleaved, median


@dataclass(frozen=True)
class Throughput:
    one_tokens_per_s: float
    concurrent_tokens_per_s: float
    concurrency: int
    parallel: int


def compare_concurrency(bundle: Path, *, concurrency: int, parallel: int, max_tokens: int, threads: int, ctx: int,
                        repeats: int, flags: tuple[str, ...] = ()) -> Throughput:
    import httpx

    with serving(bundle, parallel=parallel, threads=threads, ctx=ctx, max_queue=concurrency, flags=flags) as url:
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        counter = iter(range(1 << 30))

        def ask(client: httpx.Client) -> int:
            body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"Case {next(counter)}. {PASSAGE} Summarise the terms."}]}
            response = client.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        def rate(n: int) -> float:
            with httpx.Client() as client, ThreadPoolExecutor(n) as pool:
                started = time.perf_counter()
                tokens = sum(pool.map(lambda _: ask(client), range(n)))
                return tokens / (time.perf_counter() - started)

        runs = interleaved({"one": lambda: rate(1), "concurrent": lambda: rate(concurrency)}, repeats)
    return Throughput(median(runs["one"]), median(runs["concurrent"]), concurrency, parallel)


@contextmanager
def serving(bundle: Path, *, parallel: int, threads: int, ctx: int, max_queue: int,
            flags: tuple[str, ...] = ()) -> Iterator[str]:
    """`exaone-edge serve` in its own process (as deployed), on a free loopback port, until the block ends;
    `flags` are more serve flags (the bench's placement)."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "exaone_edge.cli", "serve", str(bundle), "--port", str(port),
               "--threads", str(threads), "--ctx", str(ctx), "--max-queue", str(max_queue), "--no-verify", *flags]
    if parallel > 1:
        command += ["--parallel", str(parallel)]
    log = tempfile.TemporaryFile("w+")  # a pipe nobody reads would block the server once full
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"

    def exited() -> str:
        log.seek(0)
        return f"the server exited while starting: {log.read()[-2000:]}"

    try:
        wait_healthy(url, server, 300, exited)
        yield url
    finally:
        stop(server)
        log.close()


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float, exited: Callable[[], str],
                 poll_s: float = 0.5) -> float:
    """Wait until `url`/health answers 200 (an OpenAI-compatible server starting: ours or vLLM's); RuntimeError with
    `exited()` if the process ends first, or after `timeout_s`. Returns the seconds it took."""
    import httpx

    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(exited())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{url} was not healthy within {timeout_s:.0f} s")
        time.sleep(poll_s)


def stop(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the server drains and exits), then SIGKILL if it has not exited within `timeout_s`; reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
