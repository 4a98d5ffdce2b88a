"""Peak memory of checkpoint → GGUF conversion on a checkpoint of a few GB at EXAONE 4.5's real widths.

    .venv/bin/python benchmarks/convert_memory.py [--layers 2] [--work /tmp/exaone-edge-bench] [--keep]

Builds (once) a bf16 checkpoint with the 33B model's hidden/FFN/vocab sizes (exaone_edge/data/
exaone45_33b_config.json) but only `--layers` decoder layers, all global attention (llama.cpp's
sliding-window pattern needs exactly 64 layers, irrelevant to memory). Converts it to F16 in a
fresh process and compares that process's peak RSS with 1.5 × the largest tensor + the fixed
overhead, measured as the peak RSS of converting the tiny model the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np

from exaone_edge.spec import RELEASED_33B_CONFIG

CHUNK = 16 << 20  # elements generated at a time while building


def build_checkpoint(out: Path, tiny: Path, layers: int, seed: int = 0) -> int:
    """Write a bf16 checkpoint, one tensor per shard, never holding more than a chunk in memory."""
    real = json.loads(RELEASED_33B_CONFIG.read_text())["text_config"]
    config = json.loads((tiny / "config.json").read_text())
    text = dict(config["text_config"])
    text.update({k: real[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                                      "num_key_value_heads", "head_dim", "rope_parameters", "max_position_embeddings")})
    text.update(num_hidden_layers=layers, layer_types=["full_attention"] * layers, sliding_window=None,
                num_nextn_predict_layers=0)
    text.pop("sliding_window_pattern", None)
    config["text_config"] = text
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "chat_template.jinja"):
        shutil.copy2(tiny / name, out / name)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    q, kv, head = text["num_attention_heads"] * text["head_dim"], text["num_key_value_heads"] * text["head_dim"], text["head_dim"]
    shapes = {"model.language_model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.language_model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.language_model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, q),
            p + "self_attn.q_norm.weight": (head,), p + "self_attn.k_norm.weight": (head,),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "post_attention_layernorm.weight": (hidden,), p + "post_feedforward_layernorm.weight": (hidden,),
        })
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for index, (name, shape) in enumerate(shapes.items()):
        shard = f"model-{index:05d}.safetensors"
        numel = int(np.prod(shape))
        header = json.dumps({name: {"dtype": "BF16", "shape": list(shape), "data_offsets": [0, numel * 2]}}).encode()
        header += b" " * (-len(header) % 8)
        with open(out / shard, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            for start in range(0, numel, CHUNK):
                values = rng.standard_normal(min(CHUNK, numel - start), dtype=np.float32) * 0.02
                if len(shape) == 1:
                    values += 1.0
                handle.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        weight_map[name] = shard
        total += numel * 2
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=1))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and GGUFs")
    args = parser.parse_args()
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    tiny = args.work / "tiny"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, overwrite=True)
    big = args.work / f"real-width-{args.layers}L"
    if not (big / "model.safetensors.index.json").exists():
        started = time.monotonic()
        size = build_checkpoint(big, tiny, args.layers)
        print(f"built {big}: {size / 2**30:.2f} GiB in {time.monotonic() - started:.0f} s", file=sys.stderr)
    from exaone_edge.benchmarks.conversion import largest_tensor, measure_conversion as measure

    overhead = measure(tiny, args.work / "tiny.gguf")
    run = measure(big, args.work / "big.gguf")
    largest = largest_tensor(big)
    bound = 1.5 * largest + overhead["peak_rss"]
    report = {
        "checkpoint_bytes": sum(p.stat().st_size for p in big.glob("*.safetensors")),
        "largest_tensor_bytes": largest,
        "fixed_overhead_rss": overhead["peak_rss"],
        "peak_rss": run["peak_rss"],
        "bound_rss": int(bound),
        "within_bound": run["peak_rss"] <= bound,
        "seconds": round(run["seconds"], 1),
        "output_bytes": run["bytes"],
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    sys.exit(0 if report["within_bound"] else 1)


if __name__ == "__main__":
    main()
