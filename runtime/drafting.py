"""Speculative decoding for the scheduler: a drafter proposes k tokens per running sequence, the target verifies
them all in one `llama_decode`, and each sequence keeps what its own sampler would have produced anyway.

Acceptance: the slot's sampler runs over the verified rows in order (row i holds the logits after the pending token
and i drafts) and the sequence continues while it picks the draft token; the first token it picks otherwise (or after
the last draft) is the step's final token. The sampler sees the same logits in the same order as without drafting, so
its draws, its seed's random stream and its grammar state are those of the target alone: greedy and seeded sampled
output are identical. The rows after the last accepted one leave the KV cache (`LlamaContext.keep`).
"The same logits" up to rounding: llama.cpp's CPU kernels compute a (k+1)-row batch with other rounding than a
one-row step (on the tiny model max |Δlogit| 9e-7 with F32 weights and cache and flash attention off, 8e-4 with an
F16 cache and flash attention, 4e-2 at Q4_K_M), so a greedy near-tie or a sampled draw within that of a boundary can
go the other way, as in llama.cpp's and vLLM's own speculative decoding.

Every sequence verifies the same k + 1 tokens, so each is one llama.cpp micro-batch (see `LlamaContext.verify`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exaone_edge.llama_context import LlamaContext


class Drafter(Protocol):
    def draft(self, requests: Sequence[Any], k: int) -> list[list[int] | None]:
        """k tokens to follow each running request's pending token (None: none for that one)."""
        ...


class MtpDrafter:
    """The model's MTP head (exaone_edge/llama_mtp.py), greedy."""

    def __init__(self, llama: LlamaContext) -> None:
        if llama.mtp is None:
            raise ValueError("the context was loaded without the MTP head (LlamaOptions.mtp)")
        self.mtp = llama.mtp

    def draft(self, requests: Sequence[Any], k: int) -> list[list[int] | None]:
        return self.mtp.draft([(request.slot, request.pending) for request in requests], k)


@dataclass
class DraftStats:
    """Since load: speculative steps, drafts compared with the target's choice and accepted, and where time went."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # tokens these steps produced
    draft_s: float = 0.0
    verify_s: float = 0.0  # the target's pass and the acceptance

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
                "tokens_per_step": round(self.tokens / self.steps, 3) if self.steps else None,
                "tokens_per_s": round(self.tokens / seconds, 2) if (seconds := self.draft_s + self.verify_s) else None,
                "draft_s": round(self.draft_s, 3), "verify_s": round(self.verify_s, 3)}


class Speculation:
    def __init__(self, llama: LlamaContext, drafter: Drafter, k: int, method: str = "mtp") -> None:
        self.llama, self.drafter, self.k, self.method = llama, drafter, k, method
        self.stats = DraftStats()

    def step(self, running: Sequence[Any], accept: Callable[[Any, int, int], None]) -> bool:
        """One speculative step for every running request; False (nothing done) when some sequence has no room left
        for k + 2 more positions: the scheduler then takes a plain step, which ends such a request as it would."""
        llama = self.llama
        k = min(self.k, *(llama.n_ctx - llama.length(r.slot) - 2 for r in running))
        if k < 1:
            return False
        started = time.perf_counter()
        drafts = [d if d is not None and len(d) == k else [r.pending] * k  # a lost drafter: filler, rarely accepted
                  for r, d in zip(running, self.drafter.draft(running, k))]
        drafted = time.perf_counter()
        rows = llama.verify([(r.slot, [r.pending, *draft]) for r, draft in zip(running, drafts)])
        for request, draft, row in zip(running, drafts, rows):
            slot, compared, accepted, kept = request.slot, 0, 0, 0
            for i in range(k + 1):
                token = request.sampler.sample(row + i)  # what the target alone would produce here
                kept += 1
                accept(request, token, row + i)
                if request.slot is None or i == k:  # finished, or nothing left to compare
                    break
                compared += 1
                if token != draft[i]:
                    break
                accepted += 1
            llama.keep(slot, kept)
            request.drafted += compared
            request.accepted += accepted
            self.stats.drafted += compared
            self.stats.accepted += accepted
            self.stats.tokens += kept
        self.stats.steps += 1
        self.stats.draft_s += drafted - started
        self.stats.verify_s += time.perf_counter() - drafted
        return True
