"""Typed errors the user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ExaoneEdgeError(Exception):
    """Something the user can fix: what went wrong, where, and what to do about it."""

    exit_code = 2

    def __init__(self, what: str, *, path: Path | str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        fix = f" {self.fix}" if self.fix else ""
        return f"{where}{self.what}.{fix}"


class CheckpointError(ExaoneEdgeError):
    """A Hugging Face checkpoint directory is missing, incomplete or not EXAONE 4.5."""


class ArtifactError(ExaoneEdgeError):
    """An artifact we wrote earlier is missing, altered or from an incompatible version."""


class InputError(ExaoneEdgeError):
    """A user-supplied file or option is unusable."""


class PromptTooLong(InputError):
    """The prompt (text tokens plus vision rows) does not fit the context window."""


class ImageRejected(InputError):
    """An image or PDF page is unreadable, too large, or otherwise unusable."""


class ValidationFailed(ExaoneEdgeError):
    """An artifact missed a tolerance against the reference implementation."""

    exit_code = 1


class MissingDependency(ExaoneEdgeError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str) -> None:
    """Fail with an install hint when an optional dependency is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependency(
            f"this command needs the Python package '{module}', which is not installed",
            fix=f"Install it with: pip install 'exaone-edge[{extra}]'",
        )
