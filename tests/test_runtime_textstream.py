"""Streaming text: whole characters only, stop strings never leak, the vision-row cache stays bounded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exaone_edge.errors import InputError
from exaone_edge.runtime.generation import GenerationParams
from exaone_edge.runtime.textstream import Detokenizer, StopScanner
from exaone_edge.runtime.vision_cache import VisionCache, image_key


def _byte_tokens(text: str) -> tuple[list[int], dict[int, bytes]]:
    """One token per UTF-8 byte, so multi-byte characters span several tokens."""
    data = text.encode("utf-8")
    return list(range(len(data))), {i: bytes([b]) for i, b in enumerate(data)}


def test_detokenizer_never_splits_characters():
    text = "합계 ₩1,200 — total"
    ids, table = _byte_tokens(text)
    detokenizer = Detokenizer(lambda seq: b"".join(table[i] for i in seq).decode("utf-8", errors="replace"))
    deltas = [detokenizer.add(token) for token in ids] + [detokenizer.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)


def _scan(stops, pieces):
    scanner = StopScanner(stops)
    shown = [scanner.feed(piece) for piece in pieces]
    return "".join(shown) + scanner.finish(), scanner.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "expected", "stopped"),
    [
        ((), ["a", "b"], "ab", False),
        (("END",), ["The total", " is 5E", "N", "D and more"], "The total is 5", True),
        (("END",), ["ends with E", "N"], "ends with EN", False),  # a held-back prefix is released at the end
        (("\n\n", "Q:"), ["line\n", "\nQ: next"], "line", True),
        (("xyz", "y"), ["ax", "yz"], "a", True),  # the stop that starts first wins
    ],
)
def test_stop_strings(stops, pieces, expected, stopped):
    assert _scan(stops, pieces) == (expected, stopped)


def test_stop_scanner_holds_back_possible_prefixes():
    scanner = StopScanner(["</answer>"])
    assert scanner.feed("42</ans") == "42"
    assert scanner.feed("wer>tail") == ""
    assert scanner.stopped


def test_generation_params_are_checked():
    GenerationParams(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=1, stop=("END",))
    for bad in ({"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"stop": ("",)}):
        with pytest.raises(InputError):
            GenerationParams(**bad)


def test_vision_cache_is_a_bounded_lru():
    cache = VisionCache(max_entries=2, max_bytes=10_000)
    rows = {name: np.full((4, 8), i, dtype=np.float32) for i, name in enumerate("abc")}
    cache.put("a", rows["a"])
    cache.put("b", rows["b"])
    assert cache.get("a") is rows["a"]  # a is now the most recent
    cache.put("c", rows["c"])
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.nbytes == 2 * rows["a"].nbytes
    cache.put("big", np.zeros((100, 100), dtype=np.float32))  # larger than the whole budget: not kept
    assert cache.get("big") is None and len(cache) == 2
    small = VisionCache(max_entries=10, max_bytes=300)
    for name in "abc":
        small.put(name, np.zeros((4, 8), dtype=np.float32))  # 128 bytes each
    assert len(small) == 2 and small.get("a") is None


def test_image_key_depends_on_pixels_and_preprocessing():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    assert image_key(red, "p1") == image_key(red.copy(), "p1")
    assert image_key(red, "p1") != image_key(red, "p2")
    assert image_key(red, "p1") != image_key(Image.new("RGB", (32, 32), (254, 0, 0)), "p1")
    assert image_key(red, "p1") != image_key(Image.new("RGB", (16, 64), (255, 0, 0)), "p1")
