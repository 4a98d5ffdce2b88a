"""System TrueType fonts for rendering pages; Korean pages need one that really has Hangul glyphs."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from exaone_edge.errors import ExaoneEdgeError

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_ENV = "EXAONE_EDGE_FONT_DIR"  # extra directory searched first


class FontMissing(ExaoneEdgeError):
    """No installed font can render a language's script."""


@functools.cache
def font_index() -> dict[str, Path]:
    """File name → path for every .ttf/.otf under the font directories (first one found wins)."""
    dirs = [os.environ[FONT_ENV]] if os.environ.get(FONT_ENV) else []
    found: dict[str, Path] = {}
    for directory in [*dirs, *FONT_DIRS]:
        root = Path(directory).expanduser()
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.suffix.lower() in (".ttf", ".otf"):
                    found.setdefault(path.name, path)
    return found


@functools.cache
def truetype(path: Path, size_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size_px)


def glyph_mask(path: Path, char: str, size_px: int = 32) -> np.ndarray:
    font = truetype(path, size_px)
    image = Image.new("L", (size_px * 2, size_px * 2), 0)
    ImageDraw.Draw(image).text((size_px // 2, size_px // 2), char, font=font, fill=255)
    return np.asarray(image)


@functools.cache
def covers(path: Path, sample: str) -> bool:
    """True when every character of `sample` has a real glyph (not the font's missing-glyph box)."""
    missing = glyph_mask(path, "\U0010fffd")  # a private-use code point: always the .notdef glyph
    masks = [glyph_mask(path, char) for char in sample]
    return all(mask.any() and not np.array_equal(mask, missing) for mask in masks)


def pick_fonts(names: tuple[str, ...], sample: str, lang: str, package: str) -> list[Path]:
    """The installed fonts among `names` that render `sample`; a clear error naming the package if none."""
    index = font_index()
    usable = [index[name] for name in names if name in index and covers(index[name], sample)]
    if not usable:
        raise FontMissing(
            f"no installed font renders {lang} text (looked for {', '.join(names)} under {', '.join(FONT_DIRS)})",
            fix=f"Install one: apt-get install {package} (or put .ttf files in ${FONT_ENV}).",
        )
    return usable
