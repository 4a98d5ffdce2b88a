"""Bar, line and pie charts drawn from known data, with value labels so every answer is on the page."""

from __future__ import annotations

import math

from exaone_edge.documents.blocks import Built, Ctx
from exaone_edge.documents.model import QA

PALETTE = [(52, 101, 164), (204, 102, 51), (78, 154, 6), (117, 80, 123), (193, 125, 17), (32, 150, 160)]


def _series(ctx: Ctx) -> tuple[str, list[str], list[int]]:
    ko = ctx.lang.code == "ko"
    options = [
        ("연도별 매출 (억원)" if ko else "Revenue by year ($M)", [str(y) for y in range(2018, 2026)]),
        ("월별 신규 고객 수" if ko else "New customers per month",
         [f"{m}월" for m in range(1, 13)] if ko else ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                                                       "Oct", "Nov", "Dec"]),
        ("분기별 대출 건수" if ko else "Loans approved per quarter", ["Q1", "Q2", "Q3", "Q4"]),
    ]
    title, labels = ctx.rng.choice(options)
    count = min(len(labels), ctx.rng.randint(4, 8))
    start = ctx.rng.randint(0, len(labels) - count)
    labels = labels[start:start + count]
    values = [ctx.rng.randint(5, 999) for _ in labels]
    return title, labels, values


def _axes(ctx: Ctx, page, title: str) -> tuple[float, float, float, float]:
    page.text(page.width / 2, 55, title, ctx.bold, ctx.size * 1.5, align="center")
    left, top, right, bottom = 80.0, 100.0, page.width - 50, page.height - 90
    page.line(left, bottom, right, bottom, 0.8)
    page.line(left, top, left, bottom, 0.8)
    return left, top, right, bottom


def _value_questions(ctx: Ctx, title: str, labels: list[str], values: list[int]) -> list[QA]:
    ko = ctx.lang.code == "ko"
    index = ctx.rng.randrange(len(labels))
    peak = labels[values.index(max(values))]
    return [QA(f"차트에서 {labels[index]}의 값은 얼마입니까?" if ko else f"What is the value for {labels[index]} in the chart?",
               [str(values[index])], 0),
            QA("값이 가장 큰 항목은 무엇입니까?" if ko else "Which category has the highest value?", [peak], 0),
            QA("차트의 제목은 무엇입니까?" if ko else "What is the title of the chart?", [title], 0)]


def _chart(ctx: Ctx):
    """A series with one clear maximum, and its page with titled axes: (title, labels, values, page, box, color)."""
    title, labels, values = _series(ctx)
    # Ties would make "the highest" ambiguous; nudge the maximum up.
    values[values.index(max(values))] = max(values) + 1 if values.count(max(values)) > 1 else max(values)
    page = ctx.page(landscape=ctx.rng.random() < 0.6)
    box = _axes(ctx, page, title)
    return title, labels, values, page, box, ctx.rng.choice(PALETTE)


def bar_chart(ctx: Ctx) -> Built:
    title, labels, values, page, (left, top, right, bottom), color = _chart(ctx)
    slot = (right - left) / len(values)
    scale = (bottom - top - 30) / max(values)
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + slot * i + slot * 0.2
        height = value * scale
        page.rect(x, bottom - height, slot * 0.6, height, fill=color, stroke=None)
        page.text(x + slot * 0.3, bottom - height - 5, str(value), ctx.font, ctx.size * 0.9, align="center")
        page.text(x + slot * 0.3, bottom + ctx.size * 1.4, label, ctx.font, ctx.size * 0.9, align="center")
    return Built([page], _value_questions(ctx, title, labels, values))


def line_chart(ctx: Ctx) -> Built:
    title, labels, values, page, (left, top, right, bottom), color = _chart(ctx)
    step = (right - left - 40) / max(1, len(values) - 1)
    scale = (bottom - top - 40) / max(values)
    points = [(left + 20 + step * i, bottom - v * scale) for i, v in enumerate(values)]
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        page.line(x1, y1, x2, y2, 1.6, color)
    for (x, y), label, value in zip(points, labels, values):
        page.rect(x - 2.5, y - 2.5, 5, 5, fill=color, stroke=None)
        page.text(x, y - 8, str(value), ctx.font, ctx.size * 0.9, align="center")
        page.text(x, bottom + ctx.size * 1.4, label, ctx.font, ctx.size * 0.9, align="center")
    return Built([page], _value_questions(ctx, title, labels, values))


def pie_chart(ctx: Ctx) -> Built:
    ko = ctx.lang.code == "ko"
    names = ["예금", "대출", "카드", "보험", "투자", "기타"] if ko else ["Deposits", "Loans", "Cards", "Insurance",
                                                                   "Investments", "Other"]
    count = ctx.rng.randint(3, 6)
    names = names[:count]
    weights = [ctx.rng.randint(5, 40) for _ in names]
    shares = [round(100 * w / sum(weights)) for w in weights]
    shares[-1] = 100 - sum(shares[:-1])
    if shares[-1] <= 0 or len(set(shares)) < len(shares):
        shares = sorted(set(range(8, 8 + 7 * count, 7)))[:count]
        shares[-1] = 100 - sum(shares[:-1])
    title = "부문별 수익 비중" if ko else "Revenue share by segment"
    page = ctx.page(landscape=ctx.rng.random() < 0.5)
    page.text(page.width / 2, 55, title, ctx.bold, ctx.size * 1.5, align="center")
    cx, cy, radius = page.width * 0.38, page.height * 0.52, min(page.width, page.height) * 0.3
    angle = -90.0
    for i, (name, share) in enumerate(zip(names, shares)):
        sweep = 360.0 * share / 100
        steps = max(2, int(sweep / 4))
        arc = [(cx + radius * math.cos(math.radians(angle + sweep * k / steps)),
                cy + radius * math.sin(math.radians(angle + sweep * k / steps))) for k in range(steps + 1)]
        page.poly([(cx, cy), *arc], PALETTE[i % len(PALETTE)])
        legend_y = cy - radius + i * ctx.size * 2
        page.rect(page.width * 0.72, legend_y - ctx.size * 0.8, ctx.size, ctx.size, fill=PALETTE[i % len(PALETTE)], stroke=None)
        page.text(page.width * 0.72 + ctx.size * 1.6, legend_y, f"{name} {share}%", ctx.font, ctx.size)
        angle += sweep
    index = ctx.rng.randrange(count)
    peak = names[shares.index(max(shares))]
    qa = [QA(f"{names[index]}의 비중은 몇 퍼센트입니까?" if ko else f"What share does {names[index]} have?",
             [f"{shares[index]}%"], 0),
          QA("비중이 가장 큰 부문은 무엇입니까?" if ko else "Which segment has the largest share?", [peak], 0)]
    return Built([page], qa)
