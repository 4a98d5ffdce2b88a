"""Peak RSS of validate's reference and of both halves of the GPTQ fidelity check: layer-streamed vs whole-model.

    .venv/bin/python benchmarks/reference_memory.py [--layers 2,8] [--whole-layers 2,8] [--kinds K,...]
                                                    [--work DIR] [--json OUT]

Builds (once) the bench preset (EXAONE 4.5's real decoder widths: hidden 5120, FFN 27392, 40/8 heads) with
2 decoder layers, and derives more-layer variants from it one layer at a time (layer i copies layer i mod 2's
tensors, in their stored dtypes, into its own shard: memory and compute do not depend on the values). The
GPTQ candidate kinds need a GPTQ checkpoint at these widths: bench-2 is quantized once by GPTQModel (4-bit,
group 128, 4 document chats; 26 min on 2 cores) and its 8-layer variant derived the same way (int32 / fp16
tensors copied as stored). Every measurement runs in a fresh process and reports its peak RSS (VmHWM).

Kinds: "streamed" is validate's reference, "gptq-streamed" the fidelity check's reference half,
"gptq-candidate-streamed" its candidate half (the GPTQ checkpoint, dequantized as each layer loads); all
three keep one decoder layer resident, so they should stay flat as layers are added. "whole",
"gptq-whole" and "gptq-candidate-whole" load the same model whole with transformers, as the steps did
before; they grow by one layer's weights per layer.
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
STREAMED_KINDS = ("streamed", "gptq-streamed", "gptq-candidate-streamed")  # measured at --layers
WHOLE_KINDS = ("whole", "gptq-whole", "gptq-candidate-whole")  # measured at --whole-layers
QUESTIONS = 2
NEW_TOKENS = 4
GPTQ_CHATS = 4  # GPTQModel's minimum here (quantize/gptq.py MIN_CALIBRATION); memory does not depend on it

_MEASURE = r"""
import json, sys, time
from pathlib import Path
kind, model = sys.argv[1], Path(sys.argv[2])
started = time.perf_counter()
from exaone_edge.documents import generate_set
from exaone_edge.validate.collect import questions_from
questions = questions_from(generate_set(2, ["en", "ko"], 3), %(questions)d)
chats = [[{"role": "user", "content": [{"type": "image", "image": q.image}, {"type": "text", "text": q.question}]},
          {"role": "assistant", "content": [{"type": "text", "text": q.answers[0]}]}] for q in questions]
if kind == "streamed":
    from exaone_edge.reference.streamed import question_reference
    question_reference(model, questions, "bench", {}, %(tokens)d, cache_dir=Path(sys.argv[3]), dtype="float32")
elif kind == "whole":
    from exaone_edge.reference.inputs import HFModel
    m = HFModel(model, model)
    for q in questions:
        m.generate(q, %(tokens)d); m.teacher_forced(q, m.answer_ids(q.answers[0])); m.vision_rows(q.image)
elif kind == "gptq-streamed":
    from transformers import AutoProcessor
    from exaone_edge.reference.streamed import chat_reference
    chat_reference(model, AutoProcessor.from_pretrained(model), chats, cache_dir=Path(sys.argv[3]), dtype="float32")
elif kind == "gptq-candidate-streamed":  # the candidate half of quantize/gptq.py gptq_fidelity
    import numpy as np
    from exaone_edge.progress import stdout_to_stderr
    from exaone_edge.reference.streamed import StreamedReference, conversation_inputs
    with stdout_to_stderr():  # GPTQModel logs to stdout; the result line must be the last one there
        candidate = StreamedReference(model, dtype="float32", device="cpu")
        for chunks in candidate.sequence_logits(conversation_inputs(candidate.processor, chats)):
            np.concatenate(chunks)
elif kind == "gptq-whole":  # the reference half of the old fidelity step
    import torch
    from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration
    processor = AutoProcessor.from_pretrained(model)
    reference = Exaone4_5_ForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        for chat in chats:
            inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
            reference(**inputs).logits[0].float().numpy()
elif kind == "gptq-candidate-whole":  # the candidate half of the old fidelity step
    import torch
    from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration
    from exaone_edge.progress import stdout_to_stderr
    from exaone_edge.reference.kernels import eager_gptq_kernels
    processor = AutoProcessor.from_pretrained(model)
    with stdout_to_stderr(), eager_gptq_kernels(), torch.no_grad():
        candidate = Exaone4_5_ForConditionalGeneration.from_pretrained(model, dtype=torch.float32,
                                                                       device_map="cpu").eval()
        for chat in chats:
            inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
            candidate(**inputs).logits[0].float().numpy()
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss_bytes": peak, "seconds": round(time.perf_counter() - started, 1)}))
""" % {"questions": QUESTIONS, "tokens": NEW_TOKENS}


def bench_model(work: Path) -> Path:
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    path = work / "bench-2"
    if not (path / "config.json").exists():
        build_tiny_model(path, preset="bench", overwrite=True)
    return path


def gptq_model(base: Path, work: Path) -> Path:
    """The 2-layer bench checkpoint quantized once by GPTQModel as `quantize --format gptq` does it (4-bit,
    group 128), on GPTQ_CHATS generated document chats; cached in the work dir."""
    import os

    from exaone_edge.documents import generate_set
    from exaone_edge.progress import stdout_to_stderr
    from exaone_edge.quantize.gptq import document_conversations, write_checkpoint
    from exaone_edge.reference.kernels import eager_gptq_kernels

    path = work / "gptq-2"
    if (path / "quantize_config.json").exists():
        return path
    tmp = work / ".gptq-2.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    chats = document_conversations(generate_set(GPTQ_CHATS, ["en", "ko"], 7).documents)[:GPTQ_CHATS]
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    with stdout_to_stderr(), eager_gptq_kernels():
        write_checkpoint(base.resolve(), tmp.resolve(), chats, bits=4, group_size=128)
    tmp.rename(path)
    return path


def with_layers(base: Path, layers: int, work: Path) -> Path:
    """A 2-layer checkpoint (bench-2, gptq-2) with `layers` decoder layers, written one layer at a time."""
    from safetensors.torch import save_file

    from exaone_edge.torch_weights import ShardReader

    if layers == 2:
        return base
    variant = f"{base.name.rsplit('-', 1)[0]}-{layers}"
    out = work / variant
    if (out / "config.json").exists():
        return out
    tmp = work / f".{variant}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    reader = ShardReader(base)
    index_path = tmp / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:  # one file (GPTQModel's): transformers would read model.safetensors and ignore an index beside it
        (tmp / "model.safetensors").rename(tmp / "model-base.safetensors")
        index = {"metadata": {}, "weight_map": dict.fromkeys(reader.layout, "model-base.safetensors")}
    for layer in range(2, layers):
        source = f"model.language_model.layers.{layer % 2}."
        tensors = {name.replace(source, f"model.language_model.layers.{layer}."): reader.read(name, None, "cpu")
                   for name in reader.names(source)}  # as stored: bf16, or GPTQ's int32 / fp16
        shard = f"model-layer-{layer}.safetensors"
        save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
        index["weight_map"].update({name: shard for name in tensors})
        del tensors
    index_path.write_text(json.dumps(index, indent=2))
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
    parser.add_argument("--layers", default="2,8", help="decoder layer counts for the streamed kinds")
    parser.add_argument("--whole-layers", default="2,8", help="layer counts for the whole-model kinds ('' skips)")
    parser.add_argument("--kinds", default=",".join(STREAMED_KINDS + WHOLE_KINDS), help="kinds to measure")
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-reference-bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(STREAMED_KINDS + WHOLE_KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(STREAMED_KINDS + WHOLE_KINDS)}")
    streamed_counts = {int(n) for n in args.layers.split(",") if n}
    whole_counts = {int(n) for n in args.whole_layers.split(",") if n}
    args.work.mkdir(parents=True, exist_ok=True)
    base = bench_model(args.work)
    rows = []
    for n in sorted(streamed_counts | whole_counts):
        for kind in kinds:
            if n not in (streamed_counts if kind in STREAMED_KINDS else whole_counts):
                continue
            source = gptq_model(base, args.work) if kind.startswith("gptq-candidate") else base
            model = with_layers(source, n, args.work)  # built once, then reused from the work dir
            started = time.perf_counter()
            result = measure(kind, model, args.work / "cache")
            rows.append({"layers": n, "kind": kind, **result})
            print(f"{kind:24s} {n} layers: peak RSS {result['peak_rss_bytes'] / 2**30:6.2f} GiB "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for kind in kinds:
        peaks = {r["layers"]: r["peak_rss_bytes"] for r in rows if r["kind"] == kind}
        if len(peaks) >= 2:
            low, high = min(peaks), max(peaks)
            print(f"{kind}: {high} vs {low} layers: {peaks[high] / peaks[low] - 1:+.1%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
