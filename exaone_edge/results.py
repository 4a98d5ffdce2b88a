"""What every command returns: a result that is data (`to_dict`, for `--json`) and a human summary (`summary`).
The CLI only prints one or the other."""

from __future__ import annotations

from typing import Any, Protocol


class Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...
