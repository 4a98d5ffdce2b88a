"""Checkpoint → GGUF conversion: throughput against a plain copy of the same bytes, peak memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from exaone_edge.benchmarks.timing import interleaved, median, seconds


@dataclass(frozen=True)
class Conversion:
    checkpoint_bytes: int
    convert_s: float
    copy_s: float
    peak_rss: int
    largest_tensor: int


def compare_with_copy(model_dir: Path, work: Path | None = None, repeats: int = 3) -> Conversion:
    """Convert to F16 in a fresh process and copy the shards, alternating `repeats` times; medians.

    Both write as many bytes as the checkpoint holds, so each starts with the page cache's dirty pages
    flushed (`os.sync`, untimed): otherwise whichever runs second waits for the first one's writeback.
    """
    model_dir = Path(model_dir)
    shards = sorted(model_dir.glob("*.safetensors"))
    with tempfile.TemporaryDirectory(dir=work, prefix="exaone-edge-bench-") as tmp:
        out = Path(tmp)
        for shard in shards:  # page the checkpoint in once, so neither side pays the first disk read
            shutil.copyfile(shard, out / shard.name)
            (out / shard.name).unlink()

        def convert() -> dict:
            os.sync()
            converted = measure_conversion(model_dir, out / "decoder.gguf")
            (out / "decoder.gguf").unlink()
            return converted

        def copy() -> float:
            os.sync()
            elapsed = seconds(lambda: [shutil.copyfile(shard, out / shard.name) for shard in shards])
            for shard in shards:
                (out / shard.name).unlink()
            return elapsed

        runs = interleaved({"convert": convert, "copy": copy}, repeats, warmup=False)
    return Conversion(
        checkpoint_bytes=sum(shard.stat().st_size for shard in shards),
        convert_s=median([run["seconds"] for run in runs["convert"]]),
        copy_s=median(runs["copy"]),
        peak_rss=max(run["peak_rss"] for run in runs["convert"]),
        largest_tensor=largest_tensor(model_dir),
    )


def measure_conversion(checkpoint: Path, output: Path) -> dict:
    """Convert in a fresh interpreter; it reports its own peak RSS.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report
    this (torch-laden) parent's size.
    """
    code = (
        "import json, re, sys, time\n"
        "from exaone_edge.quantize.gguf_convert import convert_to_gguf\n"
        "t = time.monotonic(); r = convert_to_gguf(sys.argv[1], sys.argv[2], 'F16')\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "print(json.dumps({'peak_rss': hwm, 'seconds': time.monotonic() - t, 'bytes': r.bytes}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(checkpoint), str(output)], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def largest_tensor(checkpoint: Path) -> int:
    from exaone_edge.checkpoint import DTYPE_BYTES, open_checkpoint

    return max(info.numel * DTYPE_BYTES[info.dtype] for info in open_checkpoint(checkpoint).tensors.values())
