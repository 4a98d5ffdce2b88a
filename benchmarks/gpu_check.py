"""The measuring half of `scripts/gpu_check.sh`: the tiny bundle on CUDA against the CPU path.

Builds the tiny random EXAONE 4.5 (F32 decoder, fp32 vision graph), answers one page question with
`--device cpu` and then `--device cuda`, and prints: first-token logits max |Δ| and whether the greedy answers
agree, the GPU memory this process holds (nvidia-smi) beside `plan`'s prediction for the same bundle and
context, and decode tokens/s beside the bandwidth bound (device bandwidth measured with a torch copy when torch
has CUDA, else none). Exit 0 when outputs agree, 1 when they do not, 2 when there is no usable GPU.
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


def build(work: Path) -> Path:
    from exaone_edge.bundle import write_bundle
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.export.vision import export_vision
    from exaone_edge.quantize.gguf_convert import convert_to_gguf
    from exaone_edge.tiny_model import build_tiny_model

    model = build_tiny_model(work / "tiny", overwrite=True).path
    vision = export_vision(model, work / "vision", precision="fp32", overwrite=True).path
    decoder = convert_to_gguf(model, work / "decoder.gguf", out_type="F32").path
    bundle = work / "bundle"
    bundle.mkdir()
    write_bundle(bundle, open_checkpoint(model), decoder, vision_dir=vision, details={"decoder": {"level": "F32"}})
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
        logits = engine.next_token_logits(messages)
        last = None
        for last in engine.generate(messages, GenerationParams(max_tokens=tokens, ignore_eos=True).thinking(False)):
            pass
        return {"placement": engine.placement, "logits": logits, "tokens": last.token_ids,
                "tokens_per_s": last.timings.tokens_per_s, "gpu_bytes": gpu_memory_used(os.getpid()),
                "decoder_bytes": engine.bundle.decoder_path.stat().st_size}
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-gpu-check"))
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    from exaone_edge.device import DeviceUnavailable, choose_placement
    from exaone_edge.plan import plan

    try:
        choose_placement("cuda")
    except DeviceUnavailable as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = build(args.work / f"run-{os.getpid()}")
    cpu = answer(bundle, "cpu", args.ctx, args.tokens)
    cuda = answer(bundle, "cuda", args.ctx, args.tokens)
    diff = float(np.abs(cpu["logits"] - cuda["logits"]).max())
    same = cpu["tokens"] == cuda["tokens"]
    predicted = plan(bundle, gpu=f"{gpu_total_bytes() / 2**30:.2f}GiB", context=args.ctx, kv_type="f16", level="F32")
    bandwidth = device_bandwidth()
    bound = bandwidth / (cuda["decoder_bytes"] + predicted.components["kv_cache"]) if bandwidth else None
    measured = cuda["gpu_bytes"]
    print(f"placement (cuda): {cuda['placement'].describe()}")
    print(f"first-token logits max |Δ| cuda vs cpu: {diff:.3g} (tolerance {LOGIT_TOLERANCE}); "
          f"greedy {args.tokens} tokens {'agree' if same else 'DIFFER'}")
    print(f"GPU memory held: {measured / 2**20:.0f} MiB measured (nvidia-smi)" if measured else
          "GPU memory held: not listed by nvidia-smi", end="")
    print(f" | plan predicts {predicted.total_bytes / 2**20:.0f} MiB (allowances and 5% headroom included)")
    print(f"decode: {cuda['tokens_per_s'] or 0:.1f} tokens/s on CUDA, {cpu['tokens_per_s'] or 0:.1f} on CPU"
          + (f" | bandwidth bound {bound:.0f} tokens/s ({bandwidth / 1e9:.0f} GB/s copy)" if bound else
             " | bandwidth bound: torch without CUDA, not measured"))
    return 0 if same and diff <= LOGIT_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
