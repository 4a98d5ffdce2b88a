"""What the benchmark ran on, and how fast this machine can read memory with every core busy."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from importlib import metadata
from typing import Any

import numpy as np

PACKAGES = ("exaone-edge", "llama_cpp_python", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "numpy")


def describe_machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name)},
    }


def read_bandwidth(threads: int, buffer_bytes: int = 256 << 20, seconds: float = 1.5) -> float:
    """Bytes/s read by `threads` threads at once, each summing its own buffer (numpy releases the GIL).

    One reader per core: a single-threaded loop understates what llama.cpp's threads pull together.
    The best of repeated rounds is the hardware limit we compare against.
    """
    buffers = [np.ones(buffer_bytes // 8, dtype=np.int64) for _ in range(threads)]
    for buffer in buffers:
        buffer.sum()  # fault the pages in before timing
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        barrier = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_read, args=(buffer, barrier)) for buffer in buffers]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        best = max(best, threads * buffer_bytes / (time.perf_counter() - start))
    return best


def _read(buffer: np.ndarray, barrier: threading.Barrier) -> None:
    barrier.wait()
    np.bitwise_xor.reduce(buffer)  # integer reduction: no float dependency chain to bound it by compute


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
