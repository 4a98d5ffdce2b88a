"""Pages as a list of drawing operations in points, rendered to a raster (with scan-like noise) or a PDF."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from exaone_edge.documents.fonts import font_index, truetype

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
A4 = (595.0, 842.0)  # points


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    font: str  # font file name, resolved through fonts.font_index()
    size: float
    color: Color = BLACK


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    width: float = 0.6
    color: Color = BLACK


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: Color | None = None
    stroke: Color | None = BLACK
    width: float = 0.6


@dataclass(frozen=True)
class Poly:
    points: tuple[tuple[float, float], ...]
    fill: Color


Op = Text | Line | Rect | Poly


@dataclass(frozen=True)
class Scan:
    """How the page is 'scanned': resolution, skew, blur, noise, paper tone."""

    dpi: int = 120
    rotation: float = 0.0  # degrees
    blur: float = 0.0
    noise: float = 0.0  # std of Gaussian pixel noise (0–255 scale)
    speckles: int = 0
    paper: Color = (255, 255, 255)
    seed: int = 0


@dataclass
class Canvas:
    width: float
    height: float
    ops: list[Op] = field(default_factory=list)

    def text(self, x: float, y: float, text: str, font: str, size: float, align: str = "left",
             color: Color = BLACK) -> tuple[float, float, float, float]:
        """Draw text with its baseline at y; returns its box (x0, top, x1, bottom) in points."""
        width = measure(text, font, size)
        x0 = {"left": x, "right": x - width, "center": x - width / 2}[align]
        self.ops.append(Text(round(x0, 2), round(y, 2), text, font, size, color))
        return (x0, y - size * 0.8, x0 + width, y + size * 0.25)

    def line(self, x1: float, y1: float, x2: float, y2: float, width: float = 0.6, color: Color = BLACK) -> None:
        self.ops.append(Line(x1, y1, x2, y2, width, color))

    def rect(self, x: float, y: float, w: float, h: float, fill: Color | None = None,
             stroke: Color | None = BLACK, width: float = 0.6) -> None:
        self.ops.append(Rect(x, y, w, h, fill, stroke, width))

    def poly(self, points: list[tuple[float, float]], fill: Color) -> None:
        self.ops.append(Poly(tuple((round(x, 2), round(y, 2)) for x, y in points), fill))


def measure(text: str, font: str, size: float) -> float:
    return truetype(font_index()[font], 200).getlength(text) * size / 200


def page_text(ops: list[Op]) -> str:
    """The page's text in reading order: lines by baseline, words left to right."""
    texts = sorted((op for op in ops if isinstance(op, Text)), key=lambda t: (t.y, t.x))
    lines: list[list[Text]] = []
    for item in texts:
        if lines and abs(lines[-1][0].y - item.y) <= 2.0:
            lines[-1].append(item)
        else:
            lines.append([item])
    return "\n".join("  ".join(t.text for t in sorted(line, key=lambda t: t.x)) for line in lines)


def rasterize(canvas: Canvas, scan: Scan) -> Image.Image:
    scale = scan.dpi / 72.0
    size = (round(canvas.width * scale), round(canvas.height * scale))
    image = Image.new("RGB", size, scan.paper)
    draw = ImageDraw.Draw(image)
    fonts = font_index()
    for op in canvas.ops:
        if isinstance(op, Text):
            font = truetype(fonts[op.font], max(5, round(op.size * scale)))
            draw.text((op.x * scale, op.y * scale), op.text, font=font, fill=op.color, anchor="ls")
        elif isinstance(op, Line):
            draw.line([(op.x1 * scale, op.y1 * scale), (op.x2 * scale, op.y2 * scale)], fill=op.color,
                      width=max(1, round(op.width * scale)))
        elif isinstance(op, Rect):
            box = [op.x * scale, op.y * scale, (op.x + op.w) * scale, (op.y + op.h) * scale]
            draw.rectangle(box, fill=op.fill, outline=op.stroke, width=max(1, round(op.width * scale)) if op.stroke else 0)
        else:
            draw.polygon([(x * scale, y * scale) for x, y in op.points], fill=op.fill)
    return _scan_effects(image, scan)


def _scan_effects(image: Image.Image, scan: Scan) -> Image.Image:
    if scan.rotation:
        image = image.rotate(scan.rotation, resample=Image.Resampling.BILINEAR, fillcolor=scan.paper)
    if scan.blur:
        image = image.filter(ImageFilter.GaussianBlur(scan.blur))
    if scan.noise or scan.speckles:
        rng = np.random.default_rng(scan.seed)
        pixels = np.asarray(image, dtype=np.float32)
        if scan.noise:
            pixels = pixels + rng.normal(0.0, scan.noise, pixels.shape[:2])[..., None]
        if scan.speckles:
            ys = rng.integers(0, pixels.shape[0], scan.speckles)
            xs = rng.integers(0, pixels.shape[1], scan.speckles)
            pixels[ys, xs] = rng.integers(40, 140, (scan.speckles, 1))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


def write_pdf(pages: list[Canvas], path: Path) -> None:
    """A PDF with a real text layer (fonts embedded), laid out exactly like the raster pages."""
    import logging

    from exaone_edge.errors import require

    require("fpdf", "docs")
    from fpdf import FPDF

    logging.getLogger("fontTools.subset").setLevel(logging.ERROR)  # one line per dropped font table otherwise
    pdf = FPDF(unit="pt", format=(pages[0].width, pages[0].height))
    pdf.set_creation_date(datetime(2000, 1, 1, tzinfo=timezone.utc))  # fixed: the same pages give the same bytes
    pdf.set_auto_page_break(False)
    fonts = font_index()
    added: set[str] = set()
    for canvas in pages:
        pdf.add_page(format=(canvas.width, canvas.height))
        for op in canvas.ops:
            if isinstance(op, Text):
                family = Path(op.font).stem
                if family not in added:
                    pdf.add_font(family, fname=str(fonts[op.font]))
                    added.add(family)
                pdf.set_font(family, size=op.size)
                pdf.set_text_color(*op.color)
                pdf.text(op.x, op.y, op.text)
            elif isinstance(op, Line):
                pdf.set_draw_color(*op.color)
                pdf.set_line_width(op.width)
                pdf.line(op.x1, op.y1, op.x2, op.y2)
            elif isinstance(op, Rect):
                if op.fill:
                    pdf.set_fill_color(*op.fill)
                if op.stroke:
                    pdf.set_draw_color(*op.stroke)
                    pdf.set_line_width(op.width)
                style = ("F" if op.fill else "") + ("D" if op.stroke else "")
                if style:
                    pdf.rect(op.x, op.y, op.w, op.h, style="DF" if style == "FD" else style)
            else:
                pdf.set_fill_color(*op.fill)
                pdf.polygon(list(op.points), style="F")
    pdf.output(str(path))
