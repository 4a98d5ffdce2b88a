"""Token ids → text deltas for streaming: whole UTF-8 characters only, and never part of a stop string."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class Detokenizer:
    """Incremental decoding that re-decodes only a short window (the approach of TGI and vLLM)."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids before it are already settled text
        self._read = 0  # ids up to here have been turned into text

    def add(self, token: int) -> str:
        self._ids.append(token)
        settled = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        # A trailing U+FFFD means the last token ended inside a multi-byte character: wait for the rest.
        if len(text) > len(settled) and not text.endswith("\ufffd"):
            delta = text[len(settled) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        settled = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(settled) :]


class StopScanner:
    """Holds back text that could be the start of a stop string; reports when one completes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self._text = ""
        self._sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add generated text; return what may be shown now (everything before a completed stop string)."""
        if self.stopped:
            return ""
        self._text += delta
        if not self.stops:
            return self._release(len(self._text))
        horizon = max(0, self._sent - max(len(stop) for stop in self.stops))
        hits = [i for i in (self._text.find(stop, horizon) for stop in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        return self._release(len(self._text) - self._partial_suffix())

    def finish(self) -> str:
        """End of generation: whatever was held back is plain text after all."""
        return "" if self.stopped else self._release(len(self._text))

    def _release(self, end: int) -> str:
        end = max(end, self._sent)
        out, self._sent = self._text[self._sent : end], end
        return out

    def _partial_suffix(self) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
