"""Interleaved repeats: noisy machines drift, so baseline and candidate alternate and medians compare."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], T]], repeats: int, warmup: bool = True) -> dict[str, list[T]]:
    """Call each function once per round, rounds in alternating order; warm-up results are dropped."""
    if warmup:
        for fn in runs.values():
            fn()
    results: dict[str, list[T]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            results[name].append(runs[name]())
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)
