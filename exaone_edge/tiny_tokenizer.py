"""Tiny byte-level BPE tokenizers shaped like the released EXAONE ones, trained offline on a small corpus.

Two pre-tokenizers, as llama.cpp knows them (vendored llama.cpp 0c1e570, `conversion/base.py` hashes and
`src/llama-vocab.cpp` regexes):
- `exaone4`: EXAONE 4.0's tokenizer (hash entry for LGAI-EXAONE/EXAONE-4.0-32B): GPT-2 splitting.
- `exaone-moe`: K-EXAONE's tokenizer (hash entry for LGAI-EXAONE/K-EXAONE-236B-A23B): a Split whose
  letter runs keep the single spaces between words, so BPE can learn multi-word (SuperBPE-style) tokens,
  followed by ByteLevel(use_regex=False). The regex is the one llama-vocab.cpp quotes as "original regex
  from tokenizer.json".

EXAONE 4.5 uses `exaone-moe`. Evidence, all indirect (no copy of its tokenizer.json is reachable here):
its vocabulary is 153,600 with eos `<|endofturn|>` at 53, exactly K-EXAONE's (EXAONE 4.0: 102,400, eos
`[|endofturn|]` at 361); transformers' tiny EXAONE 4.5 fixture (hf-tiny-v2/tiny-random-Exaone4_5_*,
tokenizer.json 12.2 MB vs 7.91 MB for the EXAONE 4.0 fixture) carries eos `<|endofturn|>`; and llama.cpp's
EXAONE 4.5 converter (`Exaone4_5_TextModel` → `get_vocab_base_pre`) raises unless the tokenizer hashes to a
known entry, and the only EXAONE entry with that vocabulary is K-EXAONE's `exaone-moe`.

Normalizer: not verified. No public copy of EXAONE 4.0's or K-EXAONE's tokenizer.json was reachable, so the
default is none; `normalizer="NFC"` builds the variant the GGUF converter also accepts (see gguf_vocab.py).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# Released ids (NOTES.md "The released 33B checkpoint": TensorRT-LLM's EXAONE 4.5 test config, vLLM's
# example). Token strings: bos/pad/unk/eos from transformers' tiny EXAONE 4.5 fixture tokenizer_config.json
# (hf-tiny-v2/tiny-random-Exaone4_5_ForConditionalGeneration: "[BOS]", "[PAD]", "[UNK]", "<|endofturn|>");
# role markers from llama.cpp's exaone-moe chat format (src/llama-chat.cpp) and the EXAONE 4.5 template.
PAD, BOS, UNK, EOS = "[PAD]", "[BOS]", "[UNK]", "<|endofturn|>"
SPECIAL_ROLES = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
_RELEASED = {
    0: PAD, 1: BOS, 50: "<|system|>", 51: "<|user|>", 52: "<|assistant|>", 53: EOS, 54: "<think>",
    55: "</think>", 67: "<|image_pad|>", 68: "<|video_pad|>", 73: "<vision>", 74: "</vision>",
}
# Present in K-EXAONE's chat format (llama.cpp detects it by `<|tool_declare|>`), ids not published: the
# positions here are fillers, like UNK's.
_UNPUBLISHED_IDS = {3: UNK, 56: "<|tool|>", 57: "<|tool_declare|>", 58: "<tool_call>", 59: "</tool_call>"}
# Added tokens that stay in decoded text (skip_special_tokens=True keeps them) and that llama.cpp parses even
# with special parsing off (USER_DEFINED): the reasoning and tool-call markers, as Qwen-family tokenizers have.
NON_SPECIAL = frozenset({"<think>", "</think>", "<tool_call>", "</tool_call>"})
NUM_SPECIALS = 80

PRE_TOKENIZERS = ("exaone4", "exaone-moe")
EXAONE_MOE_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
NORMALIZERS = (None, "NFC")


def special_tokens() -> list[str]:
    """The added tokens by id, 0 … NUM_SPECIALS-1 (unassigned ids are reserved fillers)."""
    table = {**_UNPUBLISHED_IDS, **_RELEASED}
    return [table.get(i, f"<|reserved_special_token_{i}|>") for i in range(NUM_SPECIALS)]


def corpus_lines() -> list[str]:
    text = resources.files("exaone_edge").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def chat_template() -> str:
    return resources.files("exaone_edge").joinpath("data/chat_template.jinja").read_text(encoding="utf-8")


def train_tokenizer(vocab_size: int, pre_tokenizer: str = "exaone-moe", normalizer: str | None = None):
    """A trained `tokenizers.Tokenizer`; deterministic because the corpus and the trainer are."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if pre_tokenizer not in PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer {pre_tokenizer!r} is not one of {PRE_TOKENIZERS}")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer {normalizer!r} is not one of {NORMALIZERS}")
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    if normalizer == "NFC":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre_tokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    # The trainer marks every added token special; the reasoning/tool markers are not.
    data: dict[str, Any] = json.loads(tokenizer.to_str())
    for entry in data["added_tokens"]:
        entry["special"] = entry["content"] not in NON_SPECIAL
    return Tokenizer.from_str(json.dumps(data))


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    if name == "exaone4":  # ByteLevel's own split is the GPT-2 regex
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(EXAONE_MOE_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
