"""Progress and log lines go to stderr so stdout stays clean for results (and --json)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

stderr = Console(stderr=True, highlight=False)


def log(message: str) -> None:
    stderr.print(message, markup=False)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr (plain lines when stderr is not a terminal)."""
    if not stderr.is_terminal:
        items = list(items) if total is None else items
        total = len(items) if total is None else total  # type: ignore[arg-type]
        for index, item in enumerate(items, 1):
            yield item
            if index == total or index % max(1, total // 10) == 0:
                log(f"{description}: {index}/{total}")
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=False) as progress:
        yield from progress.track(items, total=total, description=description)


def stdout_to_stderr() -> contextlib.AbstractContextManager:
    """For libraries that log to stdout (GPTQModel): their lines must not corrupt `--json` results."""
    return contextlib.redirect_stdout(sys.stderr)
