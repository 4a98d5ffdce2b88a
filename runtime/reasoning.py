"""Reasoning apart from the answer: `<think>…</think>` output split into `reasoning` and `text`, as vLLM does.

EXAONE 4.5's generation prompt ends in `<think>\\n` when thinking is on, so the reply starts inside the
reasoning and `</think>` ends it (vLLM's `exaone4` / `deepseek_r1` parsers). With thinking off the prompt
already closed the block (`<think>\\n\\n</think>\\n\\n`) and everything is answer (vLLM's identity parser).
Handled on text deltas, so streamed and whole replies split the same way:
- a marker split across deltas (`</thi` + `nk>`) is held back until it is whole or proven not a marker;
- a `<think>` inside the reasoning (a model that re-emits the one the prompt opened) is dropped;
- no `</think>` before the end (cut by max_tokens, or the model stopped): all of it is reasoning;
- the blank line the model writes after `</think>` is not part of the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing, closing, nullcontext
from dataclasses import dataclass

from exaone_edge.runtime.generation import Chunk


@dataclass(frozen=True)
class Split:
    reasoning: str
    content: str


class ReasoningParser:
    """Feed text deltas in order; each call returns the reasoning and answer text that is settled so far."""

    def __init__(self, start: str = "<think>", end: str = "</think>", *, in_reasoning: bool = True) -> None:
        self.start, self.end = start, end
        self.in_reasoning = in_reasoning
        self._held = ""  # text that may still turn out to be (part of) a marker
        self._answer_started = not in_reasoning  # until then, leading whitespace of the answer is dropped

    def feed(self, delta: str) -> Split:
        self._held += delta
        reasoning, content = [], []
        while self._held:
            if self.in_reasoning:
                cut = self._held.find(self.end)
                if cut >= 0:
                    reasoning.append(self._held[:cut])
                    self._held = self._held[cut + len(self.end) :]
                    self.in_reasoning = False
                    continue
                keep = _partial_suffix(self._held, (self.end, self.start))
                reasoning.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep :]
                break
            if not self._answer_started:
                self._held = self._held.lstrip()
                if not self._held:
                    break
                self._answer_started = True
            content.append(self._held)
            self._held = ""
        return Split(self._drop_starts("".join(reasoning)), "".join(content))

    def finish(self) -> Split:
        """End of the reply: held text is what it looked like (reasoning when no `</think>` came)."""
        held, self._held = self._held, ""
        if self.in_reasoning:
            return Split(self._drop_starts(held), "")
        return Split("", held if self._answer_started else held.lstrip())

    def _drop_starts(self, text: str) -> str:
        return text.replace(self.start, "") if self.start else text


def _partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of one of the markers."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def split_text(text: str, *, in_reasoning: bool, start: str = "<think>", end: str = "</think>") -> Split:
    """A whole reply split as the stream would be."""
    parser = ReasoningParser(start, end, in_reasoning=in_reasoning)
    head, tail = parser.feed(text), parser.finish()
    return Split(head.reasoning + tail.reasoning, head.content + tail.content)


def parser_for(chat, template_kwargs) -> ReasoningParser | None:
    """A parser when the chat format has reasoning markers (`chat`: runtime.prompt.ChatFormat), else None."""
    if chat.reasoning_markers is None:
        return None
    start, end = chat.reasoning_markers
    return ReasoningParser(start, end, in_reasoning=chat.starts_in_reasoning(template_kwargs))


def split_chunk(chunk: Chunk, parser: ReasoningParser | None) -> Chunk:
    """The chunk with its text divided into `reasoning` and `text`; the final chunk also flushes the parser."""
    if parser is None:
        return chunk
    part = parser.feed(chunk.text)
    reasoning, content = part.reasoning, part.content
    if chunk.finish_reason is not None:
        rest = parser.finish()
        reasoning, content = reasoning + rest.reasoning, content + rest.content
    return dataclasses.replace(chunk, text=content, reasoning=reasoning)


def split_chunks(chunks: Iterable[Chunk], parser: ReasoningParser | None) -> Iterator[Chunk]:
    """`split_chunk` over a stream; closing this closes the engine's stream (so its slot is freed)."""
    iterator = iter(chunks)
    with closing(iterator) if hasattr(iterator, "close") else nullcontext():
        for chunk in iterator:
            yield split_chunk(chunk, parser)


async def split_chunks_async(chunks: AsyncIterator[Chunk], parser: ReasoningParser | None) -> AsyncIterator[Chunk]:
    async with aclosing(chunks):
        async for chunk in chunks:
            yield split_chunk(chunk, parser)

