"""Untrusted images and PDFs decoded in a child process with CPU-time and address-space limits.

A 5 KB PDF can ask pdfium for minutes of work and gigabytes of memory (form XObjects nested ten deep,
each drawing the one below ten times), and a render cannot be interrupted from Python. So the server
decodes every file a request brings in a worker process of ours: the worker caps its own address space
before it reads any input, caps its CPU time for each job, and is killed when the request's deadline
passes. A killed worker frees its turn at once, and the memory it used was never the server's.

    pool = DecodePool(ProcessLimits())
    pages = pool.worker().decode(data, name="scan.pdf", pages="1-3", max_pixels=..., limits=..., pixel_budget=...,
                                 timeout_s=30)

The parent trusts nothing it reads back: page counts and sizes are checked against the same limits again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from PIL import Image

from exaone_edge.errors import ImageRejected, InputError
from exaone_edge.images import DocumentLimits, frame_sizes, is_pdf, open_image, render_pdf

_HEADER = struct.Struct("<I")  # a frame: 4-byte length, then that many bytes
MAX_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class ProcessLimits:
    memory_bytes: int = 2 * 2**30  # the worker's address space: Python, pdfium, and the pages it holds
    cpu_s: float = 60.0  # CPU seconds one decode may use (the wall-clock deadline is the caller's)


class DecodeTimedOut(InputError):
    """The decode was still running when its time ran out; the worker was killed."""


class DecodeWorker:
    """One child process, reused across jobs; killed when a job overruns, and started again by the next job."""

    def __init__(self, limits: ProcessLimits = ProcessLimits()) -> None:
        self.limits = limits
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def decode(self, data: bytes, *, name: str, pages: str | None, max_pixels: int, limits: DocumentLimits,
               pixel_budget: int, timeout_s: float) -> list[Image.Image]:
        """The file's images (one for an image, the selected pages for a PDF), decoded in the worker.

        Raises ImageRejected/InputError as the decoder would, DecodeTimedOut after `timeout_s`, and
        ImageRejected when the worker died (its memory or CPU limit)."""
        if not is_pdf(data) and pages is not None:
            raise InputError(f"{name}: 'pages' applies to PDFs only")
        deadline = time.monotonic() + timeout_s
        job = {"name": name, "pages": pages, "max_pixels": max_pixels, "limits": asdict(limits),
               "pixel_budget": pixel_budget, "cpu_s": min(self.limits.cpu_s, timeout_s + 1)}
        process = self._started()
        try:
            _write_frame(process.stdin, json.dumps(job).encode())
            _write_frame(process.stdin, data)
            process.stdin.flush()
            reply = json.loads(_read_frame(process.stdout, deadline, MAX_HEADER_BYTES))
            if not reply.get("ok"):
                error = ImageRejected if reply.get("kind") == "ImageRejected" else InputError
                raise error(str(reply.get("what", "the file could not be decoded")), fix=reply.get("fix"))
            sizes = _checked_sizes(reply.get("sizes"), data, limits, max_pixels, pixel_budget, name)
            return [Image.frombytes("RGB", size, _read_exact(process.stdout, size[0] * size[1] * 3, deadline))
                    for size in sizes]
        except _Timeout:
            self.kill()
            raise DecodeTimedOut(f"{name}: decoding took longer than {timeout_s:.3g} s and was stopped") from None
        except (_Died, BrokenPipeError, ValueError) as exc:
            status = self.kill()
            why = _death(status, self.limits) if isinstance(exc, (_Died, BrokenPipeError)) else f"a bad reply ({exc})"
            raise ImageRejected(f"{name}: decoding was stopped: {why}",
                                fix="Send a simpler or smaller file (or re-export it as PNG pages).") from None
        except BaseException:
            self.kill()  # interrupted mid-job: the worker's state is unknown
            raise

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            # A plain fork+exec (no preexec_fn): safe from a threaded server. The worker limits itself first.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "exaone_edge.decode_process", str(self.limits.memory_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
                start_new_session=True,  # Ctrl-C in the server's terminal reaches the server, which stops it
            )
        return self._process

    def kill(self) -> int | None:
        """Stop the worker now; returns its exit status (negative: the signal that ended it)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return process.wait()

    close = kill


class DecodePool:
    """One worker per calling thread (the server's preparation threads), so their number bounds the workers."""

    def __init__(self, limits: ProcessLimits = ProcessLimits()) -> None:
        self.limits = limits
        self._local = threading.local()
        self._workers: list[DecodeWorker] = []
        self._lock = threading.Lock()

    def worker(self) -> DecodeWorker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = DecodeWorker(self.limits)
            with self._lock:
                self._workers.append(worker)
        return worker

    def pids(self) -> list[int]:
        with self._lock:
            return [pid for worker in self._workers if (pid := worker.pid) is not None]

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.kill()


# -- the parent's side of the pipe -------------------------------------------------------------------


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


def _write_frame(stream, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)))  # files are bounded far below 4 GiB (max_file_bytes)
    stream.write(payload)


def _read_exact(stream, size: int, deadline: float) -> bytes:
    fd = stream.fileno()
    chunks, left = [], size
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise _Timeout()
        block = os.read(fd, min(left, 1 << 20))
        if not block:
            raise _Died()
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def _read_frame(stream, deadline: float, max_bytes: int) -> bytes:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))
    if size > max_bytes:
        raise ValueError(f"a reply header of {size:,} bytes")
    return _read_exact(stream, size, deadline)


def _checked_sizes(sizes, data: bytes, limits: DocumentLimits, max_pixels: int, budget: int, name: str):
    pdf = is_pdf(data)
    if not isinstance(sizes, list) or not sizes or len(sizes) > (limits.max_pdf_pages if pdf else 1):
        raise ValueError("a wrong number of pages")
    checked, total = [], 0
    for size in sizes:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError("a page without a size")
        pixels = size[0] * size[1]
        if pixels > (max_pixels if pdf else limits.max_image_pixels):
            raise ValueError(f"a page of {pixels:,} pixels")
        total += pixels
        checked.append((size[0], size[1]))
    if total > budget:
        raise ValueError(f"{total:,} pixels for {name}")
    return checked


def _death(status: int | None, limits: ProcessLimits) -> str:
    if status is not None and -status in (signal.SIGXCPU, signal.SIGKILL):
        return f"it needed more than {limits.cpu_s:g} CPU seconds"
    return f"it needed more than {limits.memory_bytes / 2**30:.3g} GiB of memory, or the decoder failed"


# -- the worker (python -m exaone_edge.decode_process MEMORY_BYTES) ------------------------------------


def _decode(job: dict, data: bytes) -> list[Image.Image]:
    limits = DocumentLimits(**job["limits"])
    if is_pdf(data):
        return render_pdf(data, job["pages"], max_pixels=job["max_pixels"], limits=limits, name=job["name"],
                          pixel_budget=job["pixel_budget"])
    (width, height), *_ = frame_sizes(data, limits, name=job["name"])
    if width * height > job["pixel_budget"]:
        raise ImageRejected(f"{job['name']}: {width}×{height} = {width * height:,} pixels, more than the "
                            f"{job['pixel_budget']:,} left for this request", fix="Send fewer or smaller images.")
    return [open_image(data, limits, name=job["name"])]


def _serve(memory_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes no files
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        job = json.loads(source.read(_HEADER.unpack(header)[0]))
        data = source.read(_HEADER.unpack(source.read(_HEADER.size))[0])
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used + job["cpu_s"]) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            images = _decode(job, data)
        except (InputError, MemoryError) as exc:
            what, fix = (exc.what, exc.fix) if isinstance(exc, InputError) else ("decoding needed more memory than allowed", None)
            reply = {"ok": False, "kind": type(exc).__name__, "what": what, "fix": fix}
            _write_frame(sink, json.dumps(reply).encode())
        else:
            _write_frame(sink, json.dumps({"ok": True, "sizes": [list(image.size) for image in images]}).encode())
            for image in images:
                sink.write(image.tobytes())
        sink.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
