"""Ctrl-C during `quantize` stops the run at every stage where llama.cpp calls back into Python.

It was lost (issue 21): CPython runs a signal's handler at the main thread's next bytecode, which during a llama.cpp
call is inside one of its Python callbacks (the log callback, the imatrix's eval callback), and ctypes drops a
KeyboardInterrupt raised there. No test here depends on timing: llama.cpp raises the signal itself, or the stage is
held open inside llama.cpp's callback until the signal has been sent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gguf_fixtures import converted, page_image

# Runs `exaone-edge ARGS`, holding STAGE open inside a llama.cpp callback (from Python, as the toolkit's own
# callbacks run) until a line arrives on stdin: the test sends SIGINT first, so it lands inside the callback.
HOLD = r"""
import sys
import llama_cpp
from exaone_edge import cli, llama
from exaone_edge.quantize import imatrix, llama_eval, llama_quantize

stage = sys.argv.pop(1)
armed = []

def hold():
    sys.stderr.write(f"held: {stage}\n")
    sys.stderr.flush()
    sys.stdin.readline()

def log(level, text, data):  # a Python log callback, as the toolkit's own; it holds the first line once armed
    if armed:
        armed.clear()
        hold()

def arm(function):
    def armed_call(*args, **kwargs):
        armed.append(True)
        return function(*args, **kwargs)
    return armed_call

llama.init_backend()
callback = llama_cpp.llama_log_callback(log)
llama_cpp.llama_log_set(callback, None)
if stage == "imatrix: eval callback in llama_decode":
    collect = imatrix.ImatrixCollector.__call__
    def held(self, tensor, ask, data):
        if not ask and not getattr(self, "held", False):
            self.held = True
            hold()
        return collect(self, tensor, ask, data)
    imatrix.ImatrixCollector.__call__ = held
elif stage == "quantize: log callback in llama_model_quantize":
    llama_quantize._run_quantizer = arm(llama_quantize._run_quantizer)
elif stage == "KL check: log callback in the model load":
    llama_eval.compare_decoders = arm(llama_eval.compare_decoders)
sys.argv = ["exaone-edge", *sys.argv[1:]]
cli.main()
"""
STAGES = {"imatrix: eval callback in llama_decode": ["--bits", "4"],
          "quantize: log callback in llama_model_quantize": ["--bits", "8"],
          "KL check: log callback in the model load": ["--bits", "8"]}


def test_ctrl_c_raised_inside_llama_cpp_while_it_logs_is_raised_when_the_call_returns(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    """llama.cpp sends itself SIGINT (its model-load progress callback is libc's raise(), given SIGINT as its user
    data, and returns 0: load cancelled), then logs 'cancelled model load' through the Python log callback: the
    interrupt arrives inside the C call and its handler runs inside the callback. Model() must raise it."""
    import llama_cpp

    from exaone_edge.llama import Model

    f16 = converted(tiny_model_dir, "F16", tmp_path)
    libc = ctypes.CDLL(None)
    defaults = llama_cpp.llama_model_default_params

    def params():
        chosen = defaults()
        # progress_callback(float, void *) called as raise(int): the pointer argument lands in raise's int
        # (x86-64 and aarch64 pass both in the first integer register)
        chosen.progress_callback = ctypes.cast(libc["raise"], llama_cpp.llama_progress_callback)
        chosen.progress_callback_user_data = ctypes.c_void_p(int(signal.SIGINT))
        return chosen

    monkeypatch.setattr(llama_cpp, "llama_model_default_params", params)
    with pytest.raises(KeyboardInterrupt):
        Model(f16)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture(scope="module")
def calibration_pages(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    for i in range(3):
        page_image(i, size=(256, 192)).save(folder / f"page-{i}.png")
    return folder


@pytest.fixture(scope="module")
def shared_work(tmp_path_factory) -> Path:
    """One --work-dir for the runs below: the F16 GGUF an interrupted run keeps is reused by the next."""
    return tmp_path_factory.mktemp("ctrl-c") / "work"


@pytest.mark.parametrize("stage", list(STAGES))
def test_ctrl_c_in_each_llama_cpp_stage_of_quantize_stops_the_run(stage, tiny_model_dir, calibration_pages,
                                                                  shared_work, tmp_path):
    out = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, stage, "quantize", str(tiny_model_dir), *STAGES[stage], "--calibration",
         str(calibration_pages), "--work-dir", str(shared_work), "-o", str(out)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line == f"held: {stage}\n":
            process.send_signal(signal.SIGINT)  # pending on the held main thread before it may go on
            process.stdin.write("\n")
            process.stdin.close()
            break
    rest = process.stderr.read()
    assert process.wait(timeout=600) == 130, "".join(seen) + rest
    assert "interrupted:" in rest and "reused by the next run" in rest, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    assert not out.exists() and os.listdir(tmp_path) == []
    assert sorted(os.listdir(shared_work)) == [".exaone-edge-work.json", "decoder-F16.gguf", "decoder-F16.gguf.json"]
