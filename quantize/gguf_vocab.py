"""The tokenizer as llama.cpp reads it: byte-level BPE vocabulary, merges, special tokens, chat template.

Read from tokenizer.json itself (no transformers): what HF tokenizes with is exactly what we copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exaone_edge.checkpoint import Checkpoint
from exaone_edge.errors import CheckpointError

# EXAONE 4.x splits text with the GPT-2 regex; llama.cpp knows it under this name. Its hash is not
# in llama.cpp's table for EXAONE 4.5, so the name is chosen from tokenizer.json's own split regex
# (the converter then checks tokenization against the HF tokenizer on real text).
PRE_TOKENIZER = "exaone4"
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_KNOWN_SPLITS = {  # tokenizer.json Split regex → llama.cpp pre-tokenizer name (src/llama-vocab.cpp)
    _GPT2_REGEX: PRE_TOKENIZER,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+": "exaone-moe",
}

# gguf TokenType values
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pre: str  # llama.cpp pre-tokenizer name
    merges: list[str]
    special_ids: dict[str, int]  # bos/eos/unk/pad → id
    add_bos: bool
    add_eos: bool
    chat_template: str


def read_vocab(checkpoint: Checkpoint) -> Vocab:
    path = checkpoint.tokenizer_file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"tokenizer.json is not valid JSON ({exc})", path=path) from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"tokenizer model is {model.get('type')!r}, expected a byte-level 'BPE'", path=path)
    vocab_size = checkpoint.spec.decoder.vocab_size
    added = {entry["id"]: entry for entry in data.get("added_tokens") or []}
    by_id: dict[int, str] = {idx: token for token, idx in model["vocab"].items()}
    by_id.update({idx: entry["content"] for idx, entry in added.items()})
    if max(by_id) >= vocab_size:
        raise CheckpointError(
            f"tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}", path=path,
            fix="Use the tokenizer.json shipped with this checkpoint.",
        )
    tokens: list[str] = []
    types: list[int] = []
    for idx in range(vocab_size):
        if idx not in by_id:
            tokens.append(f"[PAD{idx}]")  # embedding rows past the tokenizer: never produced
            types.append(UNUSED)
            continue
        tokens.append(by_id[idx])
        entry = added.get(idx)
        types.append(NORMAL if entry is None else (CONTROL if entry.get("special") else USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    config = _tokenizer_config(checkpoint.path)
    ids = {token: idx for idx, token in by_id.items()}
    special_ids: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        token = _token_text(config.get(f"{role}_token"))
        if token is not None and token in ids:
            special_ids[role] = ids[token]
    eos = checkpoint.spec.decoder.eos_token_id
    if isinstance(eos, int):
        special_ids["eos"] = eos  # the model config decides where generation stops
    add_bos, add_eos = _post_processor_adds(data.get("post_processor"), special_ids)
    pre = pre_tokenizer_name(data.get("pre_tokenizer"), path)
    return Vocab(tokens, types, pre, merges, special_ids, add_bos, add_eos, checkpoint.chat_template)


def pre_tokenizer_name(pre_tokenizer: Any, path: Path) -> str:
    """llama.cpp's name for the way tokenizer.json splits text before BPE; unknown splits are refused."""
    steps = pre_tokenizer.get("pretokenizers", []) if isinstance(pre_tokenizer, dict) and \
        pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    splits = [step for step in steps if isinstance(step, dict) and step.get("type") == "Split"]
    byte_level = [step for step in steps if isinstance(step, dict) and step.get("type") == "ByteLevel"]
    if not byte_level:
        raise CheckpointError("the tokenizer is not byte-level BPE (no ByteLevel pre-tokenizer)", path=path)
    if not splits and byte_level[0].get("use_regex", True):
        return PRE_TOKENIZER  # ByteLevel's built-in split is the GPT-2 regex
    if len(splits) == 1 and not byte_level[0].get("use_regex", True):
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex in _KNOWN_SPLITS:
            return _KNOWN_SPLITS[regex]
        raise CheckpointError(f"tokenizer.json splits text with a regex llama.cpp has no name for: {regex!r}", path=path,
                              fix="Add its llama.cpp pre-tokenizer name to quantize/gguf_vocab.py after checking parity.")
    raise CheckpointError("tokenizer.json has a pre-tokenizer layout this converter does not know", path=path)


def _tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"tokenizer_config.json is not valid JSON ({exc})", path=path) from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _post_processor_adds(processor: Any, special_ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether HF's encode(add_special_tokens=True) puts BOS first / EOS last."""
    if not isinstance(processor, dict) or processor.get("type") != "TemplateProcessing":
        return False, False
    single = processor.get("single") or []
    ids = {name: entry.get("ids", [None])[0] for name, entry in (processor.get("special_tokens") or {}).items()}

    def special_id(item: dict[str, Any]) -> int | None:
        return ids.get((item.get("SpecialToken") or {}).get("id"))

    first = special_id(single[0]) if single else None
    last = special_id(single[-1]) if single else None
    return first is not None and first == special_ids.get("bos"), last is not None and last == special_ids.get("eos")
