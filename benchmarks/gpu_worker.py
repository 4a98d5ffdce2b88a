"""The GPU check's measuring processes: `python -m exaone_edge.benchmarks.gpu_worker TASK ARGS_JSON RESULT_JSON`.

`benchmarks/gpu_check.py` starts one per measurement, the CPU ones with CUDA_VISIBLE_DEVICES="" (llama.cpp's CUDA
build then registers no device), so each starts clean: no CUDA context left from another run, no torch imported
(torch loads CUDA libraries that can make ONNX Runtime's CUDA provider start here and not in a torch-free
`exaone-edge run`). Only `bandwidth` imports torch, alone in its process. llama.cpp's whole log is captured, so
the layer split and the buffer sizes are read from llama.cpp itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIB = 2**20
_WARN, _ERROR, _CONT = 3, 4, 5  # enum ggml_log_level (ggml.h)
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# An assertion message patches/llama.cpp/0001-exaone4-mtp-graph.patch adds to libllama: the build has the MTP graph.
MTP_MARKER = b"EXAONE4 MTP supports a single MTP block"


def parse_llama_log(text: str) -> dict:
    """The layer split and each buffer's MiB per backend buffer type, from llama.cpp's INFO log (llama-model.cpp,
    llama-kv-cache.cpp, llama-context.cpp: "offloaded %d/%d layers to GPU", "%s model buffer size = %8.2f MiB")."""
    buffers: dict[str, dict[str, int]] = {}
    for where, kind, mib in _BUFFER.findall(text):
        buffers.setdefault(kind, {})
        buffers[kind][where] = buffers[kind].get(where, 0) + int(float(mib) * MIB)
    split = _OFFLOADED.findall(text)
    return {"offloaded": [int(split[-1][0]), int(split[-1][1])] if split else None, "buffers": buffers}


def parse_mib(field: str) -> int | None:
    """nvidia-smi's MiB figure in bytes; None for "[N/A]" or "[Not Supported]" (virtual GPUs, some drivers)."""
    field = field.strip()
    return int(field) * MIB if field.isdigit() else None


def process_gpu_bytes(pid: int) -> int | None:
    """GPU memory nvidia-smi lists for `pid`; None when it lists no figure for it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [parse_mib(line.split(",")[1]) for line in out.splitlines()
            if "," in line and line.split(",")[0].strip() == str(pid)]
    return sum(used) if used and None not in used else None


class LlamaLog:
    """Every llama.cpp log line, kept; warnings and errors also echoed to stderr. Installed after the backend is
    initialised (init_backend sets its own callback once), so nothing replaces it afterwards."""

    def __init__(self) -> None:
        import llama_cpp

        from exaone_edge.llama import init_backend

        init_backend()
        self.parts: list[str] = []
        self._callback = llama_cpp.llama_log_callback(self._on)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on(self, level: int, text: bytes, data) -> None:
        line = (text or b"").decode("utf-8", "replace")
        self.parts.append(line)
        if level in (_WARN, _ERROR):
            sys.stderr.write(f"llama.cpp: {line}")

    @property
    def text(self) -> str:
        return "".join(self.parts)


def page_image():
    """The check's page: 448 × 336 pixels, 192 image rows at patch 14 × merge 2."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (448, 336), "white")
    draw = ImageDraw.Draw(page)
    for line, text in enumerate(("INVOICE 42", "Widget  3 x 1,200", "VAT 10%", "Total due 1,234.56")):
        draw.text((24, 24 + 40 * line), text, fill="black")
    return page


def _segments(prompt: Path) -> list:
    data = np.load(prompt)
    return [data["ids_a"].tolist(), data["rows"], data["ids_b"].tolist()]


def _memory() -> int | None:
    from exaone_edge.llama import gpu_memory

    found = gpu_memory()
    return found[0] if found else None


def has_mtp_graph() -> bool:
    """Whether the llama.cpp this process loads was compiled with patches/llama.cpp (the EXAONE-4 MTP graph)."""
    import llama_cpp

    libraries = Path(llama_cpp.__file__).parent.glob("lib/libllama.so*")
    return any(MTP_MARKER in path.read_bytes() for path in libraries if path.is_file() and not path.is_symlink())


def probe() -> dict:
    import llama_cpp

    from exaone_edge.llama import gpu_backends, gpu_memory, supports_gpu_offload

    memory = gpu_memory()
    return {"llama_cpp": llama_cpp.__file__, "backends": gpu_backends(), "offload": supports_gpu_offload(),
            "free_bytes": memory[0] if memory else None, "total_bytes": memory[1] if memory else None,
            "mtp_graph": has_mtp_graph()}


def _fresh(directory: Path) -> Path:
    """An empty scratch folder (the check's work folder is its own: no atomic swap needed)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def inputs(kit: str, work: str, bench: bool) -> dict:
    """The tiny bundle (F32 decoder, fp32 vision) and, with `bench`, the real-width bench bundle (Q4_K_M decoder,
    no vision), from the kit's skeletons; the tiny prompt (text, the page's rows, text)."""
    from exaone_edge.benchmarks.synthetic import synthesize
    from exaone_edge.bundle import DecoderDetails, write_bundle
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.llama import tokenize
    from exaone_edge.quantize.gguf_convert import convert_to_gguf
    from exaone_edge.quantize.llama_quantize import quantize_tensors
    from exaone_edge.quantize.recipes import choose_recipe
    from exaone_edge.vision import VisionEncoder

    kit_dir, work_dir = Path(kit), Path(work)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    tiny = synthesize(kit_dir / "tiny", work_dir / "tiny-checkpoint", seed=0)
    decoder = convert_to_gguf(tiny, work_dir / "tiny-decoder.gguf", out_type="F32").path
    write_bundle(_fresh(work_dir / "tiny-bundle"), open_checkpoint(tiny), decoder, vision_dir=kit_dir / "vision-fp32",
                 decoder_details=DecoderDetails("F32"))
    seconds["tiny"] = time.perf_counter() - started
    gguf = work_dir / "tiny-bundle" / "decoder.gguf"
    text = "Invoice 42 from Hanbit Trading: 3 widgets at 1,200 each, VAT 10%, total due 3,960 by 2024-12-31. "
    ids_a, ids_b = tokenize(gguf, [text * 2, "What is the total due on this invoice? " + text * 2])
    rows = VisionEncoder(kit_dir / "vision-fp32", providers=["CPUExecutionProvider"]).encode(page_image())
    np.savez(work_dir / "prompt.npz", ids_a=np.array(ids_a), rows=rows, ids_b=np.array(ids_b))
    result = {"tiny_bundle": str(work_dir / "tiny-bundle"), "prompt": str(work_dir / "prompt.npz"),
              "positions": len(ids_a) + len(rows) + len(ids_b), "bench_bundle": None}
    if bench:
        started = time.perf_counter()
        model = synthesize(kit_dir / "bench", work_dir / "bench-checkpoint", seed=0, skip_prefixes=("model.visual.",))
        seconds["bench_weights"] = time.perf_counter() - started
        f16 = convert_to_gguf(model, work_dir / "bench-f16.gguf").path
        seconds["bench_f16"] = time.perf_counter() - started
        recipe = choose_recipe(4, None, imatrix=False)
        quantized = quantize_tensors(f16, work_dir / "bench-decoder.gguf", recipe)
        f16.unlink()
        write_bundle(_fresh(work_dir / "bench-bundle"), open_checkpoint(model), quantized,
                     decoder_details=DecoderDetails(recipe.level))
        result["bench_bundle"] = str(work_dir / "bench-bundle")
        seconds["bench"] = time.perf_counter() - started
    result["seconds"] = seconds
    return result


def logits(gguf: str, prompt: str, out: str, gpu_layers: int, flash_attn: bool, kv_type: str, n_ctx: int) -> dict:
    """Teacher-forced logits at every prompt position, llama.cpp's split and buffers, and GPU memory taken."""
    from exaone_edge.llama_context import LlamaContext, LlamaOptions

    log = LlamaLog()
    free_before = _memory()
    options = LlamaOptions(n_ctx=n_ctx, n_gpu_layers=gpu_layers, flash_attn=flash_attn, kv_type=kv_type)
    with LlamaContext(Path(gguf), options) as llama:
        values = llama.logits_all(_segments(Path(prompt)))
        free_after = _memory()
        process = process_gpu_bytes(os.getpid())
    np.save(out, values)
    return {"positions": len(values), "llama": parse_llama_log(log.text), "free_before": free_before,
            "free_after": free_after, "process_bytes": process}


def imatrix(gguf: str, prompt: str, out: str, gpu_layers: int) -> dict:
    from exaone_edge.quantize.imatrix import collect_imatrix

    log = LlamaLog()
    collected = collect_imatrix(Path(gguf), [_segments(Path(prompt))], ["gpu-check"], gpu_layers=gpu_layers)
    np.savez(out, **{f"sum:{name}": total for name, total in collected.sums.items()},
             **{f"count:{name}": np.array(count) for name, count in collected.counts.items()})
    return {"tensors": len(collected.sums), "llama": parse_llama_log(log.text)}


def decode(gguf: str, gpu_layers: int, flash_attn: bool, kv_type: str, n_ctx: int, tokens: int,
           prompt_tokens: int = 64, warmup: int = 16) -> dict:
    """Greedy decode speed: `tokens` single-token steps after a prompt and `warmup` steps (CUDA graphs captured)."""
    from exaone_edge.llama_context import LlamaContext, LlamaOptions, TextSegment

    log = LlamaLog()
    free_before = _memory()
    options = LlamaOptions(n_ctx=n_ctx, n_gpu_layers=gpu_layers, flash_attn=flash_attn, kv_type=kv_type)
    with LlamaContext(Path(gguf), options) as llama:
        llama.prefill([TextSegment(list(range(100, 100 + prompt_tokens)))])
        token = int(np.argmax(llama.logits()))
        for _ in range(warmup):
            llama.append(token)
            token = int(np.argmax(llama.logits()))
        started = time.perf_counter()
        for _ in range(tokens):
            llama.append(token)
            token = int(np.argmax(llama.logits()))
        seconds = time.perf_counter() - started
        free_after = _memory()
        process = process_gpu_bytes(os.getpid())
    return {"tokens": tokens, "seconds": seconds, "n_ctx": n_ctx, "tokens_per_s": tokens / seconds,
            "mean_length": prompt_tokens + warmup + tokens / 2, "llama": parse_llama_log(log.text),
            "free_before": free_before, "free_after": free_after, "process_bytes": process}


def drafts(bundle: str, prompt: str, out: str, gpu_layers: int, n_ctx: int, cuts: int = 48, k: int = 3) -> dict:
    """Teacher-forced MTP drafts on the tiny bundle: at `cuts` points in the prompt's question the head drafts k tokens
    after the true next one; its logits at every draft step go to `out` (F32 KV, no flash attention, as the logits
    paths). Nothing runs without the MTP graph in this llama.cpp."""
    from exaone_edge.bundle import load_bundle
    from exaone_edge.llama_context import EmbeddingSegment, LlamaContext, LlamaOptions, TextSegment

    if not has_mtp_graph():
        return {"mtp_graph": False}
    log = LlamaLog()
    loaded = load_bundle(Path(bundle), verify=False)
    ids_a, rows, ids_b = _segments(Path(prompt))
    points = sorted(set(np.linspace(1, len(ids_b) - 1, cuts).astype(int).tolist()))
    options = LlamaOptions(n_ctx=n_ctx, n_gpu_layers=gpu_layers, flash_attn=False, kv_type="f32", mtp=True,
                           image_token=loaded.spec.image_token_id)
    head_logits: list[np.ndarray] = []
    tokens: list[list[int]] = []
    with LlamaContext(loaded.decoder_path, options) as llama:
        for cut in points:
            llama.prefill([TextSegment(ids_a), EmbeddingSegment("page", rows), TextSegment(ids_b[:cut])])
            drafted = llama.mtp.draft([(0, ids_b[cut])], k, logits=head_logits)[0]
            if drafted is None:
                raise RuntimeError(f"the MTP head lost track of the sequence at position {len(ids_a) + len(rows) + cut}")
            tokens.append(drafted)
    np.save(out, np.stack(head_logits))
    return {"mtp_graph": True, "cuts": len(points), "k": k, "tokens": tokens, "llama": parse_llama_log(log.text)}


def draft_timing(bundle: str, k_max: int = 4, repeats: int = 20, prompt_tokens: int = 256) -> dict:
    """`bench --only draft`'s timings on the bench bundle, every layer and the head where llama.cpp puts them (the
    GPU), flash attention and a q8_0 KV cache as the 24 GB plan runs them."""
    from exaone_edge.benchmarks.drafting import has_mtp_head, measure
    from exaone_edge.bundle import load_bundle

    loaded = load_bundle(Path(bundle), verify=False)
    if not has_mtp_head(loaded.decoder_path):
        return {"head": False}
    log = LlamaLog()
    timings = measure(loaded.decoder_path, list(range(100, 100 + prompt_tokens)), k_max=k_max, threads=None,
                      repeats=repeats, image_token=loaded.spec.image_token_id, flash_attn=True, kv_type="q8_0")
    return {"head": True, "timings": timings.to_dict(), "llama": parse_llama_log(log.text)}


def vision(directory: str, provider: str, out: str, repeat: int = 6) -> dict:
    """The page through ONNX Runtime on `provider` ("cpu" or "cuda"): the rows, the first (cold) and the median of
    the later (warm) encode times, and what ONNX Runtime offers and ran."""
    import onnxruntime

    from exaone_edge.errors import ExaoneEdgeError
    from exaone_edge.vision import VisionEncoder

    available = list(onnxruntime.get_available_providers())
    result = {"available": available, "ran": False, "providers": None, "error": None}
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        return result
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    try:
        encoder = VisionEncoder(Path(directory), providers=wanted)
    except ExaoneEdgeError as exc:  # the CUDA provider listed but not started (missing CUDA/cuDNN libraries)
        result["error"] = str(exc)
        return result
    page, times = page_image(), []
    for _ in range(repeat):
        started = time.perf_counter()
        rows = encoder.encode(page)
        times.append(time.perf_counter() - started)
    np.save(out, rows)
    return dict(result, ran=True, providers=list(encoder.providers), precision=encoder.precision,
                cold_s=times[0], warm_s=statistics.median(times[1:]))


def bandwidth(gib: int = 1, repeat: int = 10) -> dict:
    """Device memory bandwidth from a device-to-device copy (bytes read + written per second); torch only."""
    import torch

    if not torch.cuda.is_available():
        return {"bytes_per_s": None}
    source = torch.empty(gib * 2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        target.copy_(source)
    torch.cuda.synchronize()
    return {"bytes_per_s": repeat * 2 * source.numel() / (time.perf_counter() - started), "device": torch.cuda.get_device_name()}


TASKS = {"probe": probe, "inputs": inputs, "logits": logits, "imatrix": imatrix, "decode": decode, "vision": vision,
         "bandwidth": bandwidth, "drafts": drafts, "draft_timing": draft_timing}


def main(argv: list[str]) -> int:
    task, args, result_path = argv[0], json.loads(argv[1]), Path(argv[2])
    result = TASKS[task](**args)
    partial = result_path.with_name(result_path.name + ".partial")
    partial.write_text(json.dumps(result, indent=1), encoding="utf-8")
    partial.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
