"""The GPU check: one verdict per CUDA path, in one run, on an air-gapped box (`scripts/gpu_check.sh`, docs/gpu-check.md).

Inputs come from the offline kit (benchmarks/gpu_kit.py): the tiny bundle (F32 decoder, fp32 vision) and the
real-width bench bundle (Q4_K_M decoder) are built on the box from seeded skeletons. Every measurement runs in its
own process (benchmarks/gpu_worker.py); the CPU references with CUDA_VISIBLE_DEVICES="", so they are CPU-only
although llama.cpp is the CUDA build. This process only compares and judges. One line per path, PASS / FAIL /
NOT CHECKED; result.json and check.log in --out. Exit 0 every checked path passed, 1 a mismatch, 2 no GPU (the CPU
half still runs: the dry run), 3 setup failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exaone_edge.benchmarks.gpu_verdicts import (
    Verdict, compare_imatrix, compare_logits, decode_verdict, encode_verdict, logits_verdict, memory_case, memory_verdict,
    memory_total_case, mtp_verdict, not_checked, offload_verdict, quantized_kv_verdict, vision_verdict,
)

PATHS = ("decoder on CUDA", "partial offload", "imatrix", "flash attention + q8_0 KV", "vision on CUDA",
         "memory vs plan", "decode tokens/s", "page encode (warm)", "MTP drafting on CUDA")
# llama.cpp's n_gpu_layers: the output layer, the tiny model's MTP block (kept in the file, not loaded), then 30 of its
# 64 layers; llama.cpp logs 32/66 (the output layer counted, the MTP block too)
PARTIAL_LAYERS = 32
WORKER = "exaone_edge.benchmarks.gpu_worker"
CUDA_LIBRARIES = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13")


class SetupFailure(Exception):
    """The check could not get to measuring: kit, install, inputs or the CPU half."""


@dataclass
class Run:
    out: Path
    work: Path
    python: str
    timeout: float
    cuda_site: Path | None = None
    gpu: bool = False
    started: float = field(default_factory=time.time)
    phases: list[dict] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # what setup found (GPU, kit, llama.cpp), the inputs' build times

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.time()
        print(f"gpu_check: {name} …", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.phases.append({"phase": name, "start": _stamp(start), "end": _stamp(time.time()),
                                "seconds": round(time.time() - start, 2)})

    def env(self, gpu: bool) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        paths = [str(self.cuda_site)] if self.gpu and self.cuda_site else []
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if self.library_dirs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(self.library_dirs + [env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
        if not gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def worker(self, task: str, gpu: bool, **args) -> dict:
        """One measuring process; its stderr goes to check.log. Raises RuntimeError with the log's tail."""
        result = self.work / f"{task}-{len(self.phases)}-{time.monotonic_ns()}.json"
        with open(self.out / "check.log", "a", encoding="utf-8") as log:
            log.write(f"\n=== {task} ({'GPU' if gpu else 'CPU only'}) {json.dumps(args)}\n")
            log.flush()
            try:
                done = subprocess.run([self.python, "-m", WORKER, task, json.dumps(args), str(result)],
                                      stdout=log, stderr=log, env=self.env(gpu), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{task} worker timed out after {self.timeout:.0f} s") from None
        if done.returncode != 0 or not result.is_file():
            tail = (self.out / "check.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{task} worker exited {done.returncode}: {' | '.join(tail)}")
        return json.loads(result.read_text(encoding="utf-8"))


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def detect_gpu() -> tuple[dict | None, str]:
    """(the first GPU's name, memory and driver per nvidia-smi, or None) and why none."""
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi failed ({exc})"
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        return None, f"nvidia-smi lists no GPU ({(out.stderr or out.stdout).strip()[:200]})"
    from exaone_edge.benchmarks.gpu_worker import parse_mib

    name, memory, driver, capability = (part.strip() for part in (lines[0].split(",") + ["", "", ""])[:4])
    return {"name": name, "memory_bytes": parse_mib(memory), "driver": driver, "compute_capability": capability}, ""


def cuda_library_dirs() -> list[str]:
    """Folders holding the CUDA 13 runtime and cuBLAS the kit's llama.cpp links to: the box's torch wheels
    (nvidia/cu13/lib) or its CUDA toolkit."""
    roots = [Path(p) / "nvidia" for p in sys.path if p.endswith("site-packages")]
    roots += [Path("/usr/local/cuda/lib64"), *Path("/usr/local").glob("cuda-13*/lib64"), Path("/usr/lib/x86_64-linux-gnu")]
    found: list[str] = []
    for name in CUDA_LIBRARIES:
        for root in roots:
            hits = [root / name] if (root / name).is_file() else sorted(root.glob(f"*/lib/{name}")) if root.is_dir() else []
            if hits:
                found.append(str(hits[0].parent))
                break
    return list(dict.fromkeys(found))


def _plan(bundle: str, total_bytes: int, context: int, kv_type: str, gpu_layers: int,
          draft: str | None = None) -> dict[str, int]:
    """plan's GPU components at the measured settings (vision on the CPU, as measured), headroom left out."""
    from exaone_edge.memory import plan

    predicted = plan(Path(bundle), gpu=f"{total_bytes / 2**30:.3f}GiB", context=context, kv_type=kv_type,
                     gpu_layers=gpu_layers, vision_provider="cpu", draft=draft)
    return dict(predicted.components)


def run_check(args: argparse.Namespace, run: Run) -> list[Verdict]:
    with run.phase("setup"):
        gpu, why = detect_gpu()
        if not (args.kit / "kit.json").is_file():
            raise SetupFailure(f"{args.kit}/kit.json not found: build the kit (benchmarks/gpu_kit.py build) and carry it")
        kit = json.loads((args.kit / "kit.json").read_text(encoding="utf-8"))
        run.gpu = gpu is not None
        run.notes.update(device=gpu, kit=kit)
        probe = None
        if run.gpu:
            run.library_dirs = cuda_library_dirs()
            probe = run.notes["llama_cpp"] = run.worker("probe", True)
            if not probe["offload"]:
                raise SetupFailure(f"the kit's llama.cpp ({probe['llama_cpp']}, backends {probe['backends']}) sees no "
                                   f"CUDA device; CUDA libraries from {run.library_dirs or 'nowhere'}")
    no_gpu = f"no GPU: {why}"
    with run.phase("inputs"):
        made = _setup(run.worker, "inputs", False, kit=str(args.kit), work=str(run.work),
                      bench=run.gpu and bool(kit.get("bench")))
        run.notes["inputs"] = made
    tiny, prompt, ctx = made["tiny_bundle"], made["prompt"], args.ctx
    gguf = str(Path(tiny) / "decoder.gguf")
    fp32_vision = str(args.kit / "vision-fp32")

    def logits(name: str, gpu_flag: bool, layers: int, fa: bool, kv: str) -> tuple[np.ndarray, dict]:
        path = run.work / f"logits-{name}.npy"
        info = run.worker("logits", gpu_flag, gguf=gguf, prompt=prompt, out=str(path), gpu_layers=layers,
                          flash_attn=fa, kv_type=kv, n_ctx=ctx)
        return np.load(path), info

    with run.phase("cpu half"):
        cpu_f32, _ = _setup(logits, "cpu-f32", False, 0, False, "f32")
        cpu_q8, _ = _setup(logits, "cpu-q8", False, 0, True, "q8_0")
        _setup(run.worker, "imatrix", False, gguf=gguf, prompt=prompt, out=str(run.work / "imatrix-cpu.npz"), gpu_layers=0)
        cpu_vision = _setup(run.worker, "vision", False, directory=fp32_vision, provider="cpu",
                            out=str(run.work / "rows-cpu-fp32.npy"))
        cpu_drafts = _setup(run.worker, "drafts", False, bundle=tiny, prompt=prompt, out=str(run.work / "drafts-cpu.npy"),
                            gpu_layers=0, n_ctx=ctx)
    cpu_encode = f"CPU warm {cpu_vision['warm_s'] * 1000:.0f} ms (cold {cpu_vision['cold_s'] * 1000:.0f} ms)"
    if not run.gpu:  # the dry run: say what the CPU half measured, for the paths it has a reference for
        cpu = compare_logits(cpu_f32, cpu_q8)
        ready = {"decoder on CUDA": f"CPU reference ready ({len(cpu_f32)} positions)",
                 "flash attention + q8_0 KV": f"the CPU's FA + q8_0 moves {cpu['max_rel_spread']:.2e} of the spread",
                 "imatrix": "CPU sums ready", "page encode (warm)": cpu_encode,
                 "MTP drafting on CUDA": _drafts_ready(cpu_drafts)}
        return [not_checked(path, no_gpu + (f"; {ready[path]}" if path in ready else "")) for path in PATHS]
    assert probe is not None
    total = probe["total_bytes"] or gpu["memory_bytes"]  # llama.cpp's figure, else nvidia-smi's
    verdicts: dict[str, Verdict] = {}
    memory: dict[str, dict] = {}  # one line for every bundle measured
    with run.phase("gpu: decoder"):
        verdicts.update(_guard(("decoder on CUDA", "flash attention + q8_0 KV"),
                               lambda: _decoder(logits, cpu_f32, cpu_q8, tiny, total, ctx, memory)))
        verdicts.update(_guard(("partial offload",), lambda: _partial(logits, cpu_f32, tiny, total, ctx)))
        verdicts.update(_guard(("imatrix",), lambda: _imatrix(run, gguf, prompt)))
    with run.phase("gpu: vision"):
        verdicts.update(_guard(("vision on CUDA", "page encode (warm)"), lambda: _vision(run, args.kit, cpu_encode)))
    with run.phase("gpu: bench decode"):
        verdicts.update(_guard(("decode tokens/s",), lambda: _bench(run, made["bench_bundle"], total, args.tokens, memory)))
    with run.phase("gpu: MTP drafting"):
        verdicts.update(_guard(("MTP drafting on CUDA",), lambda: _mtp(run, probe, tiny, prompt, ctx, cpu_drafts,
                                                                       made["bench_bundle"], total, memory)))
    verdicts["memory vs plan"] = memory_verdict(memory)
    return [verdicts.get(path) or not_checked(path, "not reached") for path in PATHS]


def _setup(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except RuntimeError as exc:
        raise SetupFailure(str(exc)) from None


def _guard(paths: tuple[str, ...], measure) -> dict[str, Verdict]:
    """A path whose measurement crashed FAILs with the reason; the others still run."""
    try:
        return {v.path: v for v in measure()}
    except Exception as exc:  # a worker that crashed or timed out, or numbers that cannot be compared
        return {path: Verdict(path, "FAIL", f"{type(exc).__name__}: {exc}") for path in paths}


def _decoder(logits, cpu_f32, cpu_q8, tiny: str, total: int, ctx: int, memory: dict) -> list[Verdict]:
    gpu_f32, info = logits("gpu-f32", True, -1, False, "f32")
    gpu_q8, info_q8 = logits("gpu-q8", True, -1, True, "q8_0")
    memory["tiny (FA, q8_0 KV)"] = memory_case(info_q8, _plan(tiny, total, ctx, "q8_0", -1))
    return [logits_verdict("decoder on CUDA", cpu_f32, gpu_f32, info["llama"]),
            quantized_kv_verdict(cpu_f32, cpu_q8, gpu_f32, gpu_q8)]


def _partial(logits, cpu_f32, tiny: str, total: int, ctx: int) -> list[Verdict]:
    gpu_part, info = logits("gpu-partial", True, PARTIAL_LAYERS, False, "f32")
    planned = _plan(tiny, total, ctx, "q8_0", PARTIAL_LAYERS)["decoder_weights"]
    return [offload_verdict(cpu_f32, gpu_part, info["llama"], PARTIAL_LAYERS, planned)]


def _imatrix(run: Run, gguf: str, prompt: str) -> list[Verdict]:
    run.worker("imatrix", True, gguf=gguf, prompt=prompt, out=str(run.work / "imatrix-gpu.npz"), gpu_layers=-1)
    return [compare_imatrix(np.load(run.work / "imatrix-cpu.npz"), np.load(run.work / "imatrix-gpu.npz"))]


def _vision(run: Run, kit: Path, cpu_encode: str) -> list[Verdict]:
    """fp32 and int8w (the 24 GB plan's precision), each on CUDA against the CPU, in torch-free processes."""
    results = {}
    for precision in ("fp32", "int8w"):
        directory = kit / f"vision-{precision}"
        cpu_rows, gpu_rows = run.work / f"rows-cpu-{precision}.npy", run.work / f"rows-cuda-{precision}.npy"
        if not cpu_rows.is_file():
            run.worker("vision", False, directory=str(directory), provider="cpu", out=str(cpu_rows))
        info = run.worker("vision", True, directory=str(directory), provider="cuda", out=str(gpu_rows))
        results[precision] = (info, np.load(cpu_rows), np.load(gpu_rows) if info["ran"] else None)
        if not info["ran"]:
            break  # no CUDA provider: the other precision cannot run either
    return [vision_verdict(results), encode_verdict(results["fp32"][0], cpu_encode)]


def _bench(run: Run, bundle: str | None, total: int, tokens: int, memory: dict) -> list[Verdict]:
    if bundle is None:
        return [not_checked("decode tokens/s", "the kit has no bench skeleton (built with --no-bench)")]
    bandwidth = run.worker("bandwidth", True)
    ctx = 4096
    info = run.worker("decode", True, gguf=str(Path(bundle) / "decoder.gguf"), gpu_layers=-1, flash_attn=True,
                      kv_type="q8_0", n_ctx=ctx, tokens=tokens)
    memory["bench (FA, q8_0 KV)"] = memory_case(info, _plan(bundle, total, ctx, "q8_0", -1))
    return [decode_verdict(info, bandwidth.get("bytes_per_s"))]


def _drafts_ready(cpu_drafts: dict) -> str:
    if not cpu_drafts["mtp_graph"]:
        return "this llama.cpp has no EXAONE-4 MTP graph (compiled without patches/llama.cpp)"
    return f"CPU head logits ready ({cpu_drafts['cuts']} cuts × {cpu_drafts['k']} draft steps)"


def _mtp(run: Run, probe: dict, tiny: str, prompt: str, ctx: int, cpu_drafts: dict, bench: str | None, total: int,
         memory: dict) -> list[Verdict]:
    path = "MTP drafting on CUDA"
    if not probe.get("mtp_graph") or not cpu_drafts["mtp_graph"]:
        patched = run.notes.get("kit", {}).get("cuda_wheel_patches")
        return [not_checked(path, f"the kit's CUDA llama.cpp has no EXAONE-4 MTP graph (kit.json cuda_wheel_patches: "
                                  f"{patched}): rebuild it with scripts/gpu_kit_wheel.sh, then the kit")]
    info = run.worker("drafts", True, bundle=tiny, prompt=prompt, out=str(run.work / "drafts-gpu.npy"), gpu_layers=-1,
                      n_ctx=ctx)
    timing = run.worker("draft_timing", True, bundle=bench) if bench is not None else None
    if timing and timing["head"]:
        n_ctx = -(-timing["timings"]["n_ctx"] // 256) * 256  # llama.cpp rounds the context up to 256
        planned = _plan(bench, total, n_ctx, "q8_0", -1, draft="mtp")
        memory["bench with --draft mtp (FA, q8_0 KV)"] = memory_total_case(timing, planned)
    return [mtp_verdict(np.load(run.work / "drafts-cpu.npy"), np.load(run.work / "drafts-gpu.npy"), info["llama"], timing)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, default=Path(".gpu-kit"), help="the offline kit (benchmarks/gpu_kit.py)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/exaone-edge-gpu-check-out"),
                        help="result.json and check.log go here")
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-gpu-check"), help="bundles and scratch")
    parser.add_argument("--cuda-site", type=Path, help="where the kit's CUDA llama-cpp-python was installed")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=256, help="decode steps timed on the bench bundle")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds one measuring process may take")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.out / "check.log").write_text("", encoding="utf-8")
    run = Run(args.out, args.work, sys.executable, args.timeout, args.cuda_site)
    try:
        verdicts = run_check(args, run)
        code = 1 if any(v.status == "FAIL" for v in verdicts) else (0 if run.gpu else 2)
    except Exception as exc:  # SetupFailure, or a bug: either way result.json is written and the exit code is 3
        why = str(exc) if isinstance(exc, SetupFailure) else f"{type(exc).__name__}: {exc}"
        with open(args.out / "check.log", "a", encoding="utf-8") as log:
            traceback.print_exc(file=log)
        print(f"gpu_check: setup failed: {why}", file=sys.stderr)
        verdicts, code = [not_checked(path, f"setup failed: {why}") for path in PATHS], 3
    for verdict in verdicts:
        print(verdict.line())
    result = {"exit_code": code, "gpu": run.gpu, "paths": [asdict(v) for v in verdicts], "phases": run.phases,
              "started": _stamp(run.started), "seconds": round(time.time() - run.started, 1),
              "cuda_library_dirs": run.library_dirs, **run.notes}
    partial = args.out / "result.json.partial"
    partial.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    partial.replace(args.out / "result.json")
    print(f"gpu_check: exit {code} ({ {0: 'pass', 1: 'mismatch', 2: 'no GPU', 3: 'setup failure'}[code]}); "
          f"{args.out / 'result.json'}, {run.phases[-1]['end'] if run.phases else ''}")
    return code


if __name__ == "__main__":
    sys.exit(main())
