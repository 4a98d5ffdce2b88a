"""A small byte-level BPE tokenizer with EXAONE 4.5's special-token layout, trained offline."""

from __future__ import annotations

from importlib import resources

# Ids match the published EXAONE 4.5 layout where it is known (pad 0, bos 1, end-of-turn 53,
# image 67, video 68, <vision> 73, </vision> 74); the rest are reserved fillers.
_KNOWN_SPECIALS = {
    0: "[PAD]",
    1: "[BOS]",
    2: "<|endoftext|>",
    3: "[UNK]",
    4: "[|system|]",
    5: "[|user|]",
    6: "[|assistant|]",
    7: "[|tool|]",
    8: "<think>",
    9: "</think>",
    53: "[|endofturn|]",
    67: "<|image_pad|>",
    68: "<|video_pad|>",
    73: "<vision>",
    74: "</vision>",
}
NUM_SPECIALS = 80


def special_tokens() -> list[str]:
    return [_KNOWN_SPECIALS.get(i, f"<|reserved_special_token_{i}|>") for i in range(NUM_SPECIALS)]


def corpus_lines() -> list[str]:
    text = resources.files("exaone_edge").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def chat_template() -> str:
    return resources.files("exaone_edge").joinpath("data/chat_template.jinja").read_text(encoding="utf-8")


def train_tokenizer(vocab_size: int):
    """Train the BPE; deterministic because the corpus and the trainer are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # GPT-2 splitting: llama.cpp maps EXAONE 4's pre-tokenizer to the same regex.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    return tokenizer
