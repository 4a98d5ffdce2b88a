"""The transformers reference without the whole model in memory: decoder layers streamed from the shards.

The model skeleton is built on the meta device with transformers' own EXAONE 4.5 classes; the vision
tower, the embeddings, the final norm and the head are loaded as needed, and every decoder layer's
weights are read from the safetensors shards, run over *all* sequences (questions or chats), then
dropped before the next layer. Each weight is therefore read once per pass and the resident set is
one decoder layer + embeddings + head + activations (+ the vision tower while pages are encoded).

Cost: teacher-forced logits and the generation prefill share one pass; greedy generation then takes
one more pass over the weights per generated token (batched across questions, per-layer KV caches).
For the 33B a pass reads the ~66 GB of bf16 shards: disk-bound, about 30–60 s on NVMe when they do not
fit the page cache, so `max_new_tokens` 24 costs ~25 passes.

Shards are read with positional reads into fresh buffers, not kept memory-mapped, so pages of
tensors already used never count against the process (exaone_edge/torch_weights.py).

A GPTQ checkpoint runs the same way (the GPTQ fidelity check's candidate): each quantized Linear's dense
weight is made as its layer loads, by GPTQModel's own dequantization (exaone_edge/torch_weights.py `GptqShardReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaone_edge.budgets import REFERENCE_CACHE_SHARE, REFERENCE_DTYPE
from exaone_edge.errors import InputError
from exaone_edge.progress import log
from exaone_edge.torch_weights import open_weights, vision_prefix

DTYPES = ("auto", "bfloat16", "float32")
# Of the free memory when the reference starts, the share its generation KV caches may take; the rest holds one decoder
# layer, the embeddings and head (8.2 GB for the 33B in float32) and the activations.
HEAD_ROWS = 256  # positions per lm_head chunk: bounds the [rows, vocab] float32 logits (153,600 wide for the 33B)


def free_memory(device: str) -> int:
    """Bytes free on `device`: the GPU's free memory, or the host's MemAvailable."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))


def resolve_placement(dtype: str = "auto", device: str | None = None) -> tuple[str, str]:
    """(dtype, device): CUDA when torch sees a GPU, float32 on either by default. The reference's own rounding must
    stay below the error of the F32/8-bit candidates it judges: bf16 keeps 8 mantissa bits (relative rounding
    2^-9 per operation, over 64 layers), the order of a Q8_0 decoder's own error (llama.cpp's KLD for Q8_0:
    0.00136 on Llama 3 8B). float32 doubles what stays resident for the 33B (one layer, embeddings and head: 8.2
    GB, not 4.1) and the generation KV cache per question (0.93 GB at 1,772 positions, not 0.46): 12 questions
    still fit half of a 24 GB card's free memory, one group. On the CPU, bf16 matmuls are also slower without AMX."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"reference dtype '{dtype}' is not supported", fix=f"Use one of: {', '.join(DTYPES)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = REFERENCE_DTYPE
    return dtype, device


@dataclass
class _Sequence:
    """One sequence moving through the layers: its hidden states and what each layer needs besides."""

    hidden: Any  # [1, length, hidden]
    position_ids: Any
    cache: Any = None  # a DynamicCache while generating
    masks: dict[str, Any] = field(default_factory=dict)
    rope: tuple[Any, Any] | None = None


class StreamedReference:
    """Teacher-forced logits, greedy answers and vision rows of EXAONE 4.5, one decoder layer resident."""

    def __init__(self, model_dir: Path, processor_dir: Path | None = None, dtype: str = "auto",
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoProcessor, Exaone4_5_Config, Exaone4_5_ForConditionalGeneration

        self._torch = torch
        self.dtype_name, self.device = resolve_placement(dtype, device)
        self.dtype = getattr(torch, self.dtype_name)
        self.model_dir = Path(model_dir)
        self.processor = AutoProcessor.from_pretrained(processor_dir or model_dir)
        self.eos_id = self.processor.tokenizer.eos_token_id
        self.config = Exaone4_5_Config.from_pretrained(model_dir)
        with torch.device("meta"):
            self.model = Exaone4_5_ForConditionalGeneration(self.config).eval()
        self.text_config = self.model.model.language_model.config
        self.weights = open_weights(model_dir)
        self.passes = 0
        lm = self.model.model.language_model
        # Non-persistent rope buffers are computed in __init__: build those two modules for real.
        lm.rotary_emb = type(lm.rotary_emb)(config=self.text_config).to(self.device)
        visual = self.model.model.visual
        visual.rotary_pos_emb = type(visual.rotary_pos_emb)(self.config.vision_config).to(self.device)

    # ---- inputs -------------------------------------------------------------------------------------
    def answer_ids(self, answer: str) -> list[int]:
        return self.processor.tokenizer.encode(answer, add_special_tokens=False) + [self.eos_id]

    def _embed(self, input_ids, image_rows) -> Any:
        embeds = self.model.model.language_model.embed_tokens(input_ids.to(self.device))
        if image_rows is not None:
            mask = (input_ids == self.config.image_token_id).to(self.device)
            if int(mask.sum()) != image_rows.shape[0]:
                raise InputError(f"the prompt has {int(mask.sum())} image placeholders for {image_rows.shape[0]} rows")
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), image_rows.to(embeds.dtype))
        return embeds

    def _sequence(self, embeds, start: int = 0, cache=None) -> _Sequence:
        torch = self._torch
        positions = torch.arange(start, start + embeds.shape[1], device=self.device).unsqueeze(0)
        return _Sequence(embeds, positions, cache)

    # ---- the passes ---------------------------------------------------------------------------------
    def vision_rows(self, inputs: Sequence[Any]) -> list[Any]:
        """Image rows for each chat input (None where it has no image); the tower is resident only here."""
        torch = self._torch
        visual = self.model.model.visual
        if not any("pixel_values" in item for item in inputs):
            return [None] * len(inputs)
        self.weights.load(visual, vision_prefix(self.weights.layout, self.model_dir), self.dtype, self.device)
        rows = []
        with torch.no_grad():
            for item in inputs:
                if "pixel_values" not in item:
                    rows.append(None)
                    continue
                out = visual(item["pixel_values"].to(self.device, self.dtype),
                             grid_thw=item["image_grid_thw"].to(self.device))
                rows.append(out.pooler_output)
        for name, child in visual.named_children():
            if name != "rotary_pos_emb":  # built for real in __init__: keep it for the next call
                self._release(child)
        return rows

    def _masks(self, sequence: _Sequence) -> None:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        arguments = dict(config=self.text_config, inputs_embeds=sequence.hidden, attention_mask=None,
                         past_key_values=sequence.cache, position_ids=sequence.position_ids)
        sequence.masks = {"full_attention": create_causal_mask(**arguments)}
        if "sliding_attention" in self.text_config.layer_types:
            sequence.masks["sliding_attention"] = create_sliding_window_causal_mask(**arguments)
        sequence.rope = self.model.model.language_model.rotary_emb(sequence.hidden, sequence.position_ids)

    def _pass(self, sequences: Sequence[_Sequence]) -> None:
        """Every sequence through every decoder layer, one layer's weights resident at a time."""
        torch = self._torch
        lm = self.model.model.language_model
        for sequence in sequences:
            self._masks(sequence)
        with torch.no_grad():
            for index, layer in enumerate(lm.layers):
                self.weights.load(layer, f"model.language_model.layers.{index}.", self.dtype, self.device)
                kind = self.text_config.layer_types[index]
                for sequence in sequences:
                    sequence.hidden = layer(sequence.hidden, attention_mask=sequence.masks[kind],
                                            position_ids=sequence.position_ids, past_key_values=sequence.cache,
                                            use_cache=sequence.cache is not None, position_embeddings=sequence.rope)
                self._release(layer)
        self.passes += 1

    def _head(self, hidden, reduce: Callable[[Any], Any] | None = None) -> list[Any]:
        """Final norm + lm_head over rows of `hidden` [n, H], HEAD_ROWS at a time; `reduce` maps each
        chunk's float32 logits to what is kept (default: the logits themselves, as numpy)."""
        torch = self._torch
        self._ensure_head()
        lm = self.model.model.language_model
        out = []
        with torch.no_grad():
            for start in range(0, hidden.shape[0], HEAD_ROWS):
                logits = self.model.lm_head(lm.norm(hidden[start:start + HEAD_ROWS])).float()
                out.append(reduce(logits) if reduce else logits.cpu().numpy())
        return out

    def _ensure_head(self) -> None:
        lm = self.model.model.language_model
        if lm.norm.weight.is_meta:
            self.weights.load(lm.norm, "model.language_model.norm.", self.dtype, self.device)
        if self.model.lm_head.weight.is_meta:
            name = "lm_head.weight" if "lm_head.weight" in self.weights.layout else "model.language_model.embed_tokens.weight"
            self.model.lm_head.weight = self._torch.nn.Parameter(self.weights.read(name, self.dtype, self.device),
                                                                 requires_grad=False)

    def _ensure_embeddings(self) -> None:
        embed = self.model.model.language_model.embed_tokens
        if embed.weight.is_meta:
            self.weights.load(embed, "model.language_model.embed_tokens.", self.dtype, self.device)

    def _release(self, module) -> None:
        module.to("meta")
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def close(self) -> None:
        self._release(self.model)

    # ---- what callers ask for -----------------------------------------------------------------------
    def run(self, inputs: Sequence[Any], answers: Sequence[list[int]], max_new_tokens: int,
            reduce: Callable[[Any], Any] | None = None) -> tuple[list[Any], list[list[int]], list[Any]]:
        """For each chat input (prompt with generation prompt): the logits predicting `answers[i]` (teacher
        forced, reduced chunk by chunk by `reduce`), the greedy continuation's token ids, and the image rows."""
        torch = self._torch
        from transformers import DynamicCache

        rows = self.vision_rows(inputs)
        self._ensure_embeddings()
        forced, generating = [], []
        for item, answer, image_rows in zip(inputs, answers, rows):
            prompt = item["input_ids"]
            full = torch.cat([prompt, torch.tensor([answer[:-1]], dtype=prompt.dtype)], 1)
            forced.append(self._sequence(self._embed(full, image_rows)))
            if max_new_tokens > 0:
                cache = DynamicCache(config=self.text_config)
                generating.append(self._sequence(self._embed(prompt, image_rows), cache=cache))
        log(f"reference: teacher-forced pass + generation prefill over {len(inputs)} prompts "
            f"({self.dtype_name} on {self.device}, one decoder layer resident)")
        self._pass(forced + generating)
        logits = []
        for item, sequence in zip(inputs, forced):
            start = item["input_ids"].shape[1] - 1
            chunks = self._head(sequence.hidden[0, start:], reduce)
            logits.append(chunks if reduce else np.concatenate(chunks))
        del forced
        generated = self._generate(inputs, generating, max_new_tokens)
        return logits, generated, [None if r is None else r.float().cpu().numpy() for r in rows]

    def _generate(self, inputs, sequences: list[_Sequence], max_new_tokens: int) -> list[list[int]]:
        torch = self._torch
        tokens: list[list[int]] = [[] for _ in sequences]
        active = list(range(len(sequences)))
        for step in range(max_new_tokens):
            for index in active:
                logits = self._head(sequences[index].hidden[0, -1:])[0]
                tokens[index].append(int(np.argmax(logits[0])))
            active = [i for i in active if tokens[i][-1] != self.eos_id]
            if not active or step == max_new_tokens - 1:
                break
            log(f"reference: generating token {step + 2} of at most {max_new_tokens} for {len(active)} questions")
            for index in active:
                sequence = sequences[index]
                start = inputs[index]["input_ids"].shape[1] + step
                ids = torch.tensor([[tokens[index][-1]]])
                sequences[index] = self._sequence(self._embed(ids, None), start=start, cache=sequence.cache)
            self._pass([sequences[i] for i in active])
        return tokens

    def cache_groups(self, inputs: Sequence[Any], max_new_tokens: int) -> list[slice]:
        """Consecutive questions whose generation KV caches (every layer, prompt + answer) fit REFERENCE_CACHE_SHARE of the
        device's free memory together: one group unless the questions are many (0.93 GB each for the 33B in float32
        at 1,772 positions, so about 12 to a group on a 24 GB card)."""
        config = self.text_config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_position = (config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim
                        * self._torch.finfo(self.dtype).bits // 8)
        budget = REFERENCE_CACHE_SHARE * free_memory(self.device)
        groups, start, used = [], 0, 0
        for index, item in enumerate(inputs):
            need = (item["input_ids"].shape[1] + max_new_tokens) * per_position
            if index > start and used + need > budget:
                groups.append(slice(start, index))
                start, used = index, 0
            used += need
        return [*groups, slice(start, len(inputs))]

    def decode(self, ids: list[int]) -> str:
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def sequence_logits(self, inputs: Sequence[Any], reduce: Callable[[Any], Any] | None = None) -> Iterator[list[Any]]:
        """Every position of each full chat (e.g. a conversation with its answer), reduced chunk by chunk (default:
        float32 numpy logits). One pass over the weights now; each chat's head runs as the iterator reaches it."""
        rows = self.vision_rows(inputs)
        self._ensure_embeddings()
        sequences = [self._sequence(self._embed(item["input_ids"], r)) for item, r in zip(inputs, rows)]
        log(f"streamed: one pass over {len(inputs)} sequences of {self.model_dir.name} "
            f"({self.dtype_name} on {self.device})")
        self._pass(sequences)
        return (self._head(sequence.hidden[0], reduce) for sequence in sequences)


def conversation_inputs(processor, conversations: Sequence[Any]) -> list[Any]:
    return [processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
            for chat in conversations]


def _cached(key: str, cache_dir: Path | None) -> tuple[Path, Any]:
    from exaone_edge.reference.file import default_cache_dir, read_reference

    path = Path(cache_dir or default_cache_dir()) / f"reference-{key[:32]}.npz"
    return path, read_reference(path, key)


def question_reference(model_dir: Path, questions: Sequence[Any], eval_hash: str, options: dict[str, Any],
                       max_new_tokens: int, cache_dir: Path | None = None, dtype: str = "auto",
                       make_inputs: Callable[[Any, Any], Any] | None = None) -> tuple[Any, Path, bool]:
    """validate's reference: (ReferenceFile, its path, whether it was reused). Computed layer-streamed on a
    miss and written to the cache; on a hit the checkpoint's weights are never opened."""
    import time

    from exaone_edge.reference.inputs import chat_inputs
    from exaone_edge.reference.file import (
        ReferenceEntry, ReferenceFile, checkpoint_fingerprint, image_digest, reference_key, target_logprobs, topk_numpy,
        write_reference,
    )

    dtype_name, device = resolve_placement(dtype)
    parts = {"eval_set": eval_hash, "dtype": dtype_name, "options": options,
             "questions": [[q.document, q.question, list(q.answers), image_digest(q.image)] for q in questions]}
    key = reference_key(checkpoint_fingerprint(model_dir), parts)
    path, stored = _cached(key, cache_dir)
    if stored is not None:
        log(f"validate: reference reused from {path} (the checkpoint is not loaded)")
        return stored, path, True
    started = time.perf_counter()
    reference = StreamedReference(model_dir, dtype=dtype_name, device=device)
    build = make_inputs or chat_inputs
    inputs = [build(reference.processor, q) for q in questions]
    answers = [reference.answer_ids(q.answers[0]) for q in questions]
    logits, generated, rows = [], [], []
    groups = reference.cache_groups(inputs, max_new_tokens)
    for group in groups:  # each group takes its own passes over the weights: more groups, more reading
        if len(groups) > 1:
            log(f"reference: questions {group.start + 1}–{group.stop} of {len(inputs)} (their KV caches fit together)")
        for kept, new in zip((logits, generated, rows), reference.run(inputs[group], answers[group], max_new_tokens)):
            kept.extend(new)
    entries = []
    for answer, full, tokens, vision in zip(answers, logits, generated, rows):
        topk = topk_numpy(full)
        entries.append(ReferenceEntry(topk, target_logprobs(topk, full[np.arange(len(answer)), answer]), tuple(answer),
                                      reference.decode(tokens), vision))
    details = {"checkpoint": str(model_dir), "dtype": dtype_name, "device": device, "weight_passes": reference.passes,
               "bytes_read": reference.weights.bytes_read, "seconds": round(time.perf_counter() - started, 2),
               "rest_mass_max": max(float(e.topk.rest_mass().max()) for e in entries)}
    reference.close()
    result = ReferenceFile(key, details, entries)
    write_reference(path, result)
    log(f"validate: reference written to {path} ({details['weight_passes']} passes over the weights)")
    return result, path, False


def chat_reference(model_dir: Path, processor, conversations: Sequence[Any], cache_dir: Path | None = None,
                   dtype: str = "auto") -> Any:
    """Top-k logits at every position of each full chat (the GPTQ fidelity check), cached like validate's."""
    from exaone_edge.reference.file import (
        ReferenceEntry, ReferenceFile, checkpoint_fingerprint, concat_topk, image_digest, reference_key, topk_torch,
        write_reference,
    )

    dtype_name, device = resolve_placement(dtype)
    inputs = conversation_inputs(processor, conversations)
    digests = [[item["input_ids"][0].tolist(), [image_digest(part["image"]) for turn in chat
                for part in (turn["content"] if isinstance(turn["content"], list) else [])
                if part.get("type") == "image"]] for item, chat in zip(inputs, conversations)]
    key = reference_key(checkpoint_fingerprint(model_dir), {"chats": digests, "dtype": dtype_name, "scope": "every position"})
    path, stored = _cached(key, cache_dir)
    if stored is not None:
        log(f"reference reused from {path}")
        return stored
    reference = StreamedReference(model_dir, dtype=dtype_name, device=device)
    chunks = reference.sequence_logits(inputs, topk_torch)
    entries = [ReferenceEntry(concat_topk(parts)) for parts in chunks]
    details = {"checkpoint": str(model_dir), "dtype": dtype_name, "device": device, "weight_passes": reference.passes,
               "rest_mass_max": max(float(e.topk.rest_mass().max()) for e in entries)}
    reference.close()
    result = ReferenceFile(key, details, entries)
    write_reference(path, result)
    return result
