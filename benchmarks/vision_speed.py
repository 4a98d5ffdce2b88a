"""ORT fp32 (the exported one-graph encoder) vs PyTorch eager (transformers) on CPU, one A4 page.

    python benchmarks/vision_speed.py [--config tests/data/exaone45_33b_config.json] [--depth 4] [--dpi 100]

The vision tower has the real per-layer widths from the config (hidden, MLP, heads, KV heads, patch,
window, merger to the decoder width) and `--depth` blocks with random weights; every block costs the
same, so the ratio carries over to the full depth. Prints JSON on stdout: seconds per page (median of
--repeats after one warm-up) for each runtime and the ratio, plus the max abs diff between them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
A4_INCHES = (8.27, 11.69)


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (also the result we compare)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "tests/data/exaone45_33b_config.json")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers.models.exaone4_5.configuration_exaone4_5 import Exaone4_5_VisionConfig
    from transformers.models.exaone4_5.modeling_exaone4_5 import Exaone4_5_VisionModel

    from exaone_edge.export.onnx_graph import trace_to_onnx
    from exaone_edge.progress import log
    from exaone_edge.spec import ImageSpec, vision_spec
    from exaone_edge.vision import graph_inputs, grid_for, rope_theta
    from exaone_edge.vision.encoder import session

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw = json.loads(args.config.read_text())
    vision = dict(raw["vision_config"], depth=args.depth)
    # keep the real ratio of window to full-attention blocks (1 in 8), at least one of each
    every = max(2, raw["vision_config"]["depth"] // len(raw["vision_config"]["fullatt_block_indexes"]))
    vision["fullatt_block_indexes"] = [i for i in range(args.depth) if i % every == every - 1] or [args.depth - 1]
    vision.setdefault("rope_parameters", {"rope_theta": 10000.0, "rope_type": "axial"})
    vision_config = Exaone4_5_VisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    spec = vision_spec(vision, args.config)
    theta = rope_theta(vision)

    # an A4 page at --dpi, inside a pixel budget large enough not to shrink it
    page = tuple(round(inches * args.dpi) for inches in A4_INCHES)
    image = ImageSpec(min_pixels=4 * 32 * 32, max_pixels=64 * 2**20, patch_size=spec.patch_size,
                      merge_size=spec.spatial_merge_size, temporal_patch_size=spec.temporal_patch_size,
                      image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    grid = grid_for(page, image)
    n = grid[1] * grid[2]
    width = spec.in_channels * spec.temporal_patch_size * spec.patch_size**2
    patches = np.random.default_rng(0).standard_normal((n, width), dtype=np.float32)
    feeds = {"pixel_patches": patches, **graph_inputs([grid], spec, theta)}
    log(f"A4 at {args.dpi} DPI {page}: grid {grid[1]}x{grid[2]} = {n} patches; {args.depth} blocks "
        f"(full attention at {vision['fullatt_block_indexes']}), hidden {spec.hidden_size}, MLP "
        f"{spec.intermediate_size}, heads {spec.num_heads}/{spec.num_kv_heads}, out {spec.out_hidden_size}")

    vision_config._attn_implementation = "eager"
    model = Exaone4_5_VisionModel._from_config(vision_config, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())

    def torch_forward():
        with torch.no_grad():
            return model(torch.from_numpy(patches), grid_thw=torch.tensor([grid])).pooler_output.numpy()

    results = {}
    seconds, reference = timed(torch_forward, args.repeats)
    results["torch_eager_s"] = round(seconds, 3)
    log(f"PyTorch, eager attention: {seconds:.2f} s/page")
    # the attention function is looked up from the config at each forward
    model.config._attn_implementation = "sdpa"
    seconds, _ = timed(torch_forward, args.repeats)
    results["torch_sdpa_s"] = round(seconds, 3)
    log(f"PyTorch, SDPA attention: {seconds:.2f} s/page")
    model.config._attn_implementation = "eager"
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "vision.onnx"
        start = time.perf_counter()
        trace_to_onnx(model, feeds, target, 4 * params)
        log(f"exported in {time.perf_counter() - start:.0f} s")
        del model
        ort = session(target, ["CPUExecutionProvider"], threads=args.threads)
        seconds, got = timed(lambda: ort.run(["rows"], feeds)[0], args.repeats)
    results["ort_fp32_s"] = round(seconds, 3)
    log(f"ONNX Runtime fp32: {seconds:.2f} s/page")
    results["max_abs_diff"] = float(np.abs(got - reference).max())

    results.update(
        page=list(page), grid=list(grid), patches=n, depth=args.depth, params_m=round(params / 1e6, 1),
        threads=args.threads, repeats=args.repeats,
        speedup_vs_torch_eager=round(results["torch_eager_s"] / results["ort_fp32_s"], 2),
        speedup_vs_torch_sdpa=round(results["torch_sdpa_s"] / results["ort_fp32_s"], 2),
        torch=torch.__version__,
    )
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
