"""vLLM serves our GPTQ checkpoint: greedy tokens over HTTP against transformers, text and image, MTP speculation.

Run by scripts/vllm_check.sh (it builds the vLLM venv, the tiny model and its GPTQ-4 checkpoint first); this process
runs in the main venv and starts vLLM from its own (`--vllm-python`). For each server configuration the same chats
(text questions and page-image questions, thinking off) are sent with temperature 0, `ignore_eos` and
`return_token_ids`; transformers then runs each served prompt + its generated tokens teacher-forced and takes its
top-1 at every generated position. Agreement n/n means the greedy continuations are identical.

Configurations: the fp32 source (vLLM's own fp32 math, expected identical), the same without the normalization fix
(vLLM 0.32.0's default: raw pixels reach the vision tower, so image answers diverge), GPTQ-4 in bf16 (vLLM refuses
fp32 for GPTQ; transformers runs the same checkpoint in fp32, so near-tied logits of random weights may flip) and
GPTQ-4 in bf16 with the checkpoint's MTP head drafting (`--speculative-config`): its tokens must equal the GPTQ run's.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from exaone_edge.benchmarks.vllm_serve import ServeOptions, vllm_server

TEXT_QUESTIONS = ("What is the total amount due on the invoice?", "List the parties named in this contract.")
IMAGE_QUESTIONS = ("What is the total on this invoice?", "Which item costs the most?")


@dataclass(frozen=True)
class Chat:
    question: str
    page: Image.Image | None

    def vllm_messages(self) -> list[dict[str, Any]]:
        if self.page is None:
            return [{"role": "user", "content": self.question}]
        buffer = io.BytesIO()
        self.page.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": self.question}]}]

    def hf_messages(self) -> list[dict[str, Any]]:
        if self.page is None:
            return [{"role": "user", "content": [{"type": "text", "text": self.question}]}]
        return [{"role": "user", "content": [{"type": "image", "image": self.page}, {"type": "text", "text": self.question}]}]


@dataclass
class Served:
    chat: int
    kind: str  # text or image
    prompt_ids: list[int]
    token_ids: list[int]
    seconds: float


@dataclass
class Agreement:
    chat: int
    kind: str
    agreed: int
    tokens: int
    prompt_ids_equal: bool
    first_disagreement: int | None
    margin_at_first: float | None  # transformers' top-1 logit minus its logit for vLLM's token there


def page(index: int) -> Image.Image:
    """A small invoice-like page (the tiny model's pixel budget: 80 image rows)."""
    image = Image.new("RGB", (224 + 28 * index, 280), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), f"INVOICE #{1041 + index}", fill="black")
    for line in range(7):
        draw.text((10, 34 + 30 * line), f"Item {line}: {(index + 3) * 97 + line * 13}.00 USD", fill="black")
    draw.rectangle((6, 4, 210, 26), outline="black")
    return image


def chats() -> list[Chat]:
    return [Chat(q, None) for q in TEXT_QUESTIONS] + [Chat(q, page(i)) for i, q in enumerate(IMAGE_QUESTIONS)]


def ask_all(url: str, name: str, conversation: list[Chat], tokens: int) -> list[Served]:
    import httpx

    served = []
    for index, chat in enumerate(conversation):
        body = {"model": name, "messages": chat.vllm_messages(), "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True, "chat_template_kwargs": {"enable_thinking": False}}
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        reply = response.json()
        served.append(Served(index, "image" if chat.page else "text", reply["prompt_token_ids"],
                             reply["choices"][0]["token_ids"], time.perf_counter() - started))
    return served


def spec_metrics(url: str) -> dict[str, float]:
    import httpx

    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            if line.startswith(f"vllm:spec_decode_{key}_total"):
                found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


class Transformers:
    """The same checkpoint in transformers (fp32; a GPTQ checkpoint dequantized by GPTQModel's torch kernel)."""

    def __init__(self, model_dir: Path, processor_dir: Path) -> None:
        import torch
        from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(processor_dir)
        gptq = (model_dir / "quantize_config.json").exists()
        kwargs = {"device_map": "cpu"} if gptq else {}
        self.model = Exaone4_5_ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()

    def agreement(self, chat: Chat, served: Served) -> Agreement:
        torch = self.torch
        inputs = self.processor.apply_chat_template(chat.hf_messages(), tokenize=True, add_generation_prompt=True,
                                                    return_dict=True, return_tensors="pt", enable_thinking=False)
        prompt = inputs["input_ids"][0].tolist()
        full = torch.tensor([served.prompt_ids + served.token_ids])
        extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
        # GPTQModel torch.compiles its dequantization; eager is what the project's reference runs too.
        with torch.no_grad(), torch._dynamo.config.patch(disable=True):
            logits = self.model(input_ids=full, attention_mask=torch.ones_like(full), **extra).logits[0].float()
        start = len(served.prompt_ids) - 1
        rows = logits[start:start + len(served.token_ids)]
        top = rows.argmax(-1).tolist()
        wrong = [i for i, (a, b) in enumerate(zip(top, served.token_ids)) if a != b]
        margin = None
        if wrong:
            row = rows[wrong[0]]
            margin = float(row.max() - row[served.token_ids[wrong[0]]])
        return Agreement(served.chat, served.kind, len(top) - len(wrong), len(top), prompt == served.prompt_ids,
                         wrong[0] if wrong else None, margin)


def run_config(label: str, options: ServeOptions, args, conversation: list[Chat]) -> dict[str, Any]:
    print(f"vllm_check: {label}: {options.gpu_command()}", file=sys.stderr, flush=True)
    with vllm_server(args.vllm_python, options, args.out / f"vllm-{label}.log") as (url, start_s):
        served = ask_all(url, options.name, conversation, args.tokens)
        metrics = spec_metrics(url) if options.mtp_tokens else {}
    return {"label": label, "command": options.gpu_command(), "start_s": round(start_s, 1), "served": served,
            "spec_decode": metrics}


def summarize(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | reference | text agreed | image agreed | prompt ids equal | largest margin at a disagreement "
             "| server start |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        text = [a for a in run["agreement"] if a.kind == "text"]
        image = [a for a in run["agreement"] if a.kind == "image"]

        def count(rows: list[Agreement]) -> str:
            return f"{sum(a.agreed for a in rows)}/{sum(a.tokens for a in rows)}"

        equal = all(a.prompt_ids_equal for a in run["agreement"])
        margins = [a.margin_at_first for a in run["agreement"] if a.margin_at_first is not None]
        margin = f"{max(margins):.3g} logits" if margins else "–"
        lines.append(f"| {run['label']} | {run['reference']} | {count(text)} | {count(image)} | {equal} | {margin} "
                     f"| {run['start_s']} s |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="The fp32 checkpoint (the tiny model).")
    parser.add_argument("--gptq", type=Path, required=True, help="Its GPTQ-4 checkpoint (quantize --format gptq).")
    parser.add_argument("--vllm-python", type=Path, default=Path(".venv-vllm/bin/python"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=16, help="Greedy tokens a chat.")
    parser.add_argument("--skip", action="append", default=[], help="A configuration to leave out (repeatable).")
    parser.add_argument("--bundle", type=Path, help="Also validate this GGUF bundle beside the GPTQ on vLLM, one report.")
    parser.add_argument("--eval", type=Path, help="validate's --eval (default: its built-in set).")
    parser.add_argument("--max-questions", type=int, default=6)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    conversation = chats()
    configs = {
        "fp32": (ServeOptions(args.source, "source-fp32", dtype="float32"), args.source),
        "fp32-default-normalize": (ServeOptions(args.source, "source-fp32", dtype="float32", normalize_fix=False), args.source),
        "gptq4-bf16": (ServeOptions(args.gptq, "gptq4", dtype="bfloat16"), args.gptq),
        "gptq4-bf16-mtp": (ServeOptions(args.gptq, "gptq4", dtype="bfloat16", mtp_tokens=1), args.gptq),
    }
    if "fp32-default-normalize" not in args.skip:  # the bug needs only the image chats
        conversation_for = {"fp32-default-normalize": [c for c in conversation if c.page is not None]}
    else:
        conversation_for = {}
    runs, references = [], {}
    for label, (options, reference_dir) in configs.items():
        if label in args.skip:
            continue
        chats_here = conversation_for.get(label, conversation)
        try:
            run = run_config(label, options, args, chats_here)
        except RuntimeError as error:  # e.g. a speculative config the CPU build refuses: recorded, not fatal
            log = (args.out / f"vllm-{label}.log").read_text(errors="replace").splitlines()
            reason = next((line for line in reversed(log) if "Error" in line), str(error))
            runs.append({"label": label, "command": options.gpu_command(), "failed": reason.strip()})
            print(f"vllm_check: {label} failed: {reason.strip()}", file=sys.stderr)
            continue
        if reference_dir not in references:
            references[reference_dir] = Transformers(reference_dir, args.source)
        run["agreement"] = [references[reference_dir].agreement(chats_here[s.chat], s) for s in run["served"]]
        run["reference"] = f"transformers fp32 on {reference_dir.name}"
        runs.append(run)
    by_label = {run["label"]: run for run in runs}
    if "gptq4-bf16" in by_label and "served" in by_label.get("gptq4-bf16-mtp", {}):
        plain, drafted = by_label["gptq4-bf16"]["served"], by_label["gptq4-bf16-mtp"]["served"]
        by_label["gptq4-bf16-mtp"]["same_tokens_as_without_mtp"] = [a.token_ids == b.token_ids
                                                                    for a, b in zip(plain, drafted)]
    finished = [run for run in runs if "agreement" in run]
    table = summarize(finished)
    for run in runs:
        for key in ("served", "agreement"):
            if key in run:
                run[key] = [asdict(item) for item in run[key]]
    (args.out / "vllm_check.json").write_text(json.dumps(runs, indent=1))
    (args.out / "vllm_check.md").write_text(table + "\n")
    print(table)
    for run in runs:
        if "failed" in run:
            print(f"{run['label']}: not run: {run['failed']}")
        if "same_tokens_as_without_mtp" in run:
            print(f"{run['label']}: greedy tokens equal to gptq4-bf16 for {sum(run['same_tokens_as_without_mtp'])}/"
                  f"{len(run['same_tokens_as_without_mtp'])} chats; spec decode {run['spec_decode']}")
    if args.bundle:
        return validate_beside(args)
    return 0


def validate_beside(args) -> int:
    """`exaone-edge validate BUNDLE --endpoint <vLLM serving the GPTQ>`: one report, both rows."""
    options = ServeOptions(args.gptq, "gptq4", dtype="bfloat16")
    print(f"vllm_check: validate {args.bundle} beside {options.gpu_command()}", file=sys.stderr, flush=True)
    with vllm_server(args.vllm_python, options, args.out / "vllm-validate.log") as (url, _):
        command = [sys.executable, "-m", "exaone_edge.cli", "validate", str(args.bundle), "--endpoint", f"{url}/v1",
                   "--endpoint-model", options.name, "--reference", str(args.source), "--max-questions",
                   str(args.max_questions), "-o", str(args.out / "report"), "--overwrite"]
        if args.eval:
            command += ["--eval", str(args.eval)]
        print("$ " + " ".join(command), file=sys.stderr, flush=True)
        result = subprocess.run(command)
    if result.returncode == 0:
        print((args.out / "report" / "report.md").read_text())
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
