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

# tokenizer.json layout → llama.cpp pre-tokenizer name, at llama-cpp-python 0.3.36's vendored llama.cpp
# (0c1e570, src/llama-vocab.cpp). The name is read from tokenizer.json, never assumed: no EXAONE 4.5 hash
# entry exists, and a wrong `tokenizer.ggml.pre` silently changes tokenization.
GPT2_PRE = "exaone4"  # EXAONE 4.0: ByteLevel's built-in GPT-2 split; llama.cpp maps "exaone4" to that regex
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# K-EXAONE (and EXAONE 4.5): llama-vocab.cpp quotes this as the "original regex from tokenizer.json".
EXAONE_MOE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
SPLIT_NAMES = {  # Split regex (followed by ByteLevel without its own regex) → llama.cpp name
    _GPT2_REGEX: GPT2_PRE,
    _GPT2_REGEX + r"|\s+": GPT2_PRE,
    EXAONE_MOE_REGEX: "exaone-moe",
}
# llama.cpp applies no normalizer to BPE vocabularies. NFC is accepted: it only changes text that is not
# already NFC, so llama.cpp matches HF on NFC text (our runtime tokenizes with tokenizer.json itself).
KNOWN_NORMALIZERS = (None, "NFC")
META_NORMALIZER = "exaone_edge.tokenizer.normalizer"

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
    normalizer: str | None = None  # what tokenizer.json applies first; llama.cpp applies none


def read_vocab(checkpoint: Checkpoint) -> Vocab:
    return vocab_from_files(checkpoint.tokenizer_file, checkpoint.spec.decoder.vocab_size,
                            checkpoint.spec.decoder.eos_token_id, checkpoint.chat_template)


def vocab_from_files(path: Path, vocab_size: int, eos_token_id: Any, chat_template: str) -> Vocab:
    """The vocabulary from tokenizer.json (+ tokenizer_config.json beside it) for a model of `vocab_size` rows."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"tokenizer.json is not valid JSON ({exc})", path=path) from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"tokenizer model is {model.get('type')!r}, expected a byte-level 'BPE'", path=path)
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
        # special → CONTROL, other added tokens → USER_DEFINED: llama.cpp then parses exactly the tokens HF
        # parses, with special parsing on and off (HF's split_special_tokens). llama.cpp's own converter also
        # makes non-special `<|…|>` tokens CONTROL, which would break that parity with special parsing off.
        types.append(NORMAL if entry is None else (CONTROL if entry.get("special") else USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    config = _tokenizer_config(path.parent)
    ids = {token: idx for idx, token in by_id.items()}
    special_ids: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        token = _token_text(config.get(f"{role}_token"))
        if token is not None and token in ids:
            special_ids[role] = ids[token]
    if isinstance(eos_token_id, int):
        special_ids["eos"] = eos_token_id  # the model config decides where generation stops
    add_bos, add_eos = _post_processor_adds(data.get("post_processor"), special_ids)
    pre = pre_tokenizer_name(data.get("pre_tokenizer"), path)
    normalizer = normalizer_name(data.get("normalizer"), path)
    return Vocab(tokens, types, pre, merges, special_ids, add_bos, add_eos, chat_template, normalizer)


def write_vocab(writer: Any, vocab: Vocab) -> None:
    """Write `vocab` with a gguf.GGUFWriter (tokenizer.ggml.* keys and the chat template)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for role, token_id in vocab.special_ids.items():
        setters[role](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_chat_template(vocab.chat_template)
    if vocab.normalizer is not None:  # llama.cpp ignores it; recorded so a reader knows to normalize its input
        writer.add_string(META_NORMALIZER, vocab.normalizer)


def pre_tokenizer_name(pre_tokenizer: Any, path: Path) -> str:
    """llama.cpp's name for the way tokenizer.json splits text before BPE; unknown splits are refused."""
    steps = pre_tokenizer.get("pretokenizers", []) if isinstance(pre_tokenizer, dict) and \
        pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    kinds = [step.get("type") if isinstance(step, dict) else repr(step) for step in steps]
    byte_level = [step for step in steps if isinstance(step, dict) and step.get("type") == "ByteLevel"]
    if not byte_level:
        raise CheckpointError(f"the tokenizer is not byte-level BPE (pre-tokenizer {' + '.join(map(str, kinds))}, "
                              "no ByteLevel)", path=path, fix="Only byte-level BPE tokenizers (EXAONE 4.x) convert.")
    if byte_level[0].get("add_prefix_space"):
        raise CheckpointError("tokenizer.json's ByteLevel adds a prefix space, which llama.cpp's BPE never does",
                              path=path, fix="Set add_prefix_space to false if the model was trained that way.")
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return GPT2_PRE
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if regex in SPLIT_NAMES and split.get("behavior", "Isolated") == "Isolated" and not split.get("invert"):
            return SPLIT_NAMES[regex]
        raise CheckpointError(f"tokenizer.json splits text with a regex llama.cpp has no name for: {regex!r} "
                              f"(behavior {split.get('behavior')!r}, invert {split.get('invert')!r})", path=path,
                              fix="Find the llama.cpp pre-tokenizer whose regex in src/llama-vocab.cpp is this one, "
                                  "add it to SPLIT_NAMES in quantize/gguf_vocab.py and run "
                                  "tests/test_tokenizer_parity.py with a tokenizer using it.")
    raise CheckpointError(f"tokenizer.json pre-tokenizes with {' + '.join(map(str, kinds))}, a layout this converter "
                          "does not know", path=path,
                          fix="Supported: ByteLevel (GPT-2 split, 'exaone4') or Split + ByteLevel(use_regex=false).")


def normalizer_name(normalizer: Any, path: Path) -> str | None:
    """None or "NFC"; any other normalizer is refused, because llama.cpp would silently skip it."""
    steps = normalizer.get("normalizers", []) if isinstance(normalizer, dict) and \
        normalizer.get("type") == "Sequence" else ([] if normalizer is None else [normalizer])
    kinds = [step.get("type") if isinstance(step, dict) else repr(step) for step in steps]
    if not kinds:
        return None
    if len(kinds) == 1 and kinds[0] in KNOWN_NORMALIZERS:
        return kinds[0]
    raise CheckpointError(f"tokenizer.json normalizes text with {' + '.join(map(str, kinds))}, which llama.cpp does "
                          "not apply", path=path,
                          fix="Only no normalizer or NFC convert; llama.cpp would tokenize differently from HF.")


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
