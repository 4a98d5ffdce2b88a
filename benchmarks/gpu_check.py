"""The measuring half of `scripts/gpu_check.sh`: the tiny and the real-width bench bundles on CUDA against the CPU path.

Builds two bundles: the tiny random EXAONE 4.5 (F32 decoder, fp32 vision graph: CUDA must match the CPU closely)
and the bench preset (the released decoder and vision widths, 2 decoder layers and 7 vision blocks; Q4_K_M
decoder, fp16 vision graph: the kernels the 33B runs). For each it answers one page question with `--device cpu`
and then `--device cuda`, and prints: first-token logits max |Δ| and whether the greedy answers agree, the page's
encode time on each, the GPU memory this process holds (nvidia-smi) beside `plan`'s prediction for the same
bundle and context, and decode tokens/s beside the bandwidth bound (device bandwidth measured with a torch copy
when torch has CUDA, else none). Exit 0 when outputs agree, 1 when they do not, 2 when there is no usable GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LOGIT_TOLERANCE = 5e-2  # CUDA kernels sum in another order (and cuBLAS may use TF32); greedy tokens must agree
# The bench bundle runs fp16 vision and Q4_K_M on CUDA against the same files on the CPU: rounding differs by more
# (fp16 accumulation in cuBLAS, llama.cpp's CUDA Q4_K dot products quantize activations to 8 bits), so its greedy
# answer is reported, and only the logits' agreement is judged.
BENCH_LOGIT_TOLERANCE = 0.5
BENCH_PAGES = (("a4-tall", (595, 842)),)  # export validates on one page: the check times the GPU, not the export


def gpu_memory_used(pid: int) -> int | None:
    """Bytes this process holds on the GPU, per nvidia-smi (None when it does not list the process)."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    used = [int(line.split(",")[1]) for line in out.splitlines() if line.strip() and int(line.split(",")[0]) == pid]
    return sum(used) * 2**20 if used else None


def gpu_total_bytes() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[0]) * 2**20


def device_bandwidth() -> float | None:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), or None without torch CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del source, target
    torch.cuda.empty_cache()
    return 10 * 2 * 2**30 / seconds


def build(work: Path, preset: str = "tiny") -> Path:
    """The tiny bundle (F32 decoder, fp32 vision) or the bench bundle (Q4_K_M decoder, fp16 vision)."""
    from exaone_edge.bundle import write_bundle
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.export.vision import export_vision
    from exaone_edge.quantize.gguf_convert import convert_to_gguf
    from exaone_edge.quantize.llama_quantize import quantize_gguf
    from exaone_edge.quantize.recipes import choose_recipe
    from exaone_edge.tiny_model import build_tiny_model

    model = build_tiny_model(work / preset, overwrite=True, preset=preset).path
    if preset == "tiny":
        vision = export_vision(model, work / "vision", precision="fp32", overwrite=True).path
        decoder, level = convert_to_gguf(model, work / "decoder.gguf", out_type="F32").path, "F32"
    else:
        vision = export_vision(model, work / "vision", precision="fp16", overwrite=True, pages=BENCH_PAGES).path
        f16 = convert_to_gguf(model, work / "decoder-f16.gguf").path
        recipe = choose_recipe(4, None, imatrix=False)
        decoder, level = quantize_gguf(f16, work / "decoder.gguf", recipe), recipe.level
        f16.unlink()
    bundle = work / "bundle"
    bundle.mkdir()
    write_bundle(bundle, open_checkpoint(model), decoder, vision_dir=vision, details={"decoder": {"level": level}})
    return bundle


def answer(bundle: Path, device: str, ctx: int, tokens: int) -> dict:
    from PIL import Image, ImageDraw

    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.generation import GenerationParams

    page = Image.new("RGB", (448, 336), "white")
    ImageDraw.Draw(page).text((20, 20), "Invoice 42  total 1,234.56", fill="black")
    messages = [{"role": "user", "content": [{"type": "image", "image": page}, {"type": "text", "text": "Total?"}]}]
    engine = Engine.load(bundle, device=device, n_ctx=ctx, flash_attn=False, kv_type="f32", verify=False)
    try:
        started = time.perf_counter()
        engine.encode_prompt(messages)  # the page's rows, cached for what follows
        encode_seconds = time.perf_counter() - started
        logits = engine.next_token_logits(messages)
        last = None
        for last in engine.generate(messages, GenerationParams(max_tokens=tokens, ignore_eos=True).thinking(False)):
            pass
        return {"placement": engine.placement, "logits": logits, "encode_seconds": encode_seconds, "tokens": last.token_ids,
                "tokens_per_s": last.timings.tokens_per_s, "gpu_bytes": gpu_memory_used(os.getpid()),
                "decoder_bytes": engine.bundle.decoder_path.stat().st_size, "level": engine.bundle.manifest.details["decoder"]["level"]}
    finally:
        engine.close()


def check(bundle: Path, name: str, ctx: int, tokens: int, tolerance: float, greedy_must_agree: bool) -> bool:
    """One bundle on the CPU and on CUDA; prints the comparison and returns whether it passed."""
    from exaone_edge.plan import plan

    cpu = answer(bundle, "cpu", ctx, tokens)
    cuda = answer(bundle, "cuda", ctx, tokens)
    diff = float(np.abs(cpu["logits"] - cuda["logits"]).max())
    same = cpu["tokens"] == cuda["tokens"]
    level = cuda["level"]
    predicted = plan(bundle, gpu=f"{gpu_total_bytes() / 2**30:.2f}GiB", context=ctx, kv_type="f32", level=level)
    bandwidth = device_bandwidth()
    bound = bandwidth / (cuda["decoder_bytes"] + predicted.components["kv_cache"]) if bandwidth else None
    measured = cuda["gpu_bytes"]
    print(f"[{name}] placement (cuda): {cuda['placement'].describe()}")
    print(f"[{name}] first-token logits max |Δ| cuda vs cpu: {diff:.3g} (tolerance {tolerance}); "
          f"greedy {tokens} tokens {'agree' if same else 'differ'}")
    print(f"[{name}] page encode: {cuda['encode_seconds']:.3f} s on CUDA, {cpu['encode_seconds']:.3f} s on CPU")
    print(f"[{name}] GPU memory held: {measured / 2**20:.0f} MiB measured (nvidia-smi)" if measured else
          f"[{name}] GPU memory held: not listed by nvidia-smi", end="")
    print(f" | plan predicts {predicted.total_bytes / 2**20:.0f} MiB (allowances and 5% headroom included)")
    print(f"[{name}] decode: {cuda['tokens_per_s'] or 0:.1f} tokens/s on CUDA, {cpu['tokens_per_s'] or 0:.1f} on CPU"
          + (f" | bandwidth bound {bound:.0f} tokens/s ({bandwidth / 1e9:.0f} GB/s copy)" if bound else
             " | bandwidth bound: torch without CUDA, not measured"), flush=True)
    return diff <= tolerance and (same or not greedy_must_agree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-gpu-check"))
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-bench", action="store_true", help="only the tiny bundle (no real-width bundle)")
    args = parser.parse_args(argv)
    from exaone_edge.device import DeviceUnavailable, choose_placement

    try:
        choose_placement("cuda")
    except DeviceUnavailable as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    work = args.work / f"run-{os.getpid()}"
    passed = check(build(work / "tiny"), "tiny", args.ctx, args.tokens, LOGIT_TOLERANCE, True)
    if not args.skip_bench:
        passed &= check(build(work / "bench", "bench"), "bench", args.ctx, args.tokens, BENCH_LOGIT_TOLERANCE, False)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
