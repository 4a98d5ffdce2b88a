"""Peak memory of `exaone-edge export` against the vision tower's float32 size (issue: ≤ about 2×).

    .venv/bin/python benchmarks/vision_export_memory.py [--depth 4] [--precision int8] [--work DIR]

Builds (once) a checkpoint whose vision tower has the released 33B model's widths (exaone_edge/data/
exaone45_33b_config.json: hidden 2048, MLP 5120, 32/8 heads, patch 14, merger to 5120) with `--depth`
blocks, the last one full-attention as in the release, and random bf16 weights, on top of the tiny decoder. Exports it in a fresh process (int8 calibrates
on a generated 3-page document set) and
compares that process's peak RSS, minus the peak of exporting the tiny model the same way (the
fixed cost of torch, transformers and ONNX Runtime), with the tower's float32 bytes. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from exaone_edge.spec import RELEASED_33B_CONFIG


def build(out: Path, tiny: Path, depth: int) -> int:
    """Tiny checkpoint with its vision tower replaced by a real-width one; returns the tower's parameters."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.models.exaone4_5.configuration_exaone4_5 import Exaone4_5_VisionConfig
    from transformers.models.exaone4_5.modeling_exaone4_5 import Exaone4_5_VisionModel

    shutil.copytree(tiny, out)
    real = json.loads(RELEASED_33B_CONFIG.read_text())["vision_config"]
    vision = dict(real, depth=depth, fullatt_block_indexes=[depth - 1],
                  rope_parameters={"rope_theta": 10000.0, "rope_type": "axial"})
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(set(index["weight_map"].values())):  # drop the tiny tower
        tensors = load_file(str(out / shard))
        save_file({k: v for k, v in tensors.items() if not k.startswith("model.visual.")}, str(out / shard),
                  metadata={"format": "pt"})
    torch.manual_seed(0)
    config = Exaone4_5_VisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    model = Exaone4_5_VisionModel._from_config(config, dtype=torch.bfloat16)
    state = {f"model.visual.{k}": v.contiguous() for k, v in model.state_dict().items()}
    params = sum(v.numel() for v in state.values())
    save_file(state, str(out / "model-visual.safetensors"), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("model.visual.")}
    index["weight_map"].update({name: "model-visual.safetensors" for name in state})
    index_path.write_text(json.dumps(index, indent=2))
    config_path = out / "config.json"
    full = json.loads(config_path.read_text())
    full["vision_config"] = {**full["vision_config"], **vision}
    config_path.write_text(json.dumps(full, indent=2))
    return params


def peak_rss_of_export(model: Path, out: Path, options: list[str]) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of one `exaone-edge export` in a fresh interpreter."""
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, sys; from exaone_edge.cli import main; sys.argv=['exaone-edge', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n"
            "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "export", str(model), "-o", str(out), *options],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    peak_kib = int(next(line for line in done.stderr.splitlines() if line.startswith("PEAK")).split()[1])
    return peak_kib * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8", "int8w", "int4"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-vision-mem"))
    args = parser.parse_args()

    from exaone_edge.fixtures.tiny_model import build_tiny_model

    tiny = args.work / "tiny"
    if not tiny.exists():
        build_tiny_model(tiny)
    wide = args.work / f"real-width-depth{args.depth}"
    if not wide.exists():
        build(wide, tiny, args.depth)
    from exaone_edge.checkpoint import open_checkpoint

    params = open_checkpoint(wide).spec.vision.params
    options = ["--precision", args.precision]
    if args.precision == "int8":
        docs = args.work / "docs"
        if not docs.exists():
            from exaone_edge.documents import generate_set

            generate_set(3, ["en", "ko"], 0, docs)
        options += ["--calibration", str(docs)]
    base_peak, base_s = peak_rss_of_export(tiny, args.work / "out-tiny", options)
    peak, seconds = peak_rss_of_export(wide, args.work / "out-wide", options)
    fp32 = 4 * params
    print(json.dumps({
        "precision": args.precision, "vision_params": params, "vision_fp32_bytes": fp32,
        "peak_rss_bytes": peak, "baseline_peak_rss_bytes": base_peak,
        "peak_above_baseline_over_fp32": round((peak - base_peak) / fp32, 2),
        "export_seconds": round(seconds, 1), "baseline_seconds": round(base_s, 1),
        "onnx_bytes": (args.work / "out-wide" / "vision.onnx").stat().st_size,
    }, indent=2))


if __name__ == "__main__":
    main()
