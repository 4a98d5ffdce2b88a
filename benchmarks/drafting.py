"""`bench` section draft: what MTP drafting costs at the bundle's widths, and the speed-up it gives as a function of
the acceptance rate.

Measured on the bundle's own decoder with its MTP head (LlamaContext with mtp, as `--draft mtp` runs it), after a
prefill of the bench prompt: a one-token step (t1), a (k+1)-token verify (tv(k)), and a draft of k tokens (td(k),
k MTP decodes, the first carrying the k rows the previous step accepted: every step here accepts all its drafts, the
costliest case). Steps of every k alternate so that the machine's drift hits them alike; medians.

With a per-token acceptance rate α (each draft accepted with probability α, independently), a step yields
E = (1 − α^(k+1)) / (1 − α) tokens in td(k) + tv(k), so the speed-up over plain decoding is E · t1 / (td(k) + tv(k))
(sampling and bookkeeping excluded: microseconds). The bench preset has 2 decoder layers with the released widths, so
its draft step is large next to its trunk; the 33B row scales each part by the bytes it reads (decode is
memory-bound): 64 layers instead of 2, and the draft's output layer at 153,600 rows instead of the preset's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ALPHAS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RELEASED_LAYERS, RELEASED_VOCAB = 64, 153_600


@dataclass(frozen=True)
class DraftTimings:
    decode_s: float  # one token, median
    verify_s: dict[int, float]  # k → the (k+1)-token verify
    draft_s: dict[int, float]  # k → drafting k tokens
    layers: int  # the bundle's decoder layers
    layer_bytes: int  # one decoder layer's weights
    head_bytes: int  # the MTP head's layer, fc and norms
    output_bytes: int  # output.weight
    vocab_rows: int  # output.weight's rows (the vocabulary)
    prompt_tokens: int
    n_ctx: int = 0  # the context it ran with (the GPU check plans its memory at it)

    def speedup(self, k: int, alpha: float, *, released: bool = False) -> float:
        expected = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
        t1, tv, td = self.decode_s, self.verify_s[k], self.draft_s[k]
        if released:  # bytes-proportional: 64 layers instead of `layers`, every output layer 153,600 rows
            output = self.output_bytes * RELEASED_VOCAB / self.vocab_rows
            trunk = (RELEASED_LAYERS * self.layer_bytes + output) / (self.layers * self.layer_bytes + self.output_bytes)
            t1, tv = t1 * trunk, tv * trunk
            td *= (self.head_bytes + output) / (self.head_bytes + self.output_bytes)
        return expected * t1 / (td + tv)

    def table(self, *, released: bool = False) -> list[list[float]]:
        """Speed-up by acceptance rate (rows, ALPHAS) and k (columns, 1..max)."""
        return [[round(self.speedup(k, alpha, released=released), 3) for k in sorted(self.verify_s)] for alpha in ALPHAS]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alphas": list(ALPHAS),
                "speedup": self.table(), "speedup_33b_projected": self.table(released=True)}


def measure(gguf: Path, prompt: list[int], *, k_max: int, threads: int | None, repeats: int, image_token: int,
            flash_attn: bool = False, kv_type: str = "f16") -> DraftTimings:
    """Every layer where llama.cpp can put it (the GPU on a GPU build: the GPU check times it there)."""
    from exaone_edge.llama_context import LlamaContext, LlamaOptions, TextSegment

    steps = repeats + 1  # the first round warms up
    n_ctx = len(prompt) + 2 * steps * (1 + sum(k + 1 for k in range(1, k_max + 1))) + 16
    options = LlamaOptions(n_ctx=n_ctx, n_threads=threads, flash_attn=flash_attn, kv_type=kv_type, mtp=True,
                           image_token=image_token)
    times: dict[str, list[float]] = {}
    with LlamaContext(gguf, options) as llama:
        llama.prefill([TextSegment(prompt)])
        token = prompt[-1]
        for round_ in range(steps):
            for k in [0, *range(1, k_max + 1)]:
                for timed in (False, True):  # the first step leaves the head k rows behind, as a step of k does
                    started = time.perf_counter()
                    drafts = llama.mtp.draft([(0, token)], k)[0] if k else []
                    drafted = time.perf_counter()
                    llama.verify([(0, [token, *drafts])])
                    llama.logits(k)
                    verified = time.perf_counter()
                    llama.keep(0, k + 1)  # as if every draft were accepted: the next draft carries k rows
                    if round_ and timed:
                        times.setdefault(f"draft{k}", []).append(drafted - started)
                        times.setdefault(f"verify{k}", []).append(verified - drafted)
        sizes = _sizes(gguf, llama.model.n_layer)
        vocab = llama.n_vocab
    median = statistics.median
    return DraftTimings(median(times["verify0"]), {k: median(times[f"verify{k}"]) for k in range(1, k_max + 1)},
                        {k: median(times[f"draft{k}"]) for k in range(1, k_max + 1)}, vocab_rows=vocab,
                        prompt_tokens=len(prompt), n_ctx=n_ctx, **sizes)


def has_mtp_head(gguf: Path) -> bool:
    from gguf import GGUFReader

    return "exaone4.nextn_predict_layers" in GGUFReader(str(gguf)).fields


def _sizes(gguf: Path, layers: int) -> dict[str, int]:
    from gguf import GGUFReader

    tensors = GGUFReader(str(gguf)).tensors
    per_block = lambda b: sum(int(t.n_bytes) for t in tensors if t.name.startswith(f"blk.{b}."))  # noqa: E731
    output = next(int(t.n_bytes) for t in tensors if t.name == "output.weight")
    return {"layers": layers, "layer_bytes": per_block(0), "head_bytes": per_block(layers), "output_bytes": output}


def render(timings: DraftTimings) -> str:
    """The timings, and the speed-up tables (measured widths; projected to the 33B)."""
    ks = sorted(timings.verify_s)
    ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
    lines = [f"MTP drafting at these widths ({timings.layers} decoder layers, prompt {timings.prompt_tokens} tokens): "
             f"one-token step {ms(timings.decode_s)} ms",
             "  k                  " + "".join(f"{k:>9}" for k in ks),
             "  verify k+1 (ms)    " + "".join(f"{ms(timings.verify_s[k]):>9}" for k in ks),
             "  draft k (ms)       " + "".join(f"{ms(timings.draft_s[k]):>9}" for k in ks)]
    for title, released in (("speed-up here", False), ("speed-up projected to the 33B (bytes-proportional)", True)):
        lines.append(f"{title}, by acceptance rate α (rows) and k (columns):")
        lines.append("  α      " + "".join(f"{'k=' + str(k):>9}" for k in ks))
        for alpha, row in zip(ALPHAS, timings.table(released=released)):
            lines.append(f"  {alpha:<7.2f}" + "".join(f"{value:>9.2f}" for value in row))
    return "\n".join(lines)
