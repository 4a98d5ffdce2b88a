"""Peak RSS of validate's reference and of the GPTQ fidelity reference: layer-streamed vs whole-model transformers.

    .venv/bin/python benchmarks/reference_memory.py [--layers 2,8] [--whole-layers 2,8] [--work DIR] [--json OUT]

Builds (once) the bench preset (EXAONE 4.5's real decoder widths: hidden 5120, FFN 27392, 40/8 heads) with
2 decoder layers, and derives more-layer variants from it one layer at a time (layer i copies layer i mod 2's
tensors into its own shard: memory and compute do not depend on the values). Every measurement runs in a
fresh process and reports its peak RSS (VmHWM). The streamed reference should stay flat as layers are
added (one layer resident); the whole model grows by one layer's weights per layer. The GPTQ fidelity
step's candidate half (a GPTQ model at real widths) is not built: GPTQModel needs hours on 2 cores; its
reference half is measured (the old step loaded the float32 source whole beside the candidate).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = 2
NEW_TOKENS = 4

_MEASURE = r"""
import json, sys, time
from pathlib import Path
kind, model = sys.argv[1], Path(sys.argv[2])
started = time.perf_counter()
from exaone_edge.docs import generate_set
from exaone_edge.validate.collect import questions_from
questions = questions_from(generate_set(2, ["en", "ko"], 3), %(questions)d)
chats = [[{"role": "user", "content": [{"type": "image", "image": q.image}, {"type": "text", "text": q.question}]},
          {"role": "assistant", "content": [{"type": "text", "text": q.answers[0]}]}] for q in questions]
if kind == "streamed":
    from exaone_edge.validate.streamed import question_reference
    question_reference(model, questions, "bench", {}, %(tokens)d, cache_dir=Path(sys.argv[3]), dtype="float32")
elif kind == "whole":
    from exaone_edge.validate.reference import HFModel
    m = HFModel(model, model)
    for q in questions:
        m.generate(q, %(tokens)d); m.teacher_forced(q, m.answer_ids(q.answers[0])); m.vision_rows(q.image)
elif kind == "gptq-streamed":
    from transformers import AutoProcessor
    from exaone_edge.validate.streamed import chat_reference
    chat_reference(model, AutoProcessor.from_pretrained(model), chats, cache_dir=Path(sys.argv[3]), dtype="float32")
elif kind == "gptq-whole":  # the reference half of the old fidelity step
    import torch
    from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration
    processor = AutoProcessor.from_pretrained(model)
    reference = Exaone4_5_ForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        for chat in chats:
            inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
            reference(**inputs).logits[0].float().numpy()
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - started, 1)}))
""" % {"questions": QUESTIONS, "tokens": NEW_TOKENS}


def bench_model(work: Path) -> Path:
    from exaone_edge.tiny_model import build_tiny_model

    path = work / "bench-2"
    if not (path / "config.json").exists():
        build_tiny_model(path, preset="bench", overwrite=True)
    return path


def with_layers(base: Path, layers: int, work: Path) -> Path:
    """The 2-layer bench checkpoint with `layers` decoder layers, written one layer at a time."""
    import torch
    from safetensors.torch import save_file

    from exaone_edge.torch_weights import ShardReader

    if layers == 2:
        return base
    out = work / f"bench-{layers}"
    if (out / "config.json").exists():
        return out
    tmp = work / f".bench-{layers}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    reader = ShardReader(base)
    index = json.loads((tmp / "model.safetensors.index.json").read_text())
    for layer in range(2, layers):
        source = f"model.language_model.layers.{layer % 2}."
        tensors = {name.replace(source, f"model.language_model.layers.{layer}."): reader.read(name, torch.bfloat16, "cpu")
                   for name in reader.names(source)}
        shard = f"model-layer-{layer}.safetensors"
        save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        index["weight_map"].update({name: shard for name in tensors})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = json.loads((tmp / "config.json").read_text())
    config["text_config"].update(num_hidden_layers=layers, layer_types=["full_attention"] * layers)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(out)
    return out


def measure(kind: str, model: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", _MEASURE, kind, str(model), str(cache)],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{kind} on {model.name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,8", help="decoder layer counts for the streamed reference")
    parser.add_argument("--whole-layers", default="2,8", help="layer counts for the whole-model baselines ('' skips)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-reference-bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = bench_model(args.work)
    counts = sorted({int(n) for n in args.layers.split(",")} | {int(n) for n in args.whole_layers.split(",") if n})
    models = {n: with_layers(base, n, args.work) for n in counts}
    rows = []
    for n in counts:
        kinds = ["streamed", "gptq-streamed"] if str(n) in args.layers.split(",") else []
        kinds += ["whole", "gptq-whole"] if str(n) in args.whole_layers.split(",") else []
        for kind in kinds:
            started = time.perf_counter()
            result = measure(kind, models[n], args.work / "cache")
            rows.append({"layers": n, "kind": kind, **result})
            print(f"{kind:14s} {n} layers: peak RSS {result['peak_rss_bytes'] / 2**30:6.2f} GiB "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for kind in ("streamed", "gptq-streamed", "whole", "gptq-whole"):
        peaks = {r["layers"]: r["peak_rss_bytes"] for r in rows if r["kind"] == kind}
        if len(peaks) >= 2:
            low, high = min(peaks), max(peaks)
            print(f"{kind}: {high} vs {low} layers: {peaks[high] / peaks[low] - 1:+.1%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
