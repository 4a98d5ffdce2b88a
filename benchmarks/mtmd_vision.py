"""llama.cpp's own EXAONE 4.5 vision path (libmtmd + an mmproj from llama.cpp's converter), for comparison.

Benchmark only (issue #9): the tools come from the llama-cpp-python sdist we pin, built once under
~/.cache/exaone-edge/llama-mtmd/; nothing here is written into the repository or shipped in a bundle.
Where mtmd (0c1e570) differs from HF, read in its source: it letterboxes pages (aspect kept, black
padding) where HF stretches; it rounds half-way sides (odd multiples of 16 px at factor 32) up where
HF rounds to even, so such images get other token counts; it ignores the checkpoint's window_size (112).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge.errors import CheckpointError, ExaoneEdgeError
from exaone_edge.progress import log

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "exaone-edge" / "llama-mtmd"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
)
TARGET = "llama-mtmd-cli"


class MtmdError(ExaoneEdgeError):
    """llama.cpp's tools could not be built or run, or lack what the comparison needs."""


def _run(cmd: list[str], *, env: dict[str, str] | None = None) -> str:
    """Run a tool, its output kept (stdout + stderr) and shown only when it fails."""
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")  # a random model can emit half a UTF-8 character
    if done.returncode != 0:
        raise MtmdError(f"`{' '.join(map(str, cmd[:3]))} …` failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
    return done.stdout


def llama_cpp_source(cache_dir: Path | None = None) -> Path:
    """vendor/llama.cpp of the pinned llama-cpp-python sdist, downloaded and unpacked once."""
    cache = Path(cache_dir or CACHE)
    source = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    sdist = cache / "sdist" / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {VERSION} sdist → {sdist.parent}")
        _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-binary", ":all:",
              "--no-deps", "-d", str(sdist.parent)])
    log(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as tar:
        tar.extractall(cache, filter="data")
    return source


def _works(binary: Path) -> bool:
    return binary.is_file() and subprocess.run([binary, "--version"], capture_output=True).returncode == 0


def build_mtmd(cache_dir: Path | None = None) -> Path:
    """Path of a working `llama-mtmd-cli`, built from the sdist's llama.cpp on first use (minutes)."""
    cache = Path(cache_dir or CACHE)
    binary = cache / "build" / "bin" / TARGET
    if _works(binary):
        return binary
    source = llama_cpp_source(cache)
    cores = str(os.cpu_count() or 1)
    started = time.perf_counter()
    log(f"configuring llama.cpp ({source})")
    _run(["cmake", "-S", str(source), "-B", str(cache / "build"), *CMAKE_FLAGS])
    log(f"building {TARGET} with {cores} jobs (about 17 min on 2 busy cores)")
    _run(["cmake", "--build", str(cache / "build"), "--config", "Release", "--target", TARGET, "-j", cores])
    if not _works(binary):
        raise MtmdError(f"{binary} was built but does not run")
    log(f"built {binary} in {time.perf_counter() - started:.0f} s")
    return binary


def _with_pixel_bounds(model_dir: Path, scratch: Path) -> Path:
    """The checkpoint, or a symlinked copy whose preprocessor_config.json has top-level min/max_pixels.

    The converter reads `min_pixels` / `max_pixels` only; transformers 5 (and our tiny checkpoints)
    write them as size.shortest_edge / size.longest_edge, the same numbers under other keys.
    """
    path = model_dir / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "min_pixels" in config and "max_pixels" in config:
        return model_dir
    size = config.get("size") or {}
    if not {"shortest_edge", "longest_edge"} <= set(size):
        raise CheckpointError("the converter needs min_pixels/max_pixels (or size.shortest_edge/longest_edge)",
                              path=path)
    log("converter needs top-level min_pixels/max_pixels: giving it a copy with them from size.*")
    shadow = scratch / model_dir.name  # the converter names the model after its directory
    shadow.mkdir()
    for item in model_dir.iterdir():
        if item.name != path.name:
            (shadow / item.name).symlink_to(item.resolve())
    config.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    (shadow / path.name).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return shadow


def convert_mmproj(model_dir: Path, out: Path, cache_dir: Path | None = None) -> Path:
    """EXAONE 4.5 vision tower → mmproj GGUF (F32: we compare with our fp32 graph) by llama.cpp's converter."""
    source = llama_cpp_source(cache_dir)
    classes = "".join(p.read_text(encoding="utf-8") for p in (source / "conversion").glob("*.py"))
    constants = (source / "gguf-py" / "gguf" / "constants.py").read_text(encoding="utf-8")
    gaps = [what for what, present in (
        ("an mmproj class for Exaone4_5_ForConditionalGeneration (conversion/*.py)",
         "Exaone4_5_ForConditionalGeneration" in classes and "VisionProjectorType.EXAONE4_5" in classes),
        ("projector type exaone4_5 in its gguf-py", 'EXAONE4_5 = "exaone4_5"' in constants)) if not present]
    if gaps:
        raise MtmdError(f"llama.cpp's converter in {source} lacks EXAONE 4.5 vision support: " + "; ".join(gaps))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # the vendored gguf-py, not the PyPI gguf: the script targets its own copy
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
    log(f"converting the vision tower with llama.cpp's converter → {out}")
    with tempfile.TemporaryDirectory(prefix="mtmd-ckpt-") as scratch:
        checkpoint = _with_pixel_bounds(Path(model_dir), Path(scratch))
        _run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(checkpoint), "--mmproj",
              "--outtype", "f32", "--outfile", str(out)], env=env)
    return out


MTMD_WINDOW = 112  # clip.cpp never reads clip.vision.window_size for exaone4_5: it falls back to 112 pixels


def window_note(model_dir: Path) -> str | None:
    """Why mtmd's window-attention blocks would differ from the checkpoint's, or None when they agree."""
    vision = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["vision_config"]
    patch, merge = vision["patch_size"], vision.get("spatial_merge_size", 2)
    ours, theirs = vision["window_size"] // merge // patch, MTMD_WINDOW // patch // merge
    if ours == theirs:
        return None
    return (f"window_size {vision['window_size']} = {ours} merge units per window side, mtmd uses {theirs} "
            f"({MTMD_WINDOW} px): its window blocks attend differently (times comparable, rows not)")


ENCODED = re.compile(r"mtmd batch encoding done in (\d+) ms")  # mtmd-cli.cpp, around mtmd_batch_encode()
IMAGE_TOKENS = re.compile(r"decoding image batch \d+/\d+, n_tokens_batch = (\d+)")  # mtmd-helper.cpp


def mtmd_run(decoder_gguf: Path, mmproj: Path, image: Path, threads: int, *, copies: int = 1, flash_attn: str = "off",
             dump: Path | None = None, cache_dir: Path | None = None) -> tuple[list[float], int]:
    """One `llama-mtmd-cli` process given the image `copies` times: (encode seconds of each copy, image tokens).

    Each copy sits between <vision>…</vision> text, so each is its own mtmd batch and encode. Flash
    attention is off by default: on CPU it runs in F16, and the comparison is at fp32.
    """
    from gguf import GGUFReader  # the PyPI gguf reads the mmproj's pixel budget to size the context

    fields = GGUFReader(mmproj).fields
    unit = (int(fields["clip.vision.patch_size"].contents()) * 2) ** 2
    context = copies * (int(fields["clip.vision.image_max_pixels"].contents()) // unit + 16) + 512
    # --jinja: the GGUF's EXAONE template is no built-in one; -lv 4 lets libmtmd's info lines (token count) through
    cmd = [str(build_mtmd(cache_dir)), "-m", str(decoder_gguf), "--mmproj", str(mmproj),
           *[arg for _ in range(copies) for arg in ("--image", str(image))], "-p", "Describe the page.",
           "-n", "1", "--temp", "0", "-t", str(threads), "-c", str(context), "-fa", flash_attn, "--jinja", "-lv", "4"]
    env = {**os.environ, "MTMD_DEBUG_EMBEDDINGS": str(dump)} if dump else None  # writes [n, n_embd] int32 + f32 rows
    text = _run(cmd, env=env)
    encoded, tokens = [int(ms) / 1000 for ms in ENCODED.findall(text)], sum(map(int, IMAGE_TOKENS.findall(text)))
    if len(encoded) != copies or tokens % copies:
        raise MtmdError(f"llama-mtmd-cli's log has {len(encoded)} encode times and {tokens} image tokens "
                        f"for {copies} images:\n{text[-2000:]}")
    return encoded, tokens // copies


def mtmd_encode_seconds(decoder_gguf: Path, mmproj: Path, image: Path, threads: int, repeats: int = 3, *,
                        flash_attn: str = "off", model_dir: Path | None = None,
                        cache_dir: Path | None = None) -> dict[str, Any]:
    """Median of llama.cpp's own encode time (whole ms) over `repeats` warm encodes in one process.

    The first encode of the process (first touch of its compute buffers) is reported apart as cold_s.
    With `model_dir`, also the rows our runtime gives the same image (exaone_edge.vision.rows_for).
    """
    if repeats < 1:
        raise MtmdError("repeats must be at least 1")
    times, tokens = mtmd_run(decoder_gguf, mmproj, image, threads, copies=repeats + 1, flash_attn=flash_attn,
                             cache_dir=cache_dir)
    result: dict[str, Any] = {
        "encode_s": statistics.median(times[1:]), "runs_s": times[1:], "cold_s": times[0],
        "mtmd_image_tokens": tokens, "threads": threads, "flash_attn": flash_attn,
    }
    if model_dir is not None:
        from exaone_edge.checkpoint import open_checkpoint
        from exaone_edge.images import open_image
        from exaone_edge.vision import rows_for

        page = open_image(Path(image))
        result["our_rows"] = rows_for(page.size, open_checkpoint(Path(model_dir), read_weights=False).image)
        result["rows_match"] = result["our_rows"] == tokens
    return result


def embedding_check(model_dir: Path, decoder_gguf: Path, mmproj: Path, image: Path, threads: int,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """mtmd's image rows vs the HF vision tower, on the page pre-resized to our grid.

    mtmd letterboxes (aspect kept, black padding) where HF stretches; feeding both an image already
    at the target size makes both skip resizing, so only the encoders are compared.
    """
    import torch
    from PIL import Image

    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.torch_weights import load_vision_tower
    from exaone_edge.images import open_image
    from exaone_edge.vision import grid_for, preprocess

    checkpoint = open_checkpoint(Path(model_dir))
    page = open_image(Path(image))
    _, h, w = grid_for(page.size, checkpoint.image)
    patch = checkpoint.image.patch_size
    sized = page.resize((w * patch, h * patch), resample=Image.Resampling.BICUBIC)
    with tempfile.TemporaryDirectory(prefix="mtmd-embd-") as scratch:
        png, dump = Path(scratch) / "page.png", Path(scratch) / "rows.bin"
        sized.save(png)
        mtmd_run(decoder_gguf, mmproj, png, threads, dump=dump, cache_dir=cache_dir)
        n_tokens, n_embd = np.fromfile(dump, dtype=np.int32, count=2)
        ours = np.fromfile(dump, dtype=np.float32, offset=8).reshape(n_tokens, n_embd)
    patches, grid = preprocess(sized, checkpoint.image)
    with torch.no_grad():
        reference = load_vision_tower(checkpoint, attention="eager")(torch.from_numpy(patches), grid_thw=torch.tensor([grid]))
    reference = reference.pooler_output.float().numpy()
    if ours.shape != reference.shape:
        raise MtmdError(f"mtmd rows {ours.shape} vs HF rows {reference.shape}")
    diff = np.abs(ours - reference)
    return {"shape": list(ours.shape), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "reference_max_abs": float(np.abs(reference).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="Hugging Face EXAONE 4.5 checkpoint directory")
    parser.add_argument("decoder_gguf", type=Path, help="decoder GGUF (e.g. a bundle's decoder.gguf)")
    parser.add_argument("image", type=Path, help="page image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flash-attn", choices=("off", "on", "auto"), default="off", help="mtmd's (CPU: F16)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {CACHE}")
    parser.add_argument("--check-embeddings", action="store_true", help="also compare rows with the HF tower")
    args = parser.parse_args(argv)
    try:
        started = time.perf_counter()
        binary = build_mtmd(args.cache_dir)
        with tempfile.TemporaryDirectory(prefix="mtmd-proj-") as scratch:
            mmproj = convert_mmproj(args.model_dir, Path(scratch) / "mmproj-f32.gguf", args.cache_dir)
            report = {"binary": str(binary), "mmproj": "f32 (llama.cpp converter)",
                      **mtmd_encode_seconds(args.decoder_gguf, mmproj, args.image, args.threads, args.repeats,
                                            flash_attn=args.flash_attn, model_dir=args.model_dir,
                                            cache_dir=args.cache_dir)}
            if note := window_note(args.model_dir):
                report["caveat"] = note
            if args.check_embeddings:
                report["embeddings_vs_hf"] = embedding_check(args.model_dir, args.decoder_gguf, mmproj, args.image,
                                                             args.threads, args.cache_dir)
        report["wall_s"] = round(time.perf_counter() - started, 1)
    except ExaoneEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
