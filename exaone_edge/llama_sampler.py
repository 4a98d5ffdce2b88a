"""llama.cpp's sampler chain over a context's logits (one per generation; `LlamaContext.sampler` makes it)."""

from __future__ import annotations

from exaone_edge.errors import InputError
from exaone_edge.llama import Owned


class Sampler(Owned):
    """llama.cpp's sampler chain: [grammar →] top-k → top-p → min-p → temperature → draw, or greedy argmax."""

    def __init__(
        self, llama, *, temperature: float, top_k: int, top_p: float, min_p: float, seed: int,
        grammar: str | None = None,
    ):
        lib = llama._lib
        self._lib, self._ctx = lib, llama._ctx
        self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        stages = []
        if grammar is not None:  # first, so every later stage only sees tokens the grammar allows
            stage = lib.llama_sampler_init_grammar(llama.model._vocab, grammar.encode("utf-8"), b"root")
            if not stage:
                lib.llama_sampler_free(self._chain)
                self._chain = None
                raise InputError("grammar: llama.cpp could not parse it (GBNF with a 'root' rule)")
            stages.append(stage)
        if temperature <= 0.0:
            stages.append(lib.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                stages.append(lib.llama_sampler_init_top_k(top_k))
            if top_p < 1.0:
                stages.append(lib.llama_sampler_init_top_p(top_p, 1))
            if min_p > 0.0:
                stages.append(lib.llama_sampler_init_min_p(min_p, 1))
            stages.append(lib.llama_sampler_init_temp(temperature))
            stages.append(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        for stage in stages:
            lib.llama_sampler_chain_add(self._chain, stage)  # the chain owns and frees its stages

    def sample(self, index: int = -1) -> int:
        """Draw from logits row `index` of the last batch; llama_sampler_sample also accepts the token into the chain."""
        return int(self._lib.llama_sampler_sample(self._chain, self._ctx, index))

    def close(self) -> None:
        if getattr(self, "_chain", None):
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
