"""What a document kind's builder gets (randomness, language, fonts) and returns; shared table drawing."""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass, field

from exaone_edge.documents.canvas import A4, Canvas, Color
from exaone_edge.documents.langs import Lang
from exaone_edge.documents.model import QA


@dataclass
class Ctx:
    rng: random.Random
    lang: Lang
    font: str
    bold: str
    size: float  # body text size in points

    def page(self, landscape: bool = False) -> Canvas:
        width, height = A4
        return Canvas(height, width) if landscape else Canvas(width, height)

    def date(self, years: tuple[int, int] = (2019, 2025), after: datetime.date | None = None,
             days: int = 30) -> tuple[str, datetime.date]:
        """A formatted date (ISO or spelled out), or one `days` after `after`."""
        if after is not None:
            value = after + datetime.timedelta(days=days)
        else:
            value = datetime.date(self.rng.randint(*years), self.rng.randint(1, 12), self.rng.randint(1, 28))
        return self.lang.date(value.year, value.month, value.day, self.rng.randint(0, 1)), value

    def accent(self) -> Color:
        return self.rng.choice([(31, 78, 121), (120, 40, 40), (40, 100, 60), (70, 70, 70), (90, 60, 130)])


@dataclass
class Built:
    pages: list[Canvas]
    qa: list[QA] = field(default_factory=list)


@dataclass(frozen=True)
class Cell:
    text: str
    span: int = 1  # columns this header cell covers


def draw_table(ctx: Ctx, canvas: Canvas, x: float, y: float, widths: list[float], header: list[list[Cell]],
               rows: list[list[str]], *, shade: Color | None = (230, 233, 240), first_left: bool = True,
               size: float | None = None) -> float:
    """Header rows (cells may span columns) above body rows; numbers right-aligned. Returns the bottom y."""
    size = size or ctx.size
    height = size * 1.9
    edges = [x]
    for width in widths:
        edges.append(edges[-1] + width)
    for header_row in header:
        column = 0
        for cell in header_row:
            x0, x1 = edges[column], edges[column + cell.span]
            canvas.rect(x0, y, x1 - x0, height, fill=shade, width=0.5)
            canvas.text((x0 + x1) / 2, y + height * 0.68, cell.text, ctx.bold, size, align="center")
            column += cell.span
        y += height
    for row in rows:
        for column, value in enumerate(row):
            x0, x1 = edges[column], edges[column + 1]
            canvas.rect(x0, y, x1 - x0, height, stroke=(120, 120, 120), width=0.4)
            if column == 0 and first_left:
                canvas.text(x0 + 4, y + height * 0.68, value, ctx.font, size)
            else:
                canvas.text(x1 - 4, y + height * 0.68, value, ctx.font, size, align="right")
        y += height
    return y
