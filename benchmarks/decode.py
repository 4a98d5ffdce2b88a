"""Prefill and decode speed of the engine vs plain llama-cpp-python (same GGUF) and transformers bf16."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.benchmarks.timing import interleaved, median

PASSAGE = (
    "Invoice INV-2026-0412 from Hanbit Logistics Co., Ltd. to Daehan Financial Services. "
    "Line items: freight 1,250,000 KRW, customs handling 180,000 KRW, insurance 95,500 KRW. "
    "청구서 번호 INV-2026-0412, 공급가액 1,525,500원, 부가세 152,550원, 합계 1,678,050원. "
    "Payment is due within 30 days of the invoice date; late payments accrue 1.5% per month. "
)


@dataclass(frozen=True)
class Speed:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


def document_messages(engine: Any, prompt_tokens: int, run: int = 0) -> list[dict[str, Any]]:
    """A text question about a document, about `prompt_tokens` long; `run` makes its start unique.

    A unique start keeps the engine from reusing a previous run's KV prefix, so every run is cold.
    """
    text = f"Run {run}. Read the document and answer.\n"
    while len(engine.encode_prompt([{"role": "user", "content": text}]).ids) < prompt_tokens:
        text += PASSAGE
    return [{"role": "user", "content": text + "What is the total amount due?"}]


def compare_with_llama_cpp(engine: Any, gguf: Path, *, prompt_tokens: int, decode_tokens: int, threads: int,
                           repeats: int) -> dict[str, Speed]:
    """Our engine and llama_cpp.Llama, both loaded, alternating on the same prompt token ids."""
    from llama_cpp import Llama

    from exaone_edge.runtime.generation import GenerationParams, collect

    plain = Llama(model_path=str(gguf), n_ctx=engine.n_ctx, n_threads=threads, n_threads_batch=threads,
                  n_batch=engine.options.n_batch, n_gpu_layers=engine.placement.gpu_layers,
                  flash_attn=bool(engine.options.flash_attn), verbose=False)
    counter = iter(range(1, 1 << 30))

    def ours() -> Speed:
        messages = document_messages(engine, prompt_tokens, next(counter))
        result = collect(engine.generate(messages, GenerationParams(max_tokens=decode_tokens, ignore_eos=True)))
        t = result.timings
        return Speed(result.usage.prompt_tokens / (t.ttft_s - t.vision_s), t.tokens_per_s)

    def baseline() -> Speed:
        ids = engine.encode_prompt(document_messages(engine, prompt_tokens, next(counter))).ids
        plain.reset()
        tokens = plain.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True)
        first, after_first, done = _timed_tokens(tokens, decode_tokens)
        return Speed(len(ids) / first, (decode_tokens - 1) / (done - after_first))

    try:
        runs = interleaved({"ours": ours, "llama_cpp_python": baseline}, repeats)
    finally:
        plain.close()
    return {name: _median_speed(speeds) for name, speeds in runs.items()}


def transformers_speed(model: Any, ids: list[int], *, decode_tokens: int, repeats: int) -> Speed:
    """A plain greedy loop over `model(...)` with its KV cache: the fastest way transformers decodes."""
    import torch

    def run() -> Speed:
        with torch.inference_mode():
            tokens = torch.tensor([ids])
            started = time.perf_counter()
            out = model(input_ids=tokens, use_cache=True, logits_to_keep=1)
            prefilled = time.perf_counter()
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            past = out.past_key_values
            for _ in range(decode_tokens - 1):
                out = model(input_ids=token, past_key_values=past, use_cache=True, logits_to_keep=1)
                token, past = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
            done = time.perf_counter()
        return Speed(len(ids) / (prefilled - started), (decode_tokens - 1) / (done - prefilled))

    return _median_speed(interleaved({"transformers": run}, repeats)["transformers"])


def decode_bytes_per_token(gguf: Path) -> int:
    """Weight bytes one decode step reads: every tensor except the embedding table (one row of it)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    total = 0
    for tensor in reader.tensors:
        if tensor.name == "token_embd.weight":
            total += int(tensor.n_bytes) // int(tensor.shape[-1])
        else:
            total += int(tensor.n_bytes)
    return total


def _timed_tokens(tokens, count: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    next(tokens)
    after_first = time.perf_counter()
    for _ in range(count - 1):
        next(tokens)
    done = time.perf_counter()
    tokens.close()
    return after_first - started, after_first, done


def _median_speed(speeds: list[Speed]) -> Speed:
    return Speed(median([s.prefill_tokens_per_s for s in speeds]), median([s.decode_tokens_per_s for s in speeds]))
