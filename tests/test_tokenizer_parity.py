"""llama.cpp tokenizes like HF, token for token, for both EXAONE pre-tokenizers.

Each tiny tokenizer (exaone_edge.fixtures.tiny_tokenizer) is saved as tokenizer.json, turned into a GGUF vocabulary by
our converter's own code (quantize/gguf_vocab.py) and loaded vocab-only by llama-cpp-python 0.3.36. HF's side
is the `tokenizers` library reading the same tokenizer.json. Special-token parsing off in llama.cpp is compared
with HF's split_special_tokens (tokenizers' `encode_special_tokens`).

Known llama.cpp differences, kept visible here rather than hidden:
- `llama_detokenize` cleans spaces before , . ? ! and in contractions for these pre-tokenizers (clean_spaces
  is on for every BPE vocabulary without an override in src/llama-vocab.cpp); HF's decode with
  clean_up_tokenization_spaces=False does not. Token pieces joined are identical.
- llama.cpp applies no normalizer: with an NFC tokenizer.json, text that is not already NFC tokenizes
  differently unless the caller normalizes it first.
- exaone-moe's split runs through std::regex (no hand-written splitter in llama.cpp), which recurses per
  character of a letters-and-spaces run: a run with no digit, punctuation or newline overflows an 8 MiB stack
  and crashes the process (measured: "word " × 5,000 = 25,000 characters passes, 30,000 crashes; "가나 " ×
  10,000 = 30,000 passes, 39,000 crashes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

VARIANTS = {  # name → (pre_tokenizer, normalizer)
    "exaone4": ("exaone4", None),
    "exaone-moe": ("exaone-moe", None),
    "exaone-moe-nfc": ("exaone-moe", "NFC"),
}
CORPUS = {
    "korean-spaced": "대한민국 헌법 제1조 ① 대한민국은 민주공화국이다. 계약 기간은 2년입니다.",
    "korean-unspaced": "띄어쓰기없이쓴문장도토큰이되어야합니다그리고합계금액은일백만원입니다",
    "numbers": "1,250,000 / 3.14 / 2026-03-31 / -42 / 1e-5 / 0.5% / 12345678901234567890",
    "currency": "₩1,250,000 = $912.40 = €843.10 = ¥137,500 (£5, ₹10, 1,823,250원)",
    "english": "The total due is 18,232.50 USD. The quick brown fox jumps over the lazy dog; revenue grew 12.5%.",
    "spaces": "a  b   c    d     e\u3000전각\u00a0nbsp\u2009thin   trailing   ",
    "newlines": "line one\n\nline two\n\n\n\n  indented\r\nwindows\n \n\t\n",
    "tabs": "Widget\t\t3\t1,200\n| 항목 | 수량 |\n|---|---:|\n\tindented\t \ttabs",
    "punctuation": "Hello, world! (a) [b] {c}; d: e... f? g! — “q” ‘s’ 「계약」 《표》 ～ · a/b/c",
    "emoji": "승인 ✅ 배송 🚚 📄😀 👨\u200d👩\u200d👧 1\ufe0f\u20e3 🇰🇷 ❤️ zero\u200bwidth",
    "contractions": "I'VE don't we'll she's THEY'RE it'S 'quotes' \"double\"",
    "mixed": "mixed 한국어English123 and 한국어 English 123 문서QA",
    "chat": "<|system|>\n문서만 보고 답하세요.<|endofturn|>\n<|user|>\n<vision><|image_pad|><|image_pad|></vision>"
            "합계는?<|endofturn|>\n<|assistant|>\n<think>\n\n</think>\n\n합계는 1,823,250원입니다.<|endofturn|>",
    "special-glued": "x<|endofturn|>y[BOS][PAD][UNK]<|reserved_special_token_7|>z<tool_call>{}</tool_call>",
    "special-partial": "<|user|<think </vision <|image_pad| [BOS <|endofturn",
    "combining": "Ünïcödé café naïve e\u0301 한\u1100\u1161",
    "empty": "",
    "only-space": " ",
    "only-newlines": "\n\n\n",
}


class VocabOnly:
    """llama.cpp's tokenizer over a GGUF vocabulary (no weights loaded), through the toolkit's binding."""

    def __init__(self, path: Path) -> None:
        from exaone_edge.llama import Model

        self._model = Model(path, vocab_only=True)

    def tokenize(self, text: str, parse_special: bool) -> list[int]:
        return self._model.tokenize(text, parse_special=parse_special)

    def pieces(self, ids: list[int], special: bool) -> str:
        return b"".join(self._model.piece(token, special=special) for token in ids).decode("utf-8")

    def detokenize(self, ids: list[int], remove_special: bool) -> str:
        return self._model.detokenize(ids, remove_special=remove_special)

    def close(self) -> None:
        self._model.close()


def build_variant(out: Path, pre_tokenizer: str, normalizer: str | None) -> Path:
    """tokenizer.json + tokenizer_config.json + a vocab-only GGUF written by quantize/gguf_vocab.py."""
    import gguf

    from exaone_edge.quantize.gguf_vocab import vocab_from_files, write_vocab
    from exaone_edge.fixtures.tiny_tokenizer import EOS, SPECIAL_ROLES, train_tokenizer

    out.mkdir(parents=True)
    tokenizer = train_tokenizer(2048, pre_tokenizer, normalizer)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(SPECIAL_ROLES), encoding="utf-8")
    vocab = vocab_from_files(out / "tokenizer.json", tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS), "")
    writer = gguf.GGUFWriter(str(out / "vocab.gguf"), "exaone4")
    # llama.cpp reads the architecture's hyper-parameters even for a vocab-only load
    for setter, value in ((writer.add_block_count, 1), (writer.add_context_length, 4096),
                          (writer.add_embedding_length, 256), (writer.add_feed_forward_length, 512),
                          (writer.add_head_count, 2), (writer.add_head_count_kv, 1),
                          (writer.add_layer_norm_rms_eps, 1e-5), (writer.add_vocab_size, len(vocab.tokens))):
        setter(value)
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    from tokenizers import Tokenizer

    built = {}
    for name, (pre, normalizer) in VARIANTS.items():
        directory = build_variant(tmp_path_factory.mktemp("tok") / name, pre, normalizer)
        built[name] = (directory, Tokenizer.from_file(str(directory / "tokenizer.json")), VocabOnly(directory / "vocab.gguf"))
    yield built
    for _, _, llama in built.values():
        llama.close()


def hf_ids(tokenizer, text: str, parse_special: bool) -> list[int]:
    tokenizer.encode_special_tokens = not parse_special  # what transformers' split_special_tokens sets
    try:
        return tokenizer.encode(text, add_special_tokens=False).ids
    finally:
        tokenizer.encode_special_tokens = False


@pytest.mark.parametrize("name", VARIANTS)
def test_pre_tokenizer_and_normalizer_are_read_from_tokenizer_json(variants, name):
    from gguf import GGUFReader

    from exaone_edge.quantize.gguf_vocab import vocab_from_files

    directory, tokenizer, _ = variants[name]
    pre, normalizer = VARIANTS[name]
    vocab = vocab_from_files(directory / "tokenizer.json", tokenizer.get_vocab_size(), 53, "")
    assert (vocab.pre, vocab.normalizer) == (pre, normalizer)
    fields = GGUFReader(directory / "vocab.gguf").fields
    field = fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == pre
    field = fields.get("exaone_edge.tokenizer.normalizer")
    assert (bytes(field.parts[field.data[0]]).decode() if field else None) == normalizer


@pytest.mark.parametrize("parse_special", [True, False], ids=["special-on", "special-off"])
@pytest.mark.parametrize("name", VARIANTS)
def test_llama_cpp_tokenizes_like_hf(variants, name, parse_special):
    _, tokenizer, llama = variants[name]
    wrong = {}
    for label, text in CORPUS.items():
        if VARIANTS[name][1] == "NFC":
            text = unicodedata.normalize("NFC", text)  # llama.cpp does not normalize: see the NFC test
        ours, expected = llama.tokenize(text, parse_special), hf_ids(tokenizer, text, parse_special)
        if ours != expected:
            wrong[label] = ([tokenizer.id_to_token(i) for i in ours], [tokenizer.id_to_token(i) for i in expected])
    assert not wrong, f"llama.cpp ≠ HF for {sorted(wrong)}: {next(iter(wrong.values()))}"


def test_the_corpus_exercises_what_it_claims(variants):
    """Guard against a parity test that passes for trivial reasons: multi-word tokens exist, specials split."""
    _, tokenizer, llama = variants["exaone-moe"]
    tokens = [tokenizer.id_to_token(i) for i in hf_ids(tokenizer, CORPUS["english"], True)]
    assert any("Ġ" in token.strip("Ġ") for token in tokens), tokens  # a SuperBPE-style token spans a space
    chat = CORPUS["chat"]
    assert llama.tokenize(chat, True).count(53) == 3 and 53 not in llama.tokenize(chat, False)
    gpt2 = variants["exaone4"][1]
    assert hf_ids(gpt2, CORPUS["english"], True) != hf_ids(tokenizer, CORPUS["english"], True)


def test_special_and_user_defined_tokens(variants):
    """Special added tokens are CONTROL (parsed only with special parsing on, as HF without
    split_special_tokens); `<think>` and tool-call markers are not special: always parsed, kept in text."""
    from transformers import PreTrainedTokenizerFast

    from exaone_edge.fixtures.tiny_tokenizer import SPECIAL_ROLES

    directory, tokenizer, llama = variants["exaone-moe"]
    for text, token_id in (("<|user|>", 51), ("<|endofturn|>", 53), ("<|image_pad|>", 67), ("[BOS]", 1)):
        assert llama.tokenize(text, True) == [token_id]
        assert len(llama.tokenize(text, False)) > 1
    for text, token_id in (("<think>", 54), ("</think>", 55)):
        assert llama.tokenize(text, True) == llama.tokenize(text, False) == [token_id]
    text = CORPUS["chat"]
    split = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), split_special_tokens=True,
                                    **SPECIAL_ROLES)
    assert split(text, add_special_tokens=False)["input_ids"] == llama.tokenize(text, False)
    ids = llama.tokenize(text, True)
    assert llama.pieces(ids, special=False) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "<think>" in tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_decoding_round_trip(variants, name):
    _, tokenizer, llama = variants[name]
    for label, text in CORPUS.items():
        text = unicodedata.normalize("NFC", text)
        ids = hf_ids(tokenizer, text, True)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, label
        assert llama.pieces(ids, special=True) == text, label
        assert llama.pieces(ids, special=False) == tokenizer.decode(ids, skip_special_tokens=True), label
        if not any(mark in text for mark in (" ,", " .", " ?", " !", " '")):
            assert llama.detokenize(ids, remove_special=False) == text, label


def test_llama_detokenize_cleans_spaces_that_hf_keeps(variants):
    _, tokenizer, llama = variants["exaone-moe"]
    text = "합계 , 금액 . 확인 ? 네 ! I 'm"
    ids = hf_ids(tokenizer, text, True)
    assert tokenizer.decode(ids) == llama.pieces(ids, special=True) == text
    assert llama.detokenize(ids, remove_special=False) == "합계, 금액. 확인? 네! I'm"


def test_nfc_tokenizer_needs_nfc_text_for_llama_cpp(variants):
    _, tokenizer, llama = variants["exaone-moe-nfc"]
    composed = "계약서 제3조에 따른 위약금은 얼마입니까? café"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert hf_ids(tokenizer, decomposed, True) == hf_ids(tokenizer, composed, True) == llama.tokenize(composed, True)
    assert llama.tokenize(decomposed, True) != hf_ids(tokenizer, decomposed, True)


def test_long_letter_runs(variants):
    _, tokenizer, llama = variants["exaone-moe"]
    text = "word " * 4000 + "끝 " * 3000  # two 20,000- and 6,000-character runs
    assert llama.tokenize(text, True) == hf_ids(tokenizer, text, True)


def test_a_very_long_letter_run_crashes_llama_cpp_exaone_moe(variants):
    """Upstream limit (std::regex recursion in llama.cpp's exaone-moe split), pinned under an 8 MiB stack so a
    fixed llama.cpp shows up here. Our runtime tokenizes with tokenizer.json, not with llama.cpp."""
    directory = variants["exaone-moe"][0]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, 8 << 20)); "
            "sys.path.insert(0, sys.argv[2]); from test_tokenizer_parity import VocabOnly; "
            "print(len(VocabOnly(sys.argv[1]).tokenize('word ' * 40000, True)))")
    result = subprocess.run([sys.executable, "-c", code, str(directory / "vocab.gguf"), str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode < 0, f"200,000-character run tokenized without crashing: {result.stdout.strip()}"


def test_unknown_layouts_are_refused_by_name():
    from exaone_edge.errors import CheckpointError
    from exaone_edge.quantize.gguf_vocab import normalizer_name, pre_tokenizer_name

    def split(regex, **extra):
        return {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": regex}, **extra},
                                                      {"type": "ByteLevel", "use_regex": False}]}

    with pytest.raises(CheckpointError, match=r"no name for: '\\\\p\{L\}\+\|\\\\d'.*SPLIT_NAMES"):
        pre_tokenizer_name(split(r"\p{L}+|\d"), Path("tokenizer.json"))
    with pytest.raises(CheckpointError, match="Metaspace"):
        pre_tokenizer_name({"type": "Metaspace"}, Path("tokenizer.json"))
    with pytest.raises(CheckpointError, match="prefix space"):
        pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": True}, Path("tokenizer.json"))
    with pytest.raises(CheckpointError, match="Digits"):
        pre_tokenizer_name({"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]},
                           Path("tokenizer.json"))
    assert normalizer_name(None, Path("t")) is None
    assert normalizer_name({"type": "Sequence", "normalizers": [{"type": "NFC"}]}, Path("t")) == "NFC"
    for kind in ("NFKC", "Lowercase"):
        with pytest.raises(CheckpointError, match=f"normalizes text with {kind}"):
            normalizer_name({"type": kind}, Path("tokenizer.json"))
