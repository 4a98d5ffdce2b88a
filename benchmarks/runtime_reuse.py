"""What a second question about the same page costs: time to first token, cold vs with reuse.

    python benchmarks/runtime_reuse.py BUNDLE --image page.png [--repeats 5] [--threads 2]
    python benchmarks/runtime_reuse.py BUNDLE --reference-vision MODEL_DIR   # bundle without vision/: rows from
                                                                             # the checkpoint's tower (torch)

Cold: vision-row cache and KV cache emptied before the question. Reuse: the same page was just asked
about, so the encoder does not run and only the new question is decoded. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--reference-vision", type=Path, help="checkpoint dir: encode with its torch vision tower")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()

    from PIL import Image

    from exaone_edge.runtime.bundle import load_bundle
    from exaone_edge.runtime.documents import open_image
    from exaone_edge.runtime.engine import Engine, EngineOptions
    from exaone_edge.runtime.generation import GenerationParams, collect

    vision = None
    if args.reference_vision:
        import torch
        from transformers import Exaone4_5_ForConditionalGeneration

        from runtime_bundle_fixture import TransformersVisionRows

        model = Exaone4_5_ForConditionalGeneration.from_pretrained(args.reference_vision, dtype=torch.float32).eval()
        vision = TransformersVisionRows(model, args.reference_vision)
    engine = Engine(load_bundle(args.bundle), EngineOptions(n_threads=args.threads), vision=vision)
    if args.image:
        page = open_image(args.image)
    else:
        import numpy as np

        page = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))

    def ask(question: str):
        content = [{"type": "image", "image": page}, {"type": "text", "text": question}]
        return collect(engine.generate([{"role": "user", "content": content}], GenerationParams(max_tokens=args.max_tokens)))

    ask("Warm-up.")
    cold, reuse, cold_vision, cold_prefill, last = [], [], [], [], None
    for i in range(args.repeats):
        engine.cache = type(engine.cache)(engine.cache.max_entries, engine.cache.max_bytes)
        engine.llama.reset()
        first = ask(f"What is the total amount on page {i}?")
        second = ask(f"Who signed the document on page {i}?")
        assert second.usage.vision_runs == 0
        cold.append(first.timings.ttft_s)
        cold_vision.append(first.timings.vision_s)
        cold_prefill.append(first.timings.prefill_s)
        reuse.append(second.timings.ttft_s)
        last = (first.usage, second.usage)
    report = {
        "bundle": str(args.bundle),
        "image_rows": last[0].image_rows,
        "prompt_positions": last[0].prompt_tokens,
        "reused_positions": last[1].cached_tokens,
        "ttft_cold_ms": round(statistics.median(cold) * 1000, 1),
        "cold_vision_ms": round(statistics.median(cold_vision) * 1000, 1),
        "cold_prefill_ms": round(statistics.median(cold_prefill) * 1000, 1),
        "ttft_second_question_ms": round(statistics.median(reuse) * 1000, 1),
        "vision_runs_total": engine.vision_runs,
        "repeats": args.repeats,
    }
    print(json.dumps(report, indent=2))
    engine.close()


if __name__ == "__main__":
    main()
