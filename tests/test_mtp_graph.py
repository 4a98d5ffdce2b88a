"""EXAONE 4.5's MTP head in llama.cpp (patches/llama.cpp/0001-exaone4-mtp-graph.patch) against transformers.

The head runs in a llama.cpp context of type MTP: row i is token t_i with, in batch.embd, the target's
post-norm hidden state h_{i-1}. The reference is transformers' own Exaone4DecoderLayer as layer 0
(`layer_types[0]`: sliding-window with RoPE) with the head's weights, between the head's norms, fc and
lm_head. The tiny model's window is 32 positions, so a window or RoPE mistake shows past row 32; the
reference variants without the window, without RoPE and with the fc inputs swapped prove it does.
Driven through llama.cpp's C API with ctypes (llama-cpp-python's bindings); F32 weights and KV cache,
flash attention off.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from gguf_fixtures import converted, hf_model

TOLERANCE = 1e-4  # F32 end to end; measured 1.4e-5 (trunk h), 1.1e-6 (MTP logits)
N_TOKENS = 100  # > 3 windows of 32
CHUNKS = (59, 1, 39)  # MTP rows decoded as a prompt, one draft step, the rest: the head's KV cache carries over


@pytest.fixture(scope="module")
def mtp_gguf(tiny_model_dir: Path, tmp_path_factory) -> Path:
    return converted(tiny_model_dir, "F32", tmp_path_factory.mktemp("mtp"))  # the converter keeps the head


def test_mtp_logits_match_transformers(mtp_gguf, tiny_model_dir):
    import torch

    _require_patched_llama(mtp_gguf)
    model = hf_model(tiny_model_dir)
    text = model.config.text_config
    assert text.layer_types[0] == "sliding_attention" and text.sliding_window == 32
    ids = np.random.default_rng(0).integers(100, text.vocab_size, N_TOKENS).tolist()
    with torch.no_grad():
        out = model.model.language_model(input_ids=torch.tensor([ids]))
        hidden = out.last_hidden_state[0].numpy()  # after the final norm
        logits = model.lm_head(out.last_hidden_state)[0].numpy()
    with _Llama(mtp_gguf) as runner:
        target_h, target_logits = runner.target(ids)
        # the head reads the target's own states, so its check does not depend on the trunk's
        mtp_logits, mtp_h = runner.mtp(ids[1:], target_h[:-1], first_pos=1)
    reference = _Reference(tiny_model_dir, model)
    ref_logits, ref_h = reference(ids[1:], target_h[:-1], first_pos=1)
    diffs = {"trunk h": np.abs(target_h - hidden).max(), "trunk logits": np.abs(target_logits - logits).max(),
             "MTP logits": np.abs(mtp_logits - ref_logits).max(), "MTP h": np.abs(mtp_h - ref_h).max()}
    print(", ".join(f"{name} {diff:.1e}" for name, diff in diffs.items()), f"(max |Δ|, {len(ids) - 1} MTP rows)")
    assert max(diffs.values()) <= TOLERANCE, diffs
    for variant in ("global", "no_rope", "swapped_fc"):
        wrong, _ = reference(ids[1:], target_h[:-1], first_pos=1, variant=variant)
        assert np.abs(mtp_logits - wrong).max() > 100 * TOLERANCE, f"the test cannot see a {variant} mistake"


# -- llama.cpp through ctypes ---------------------------------------------------------------------------


def _require_patched_llama(path: Path) -> None:
    """llama-cpp-python as setup.sh builds it, with patches/llama.cpp: an unpatched build fails here, saying so."""
    from exaone_edge.llama import Model

    Model(path, load_mtp=True).close()


class _Llama:
    """One model loaded with its MTP head, a target context and an MTP context over it."""

    def __init__(self, path: Path, n_ctx: int = 256) -> None:
        import llama_cpp
        from llama_cpp import llama_cpp_ext

        self.lib, self.ext = llama_cpp, llama_cpp_ext
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers, params.load_mtp = 0, True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.ctx_target = self._context(n_ctx, llama_cpp.LLAMA_CONTEXT_TYPE_DEFAULT)
        self.ctx_mtp = self._context(n_ctx, llama_cpp.LLAMA_CONTEXT_TYPE_MTP)
        assert self.ctx_target and self.ctx_mtp
        llama_cpp_ext.llama_set_embeddings_nextn(self.ctx_target, True, False)  # every row, as a prompt needs
        llama_cpp_ext.llama_set_embeddings_nextn(self.ctx_mtp, True, True)  # output rows: the next draft step's h
        self.batch = llama_cpp.llama_batch_init(n_ctx, self.n_embd, 1)
        self.tokens = (llama_cpp.llama_token * n_ctx)()
        self.embd = np.ctypeslib.as_array(self.batch.embd, shape=(n_ctx, self.n_embd))

    def _context(self, n_ctx: int, kind: int):
        params = self.lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max, params.n_threads, params.n_threads_batch = 1, 2, 2
        params.type_k = params.type_v = 0  # GGML_TYPE_F32
        params.flash_attn_type = 0  # off: on CPU it computes in F16
        params.swa_full = False  # as the runtime runs
        params.ctx_type = kind
        return self.lib.llama_init_from_model(self.model, params)

    def _decode(self, ctx, ids, rows, first_pos: int) -> None:
        batch = self.batch
        batch.token = self.tokens
        for i, token in enumerate(ids):
            self.tokens[i] = token
            batch.pos[i], batch.n_seq_id[i], batch.logits[i] = first_pos + i, 1, 1
            batch.seq_id[i][0] = 0
        # the MTP context reads each row twice: the token (its embedding) and, in embd, the hidden state
        batch.embd = self._embd_pointer if rows is not None else None
        if rows is not None:
            self.embd[: len(ids)] = rows
        batch.n_tokens = len(ids)
        assert self.lib.llama_decode(ctx, batch) == 0

    def target(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self._decode(self.ctx_target, ids, None, 0)
        h = self.ext.llama_get_embeddings_nextn(self.ctx_target)  # every row, in batch order (unmasked)
        return np.ctypeslib.as_array(h, shape=(len(ids), self.n_embd)).copy(), self._logits(self.ctx_target, len(ids))

    def mtp(self, ids: list[int], h: np.ndarray, first_pos: int) -> tuple[np.ndarray, np.ndarray]:
        logits, states, start = [], [], 0
        for size in CHUNKS:
            self._decode(self.ctx_mtp, ids[start:start + size], h[start:start + size], first_pos + start)
            logits.append(self._logits(self.ctx_mtp, size))
            states.append(np.stack([self._row(self.ext.llama_get_embeddings_nextn_ith(self.ctx_mtp, i))
                                    for i in range(size)]))
            start += size
        assert start == len(ids)
        return np.concatenate(logits), np.concatenate(states)

    def _logits(self, ctx, n: int) -> np.ndarray:
        rows = [self.lib.llama_get_logits_ith(ctx, i) for i in range(n)]
        return np.stack([np.ctypeslib.as_array(row, shape=(self.n_vocab,)) for row in rows])

    def _row(self, pointer) -> np.ndarray:
        return np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy()

    @property
    def _embd_pointer(self):
        return self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def __enter__(self) -> _Llama:
        return self

    def __exit__(self, *exc) -> None:
        self.batch.token = ctypes.POINTER(self.lib.llama_token)()  # ours: not for llama_batch_free
        self.batch.embd = self._embd_pointer
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx_mtp)
        self.lib.llama_free(self.ctx_target)
        self.lib.llama_model_free(self.model)


# -- the reference ---------------------------------------------------------------------------------------


def _mtp_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {name: tensor.float().numpy() for name, tensor in load_file(model_dir / "model-mtp.safetensors").items()}


class _Reference:
    """vLLM's Exaone4_5MultiTokenPredictor on transformers' layers:
    fc(cat[enorm(emb), hnorm(h)]) → decoder layer 0 → norm → lm_head."""

    def __init__(self, model_dir: Path, model) -> None:
        import copy

        import torch
        from transformers.models.exaone4.modeling_exaone4 import (
            Exaone4DecoderLayer,
            Exaone4RMSNorm,
            Exaone4RotaryEmbedding,
        )

        text = copy.deepcopy(model.config.text_config)
        text._attn_implementation = "eager"
        weights = {k: torch.from_numpy(v) for k, v in _mtp_weights(model_dir).items()}
        self.layer = Exaone4DecoderLayer(text, layer_idx=0).eval()
        prefix = "mtp.layers.0."
        self.layer.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)})
        self.norms = {}
        for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
            norm = Exaone4RMSNorm(text.hidden_size, eps=text.rms_norm_eps)
            norm.weight.data = weights[f"mtp.{name}.weight"]
            self.norms[name] = norm
        self.fc = weights["mtp.fc.weight"]
        self.rotary = Exaone4RotaryEmbedding(text)
        self.window = text.sliding_window
        self.embed, self.lm_head = model.model.language_model.embed_tokens, model.lm_head

    def __call__(self, ids: list[int], h: np.ndarray, first_pos: int, variant: str = ""
                 ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            e = self.norms["pre_fc_norm_embedding"](self.embed(torch.tensor([ids])))
            hn = self.norms["pre_fc_norm_hidden"](torch.from_numpy(h)[None])
            x = torch.cat([hn, e] if variant == "swapped_fc" else [e, hn], dim=-1) @ self.fc.T
            positions = torch.arange(first_pos, first_pos + len(ids))[None]
            n = len(ids)
            distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
            allowed = (distance >= 0) & ((distance < self.window) if variant != "global" else True)
            mask = torch.zeros(n, n).masked_fill(~allowed, float("-inf"))[None, None]
            self.layer.self_attn.is_sliding = variant != "no_rope"  # transformers ropes sliding layers only
            try:
                out = self.layer(x, attention_mask=mask, position_embeddings=self.rotary(x, positions))
            finally:
                self.layer.self_attn.is_sliding = True
            state = self.norms["norm"](out)
            return self.lm_head(state)[0].numpy(), state[0].numpy()
