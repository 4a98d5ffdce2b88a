"""Ctrl-C while llama.cpp runs: held until its call returns, then raised as an ordinary KeyboardInterrupt.

llama.cpp calls back into Python while it works: its log callback (every model load, every quantized tensor)
and the imatrix's eval callback. CPython runs a signal's handler at the main thread's next bytecode, which during
a llama.cpp call is inside such a callback; the KeyboardInterrupt raised there is printed as "Exception ignored
on calling ctypes callback function" and dropped by ctypes, and the run went on to the end (issue #21: a Ctrl-C
during `quantize`'s imatrix that landed in llama_model_quantize's log). So every llama.cpp call that can call
back runs under `held_interrupt()`: the handler only records the signal, and the interrupt is raised once the
call has returned. A second Ctrl-C while one is held stops the process at once, as the default action would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

HELD_NOTE = b"\nCtrl-C: stopping when llama.cpp's current call returns (press it again to stop at once)\n"


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Hold Ctrl-C for the block (a llama.cpp call), raise KeyboardInterrupt after it. Only where Python's own
    handler is installed, in the main thread (the only one that runs signal handlers); a no-op elsewhere, and inside
    an outer `held_interrupt()`, which then raises at its own end."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if received:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        received.append(signum)
        os.write(2, HELD_NOTE)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
