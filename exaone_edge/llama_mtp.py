"""The MTP head's llama.cpp context (patches/llama.cpp/0001-exaone4-mtp-graph.patch): drafts for speculative decoding.

Row p of the head reads token x_p and the target's hidden state after its final norm at p-1 (h_{p-1}), as vLLM's
drafter does (exaone4_5_mtp.py), so there is no row 0. The head keeps a KV cache of its own, one sequence per slot
like the target: after each target batch the rows it made possible are queued (`follow`) and decoded without
logits (`flush`), or together with the next draft. Drafting continues from the target's last state: (pending
token, h_{n-1}) at n gives d1 and the head's own state h'1, (d1, h'1) at n+1 gives d2, and so on; the draft rows are
then removed, and the target's verification decides which rows follow.

Image positions have no token: the head reads <|image_pad|>'s embedding there, with the target's state. (vLLM gives
the head the image row itself; llama.cpp's MTP batch has one vector per row, and it carries the state.)
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from exaone_edge.errors import InputError
from exaone_edge.interrupts import held_interrupt
from exaone_edge.llama import Model, Owned

_LLAMA_CONTEXT_TYPE_MTP = 1  # enum llama_context_type (llama.h)


class MtpContext(Owned):
    """An MTP context over `model` (loaded with load_mtp) with `params`' cache sizes, `n_seq` sequences."""

    def __init__(self, model: Model, params, *, n_seq: int, n_batch: int, n_swa: int, image_token: int) -> None:
        from llama_cpp import llama_cpp_ext

        lib = self._lib = model._lib
        self._ext, self.n_batch, self.n_swa, self.image_token = llama_cpp_ext, n_batch, n_swa, image_token
        self.n_embd, self.n_vocab = model.n_embd, model.n_vocab
        params.ctx_type = _LLAMA_CONTEXT_TYPE_MTP
        with held_interrupt():
            self._ctx = lib.llama_init_from_model(model._model, params)
        if not self._ctx:
            raise InputError("llama.cpp could not create the MTP head's context",
                             fix="Lower the context length or --parallel, or run without --draft.")
        llama_cpp_ext.llama_set_embeddings_nextn(self._ctx, True, True)  # each output row's state: the next draft's h
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, self.n_embd, 1)  # embd: the states
        self._token_array = (lib.llama_token * n_batch)()
        self._batch.token = self._token_array  # and the tokens, which llama_batch_init does not give an embd batch
        self._embd = np.ctypeslib.as_array(self._batch.embd, shape=(n_batch, self.n_embd))
        self._held = [1] * n_seq  # rows 1 .. held-1 are in the cache (there is no row 0)
        self._owed: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_seq)]  # (token, h_prev) from row `held`
        self._last: list[tuple[int, np.ndarray] | None] = [None] * n_seq  # (position, the target's state there)

    def held(self, seq: int) -> int:
        """Positions whose rows the cache holds (row 0 counted as held)."""
        return self._held[seq]

    def follow(self, seq: int, first: int, tokens: Sequence[int] | None, states: np.ndarray) -> None:
        """The target decoded `tokens` (None: image rows) at positions first.. with these post-norm states: queue the
        head's rows they complete (each row p needs h_{p-1})."""
        count = len(states)
        accounted = self._held[seq] + len(self._owed[seq])
        last = self._last[seq]
        for i in range(max(accounted - first, 0), count):
            position = first + i
            if i > 0:
                previous = states[i - 1]
            elif last is not None and last[0] == position - 1:
                previous = last[1]
            else:  # the state before this batch is unknown: rows from here cannot be made
                break
            if position != self._held[seq] + len(self._owed[seq]):
                break
            token = self.image_token if tokens is None else int(tokens[i])
            self._owed[seq].append((token, np.array(previous, dtype=np.float32)))
        self._last[seq] = (first + count - 1, np.array(states[-1], dtype=np.float32))

    def flush(self, seqs: Sequence[int]) -> None:
        """Decode the queued rows of `seqs` (no logits)."""
        rows = [(seq, self._held[seq] + j, token, h) for seq in seqs for j, (token, h) in enumerate(self._owed[seq])]
        for start in range(0, len(rows), self.n_batch):
            self._decode(rows[start:start + self.n_batch], set())
        for seq in seqs:
            self._held[seq] += len(self._owed[seq])
            self._owed[seq] = []

    def draft(self, starts: Sequence[tuple[int, int]], k: int, *,
              logits: list[np.ndarray] | None = None) -> list[list[int] | None]:
        """k greedy draft tokens after each (sequence, pending token), None for a sequence the head has lost track of
        (after a failed decode): the queued rows and the pending token's row in one decode, then one row per sequence
        per step. The draft rows are removed afterwards. `logits`, when given, receives a copy of every draft's logits
        row, step by step (the GPU check compares the head across devices)."""
        if sum(len(self._owed[seq]) + 1 for seq, _ in starts) > self.n_batch:
            self.flush([seq for seq, _ in starts])
        active = []  # (index in starts, sequence, position of the pending token)
        rows: list[tuple[int, int, int, np.ndarray]] = []
        wanted: set[int] = set()
        for index, (seq, token) in enumerate(starts):
            last, at = self._last[seq], self._held[seq] + len(self._owed[seq])
            if last is None or last[0] != at - 1:
                continue
            rows += [(seq, self._held[seq] + j, t, h) for j, (t, h) in enumerate(self._owed[seq])]
            wanted.add(len(rows))
            rows.append((seq, at, token, last[1]))
            active.append((index, seq, at))
            self._held[seq], self._owed[seq] = at, []
        drafts: list[list[int] | None] = [None] * len(starts)
        states: list[np.ndarray] = []
        for step in range(k if active else 0):
            if step:
                rows = [(seq, at + step, drafts[index][-1], states[i]) for i, (index, seq, at) in enumerate(active)]
                wanted = set(range(len(rows)))
            self._decode(rows, wanted)
            states = []
            for (index, _, _), row in zip(active, sorted(wanted)):
                row_logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))
                drafts[index] = [*(drafts[index] or []), int(np.argmax(row_logits))]
                if logits is not None:
                    logits.append(row_logits.copy())
                pointer = self._ext.llama_get_embeddings_nextn_ith(self._ctx, row)
                states.append(np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy())
        for _, seq, at in active:  # keep the pending token's row (the target decodes that token next); drop the drafts
            self._lib.llama_memory_seq_rm(self._memory, seq, at + 1, -1)
            self._held[seq] = at + 1
        return drafts

    def truncate(self, seq: int, keep: int) -> bool:
        """Keep rows below `keep`; False (and an empty sequence) when the sliding window has evicted what row `keep`
        would attend to."""
        keep = max(keep, 1)
        self._owed[seq] = self._owed[seq][:max(keep - self._held[seq], 0)]
        if keep >= self._held[seq]:
            return True
        pos_min = self._lib.llama_memory_seq_pos_min(self._memory, seq)
        ok = keep == 1 or not (self.n_swa > 0 and pos_min > max(1, keep - self.n_swa))
        ok = ok and self._lib.llama_memory_seq_rm(self._memory, seq, keep, -1)
        if not ok:
            self.reset(seq)
            return False
        self._held[seq] = keep
        return True

    def reset(self, seq: int | None = None) -> None:
        for s in range(len(self._held)) if seq is None else (seq,):
            self._lib.llama_memory_seq_rm(self._memory, s, -1, -1)
            self._held[s], self._owed[s], self._last[s] = 1, [], None

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._batch.token = ctypes.POINTER(self._lib.llama_token)()  # ours, not llama_batch_free's
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def _decode(self, rows: Sequence[tuple[int, int, int, np.ndarray]], wanted: set[int]) -> None:
        """rows: (sequence, position, token, state); logits and states out for the batch indices in `wanted`."""
        if not rows:
            return
        batch = self._batch
        for i, (seq, position, token, state) in enumerate(rows):
            self._token_array[i] = token
            self._embd[i] = state
            batch.pos[i], batch.n_seq_id[i], batch.logits[i] = position, 1, int(i in wanted)
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(rows)
        with held_interrupt():
            status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            self.reset()  # its cache is in an unknown state; drafts only need rebuilding, the target is untouched
            raise InputError(f"llama_decode failed in the MTP head's context (status {status})",
                             fix="Use a larger context, or run without --draft.")
