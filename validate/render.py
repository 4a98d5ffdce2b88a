"""report.json → report.md and a self-contained report.html (inline SVG, no scripts, no network)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

from exaone_edge.memory import GPUS
from exaone_edge.validate.schema import ArtifactResult, Flip, Speed, ValidationReport

_WIDTH, _HEIGHT, _PAD = 640, 320, 56


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _mib(count: int | None) -> str:
    return "–" if count is None else f"{count / 2**20:,.1f} MiB"


def _speed(a: ArtifactResult) -> Speed | None:
    return a.speed if isinstance(a.speed, Speed) else None  # a failed probe shows as not measured


def _top1(a: ArtifactResult) -> str:
    if a.endpoint is not None:  # along its greedy answers, not teacher-forced: marked, and explained under the table
        return f"{_fmt(a.endpoint.top1_agreement, 3)} †"
    return _fmt(a.decoder and a.decoder.top1_agreement, 3)


def endpoint_note(report: ValidationReport) -> str:
    if not any(a.kind == "endpoint" for a in report.artifacts):
        return ""
    return ("† endpoint (OpenAI-compatible server): top-1 from its top_logprobs along its own greedy answers while they "
            "continue the reference's, not teacher-forced; TTFT and tokens/s over its answers, measured by this client; "
            "its memory is the server's.")


# The summary table, one column each; a part an artifact does not have reads as None and shows as "–".
COLUMNS: tuple[tuple[str, Callable[[ArtifactResult], str]], ...] = (
    ("artifact", lambda a: a.name),
    ("kind", lambda a: a.kind),
    ("size", lambda a: _mib(a.bytes)),
    ("KL mean", lambda a: _fmt(a.decoder and a.decoder.kl_mean)),
    ("KL p99", lambda a: _fmt(a.decoder and a.decoder.kl_p99)),
    ("top-1", lambda a: _top1(a)),
    ("ppl ratio", lambda a: _fmt(a.decoder and a.decoder.ppl_ratio)),
    ("ANLS", lambda a: _fmt(a.task and a.task.anls, 3)),
    ("EM", lambda a: _fmt(a.task and a.task.exact_match, 3)),
    ("recovery", lambda a: _fmt(a.task and a.task.recovery, 3)),
    ("flip rate", lambda a: _fmt(a.task and a.task.flip_rate, 3)),
    ("vision cos min", lambda a: _fmt(a.vision and a.vision.cosine_min, 6)),
    ("vision max abs", lambda a: _fmt(a.vision and a.vision.max_abs)),
    ("TTFT s", lambda a: _fmt(_speed(a) and _speed(a).ttft_s, 3)),
    ("decode tok/s", lambda a: _fmt(_speed(a) and _speed(a).decode_tokens_per_s, 3)),
    ("peak RSS", lambda a: _mib(_speed(a) and _speed(a).peak_rss_bytes)),
)
HEADER = [name for name, _ in COLUMNS]


def _rows(report: ValidationReport) -> list[list[str]]:
    return [[cell(a) for _, cell in COLUMNS] for a in report.artifacts]


def _flips(report: ValidationReport) -> list[tuple[str, Flip]]:
    return [(a.name, flip) for a in report.artifacts if a.task for flip in a.task.flips]


def render_markdown(report: ValidationReport, regressions: list[str] | None = None) -> str:
    machine, eval_set = report.machine, report.eval_set
    lines = [
        "# EXAONE 4.5 accuracy-regression report", "",
        f"Reference: `{report.reference.path}` · eval set: `{eval_set.path}` "
        f"({eval_set.documents} documents, {eval_set.questions} questions, "
        f"sha256 {eval_set.sha256[:12]}) · toolkit {report.toolkit_version} · {report.created_at}",
        # the machine description's older keys (cores, platform) too: old reports render as well
        f"Machine: {machine.get('cpu')} · {machine.get('usable_cpus', machine.get('cores'))} cores · "
        f"{_mib(machine.get('memory_bytes'))} RAM · {machine.get('os', machine.get('platform'))}",
        f"Reference task accuracy (transformers): ANLS {_fmt(report.reference_task.anls, 3)}, "
        f"exact match {_fmt(report.reference_task.exact_match, 3)}", "",
        "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    if endpoint_note(report):
        lines += ["", endpoint_note(report)]
    if regressions is not None:
        lines += ["", "## Regression gate", ""]
        lines += [f"- ✗ {item}" for item in regressions] or ["- ✓ nothing regressed beyond its threshold"]
    flips = _flips(report)
    if flips:
        lines += ["", "## Answers whose correctness changed", "", "| artifact | question | reference | artifact answer | change |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {f.question} | {f.reference_answer} | {f.answer} | {f.change} |" for name, f in flips]
    return "\n".join(lines) + "\n"


def _svg(title: str, body: str, width: int = _WIDTH, height: int = _HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f'<title>{html.escape(title)}</title><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>{body}</svg>'
    )


def _svg_frame(title: str, body: str, x_label: str, y_label: str) -> str:
    """A plot: title, both axes and their labels around `body`."""
    return _svg(title, (
        f'<line x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - 16}" y2="{_HEIGHT - _PAD}" stroke="black"/>'
        f'<line x1="{_PAD}" y1="28" x2="{_PAD}" y2="{_HEIGHT - _PAD}" stroke="black"/>'
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 14}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{_HEIGHT / 2}" transform="rotate(-90 14 {_HEIGHT / 2})" text-anchor="middle">'
        f'{html.escape(y_label)}</text>{body}'
    ))


def _accuracy_points(report: ValidationReport) -> list[tuple[int, float, str]]:
    return [(a.bytes, a.task.anls, a.name) for a in report.artifacts if a.bytes and a.task and a.task.anls is not None]


def accuracy_vs_memory_svg(report: ValidationReport) -> str:
    """ANLS against bytes on a log axis, with each target GPU's memory drawn as a vertical line."""
    points = _accuracy_points(report)
    limits = [(gpu.memory_bytes, name) for name, gpu in GPUS.items()]
    xs = [p[0] for p in points] + [b for b, _ in limits]
    low, high = math.log10(min(xs) / 2), math.log10(max(xs) * 2)
    x = lambda b: _PAD + (math.log10(b) - low) / (high - low) * (_WIDTH - _PAD - 24)  # noqa: E731
    y = lambda v: _HEIGHT - _PAD - v * (_HEIGHT - _PAD - 36)  # noqa: E731
    body = "".join(
        f'<line x1="{x(b):.1f}" y1="28" x2="{x(b):.1f}" y2="{_HEIGHT - _PAD}" stroke="#c33" stroke-dasharray="4 3"/>'
        f'<text x="{x(b) - 3:.1f}" y="{40 + 12 * i}" text-anchor="end" font-size="10" fill="#c33">{name}</text>'
        for i, (b, name) in enumerate(limits)
    )
    body += "".join(  # labels stacked upwards in size order: close points must not print over each other
        f'<circle cx="{x(b):.1f}" cy="{y(v):.1f}" r="4" fill="#236"/>'
        f'<line x1="{x(b):.1f}" y1="{y(v) - 4:.1f}" x2="{x(b) + 6:.1f}" y2="{y(v) - 12 - 12 * i:.1f}" stroke="#999"/>'
        f'<text x="{x(b) + 8:.1f}" y="{y(v) - 10 - 12 * i:.1f}" font-size="10">{html.escape(name)}</text>'
        for i, (b, v, name) in enumerate(sorted(points))
    )
    return _svg_frame("Task accuracy vs size (GPU memory limits dashed)", body, "bytes (log scale)", "ANLS")


def kl_bars_svg(report: ValidationReport) -> str:
    bars = [(a.name, a.decoder.kl_mean) for a in report.artifacts if a.decoder and a.decoder.kl_mean is not None]
    if not bars:
        return ""
    top = max(v for _, v in bars) or 1.0
    width = (_WIDTH - _PAD - 24) / len(bars)
    body = ""
    for i, (name, value) in enumerate(bars):
        height = value / top * (_HEIGHT - _PAD - 40)
        left = _PAD + i * width + width * 0.15
        body += (f'<rect x="{left:.1f}" y="{_HEIGHT - _PAD - height:.1f}" width="{width * 0.7:.1f}" '
                 f'height="{height:.1f}" fill="#369"/>'
                 f'<text x="{left + width * 0.35:.1f}" y="{_HEIGHT - _PAD + 14}" text-anchor="middle" font-size="10">'
                 f'{html.escape(name)}</text>'
                 f'<text x="{left + width * 0.35:.1f}" y="{_HEIGHT - _PAD - height - 4:.1f}" text-anchor="middle" '
                 f'font-size="10">{value:.3g}</text>')
    return _svg_frame("Mean KL divergence vs the reference, per artifact", body, "artifact", "KL (nats)")


_OUTCOME_COLOURS = {(True, True): ("#4a4", "correct, as the reference"), (True, False): ("#c33", "lost: reference correct"),
                    (False, True): ("#36c", "gained: reference wrong"), (False, False): ("#ddd", "wrong, as the reference")}


def answers_grid_svg(report: ValidationReport) -> str:
    """Where answers flipped: one row per artifact, one cell per question, coloured by the change in
    correctness against the reference; a black dot where the answer's text differs from the reference's."""
    rows = [(a.name, a.task.per_question) for a in report.artifacts if a.task and a.task.per_question]
    if not rows:
        return ""
    questions = max(len(cells) for _, cells in rows)
    left, top, legend = 130, 40, 22
    cell = max(6.0, min(24.0, (_WIDTH - left - 16) / questions))
    height = int(top + cell * len(rows) + 30 + legend * 2)
    body = ""
    for r, (name, cells) in enumerate(rows):
        y = top + r * cell
        body += f'<text x="{left - 6}" y="{y + cell * 0.7:.1f}" text-anchor="end" font-size="11">{html.escape(name)}</text>'
        for q, outcome in enumerate(cells):
            colour, _ = _OUTCOME_COLOURS[(outcome.reference_correct, outcome.correct)]
            x = left + q * cell
            body += f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell - 1:.1f}" height="{cell - 1:.1f}" fill="{colour}"/>'
            if not outcome.same_answer:
                body += f'<circle cx="{x + cell / 2 - 0.5:.1f}" cy="{y + cell / 2 - 0.5:.1f}" r="{cell / 6:.1f}" fill="black"/>'
    y = top + cell * len(rows) + 16
    body += f'<text x="{left}" y="{y:.1f}" font-size="10">questions 1–{questions} →</text>'
    for i, (colour, label) in enumerate([*(v for v in _OUTCOME_COLOURS.values()), ("black", "answer differs from the reference's")]):
        x, ly = left + (i % 3) * 170, y + 14 + (i // 3) * legend
        shape = (f'<circle cx="{x + 5}" cy="{ly - 4}" r="4" fill="{colour}"/>' if colour == "black"
                 else f'<rect x="{x}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        body += f'{shape}<text x="{x + 14}" y="{ly:.1f}" font-size="10">{html.escape(label)}</text>'
    return _svg("Where answers flipped", body, height=height)


def render_html(report: ValidationReport, regressions: list[str] | None = None) -> str:
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in _rows(report)
    )
    gate = ""
    if regressions is not None:
        items = "".join(f"<li class=bad>✗ {html.escape(r)}</li>" for r in regressions) or "<li>✓ nothing regressed</li>"
        gate = f"<h2>Regression gate</h2><ul>{items}</ul>"
    flips = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(f.question)}</td><td>{html.escape(f.reference_answer)}</td>"
        f"<td>{html.escape(f.answer)}</td><td>{html.escape(f.change)}</td></tr>"
        for name, f in _flips(report)
    )
    flips_html = (f"<h2>Answers whose correctness changed</h2><table><tr><th>artifact</th><th>question</th>"
                  f"<th>reference</th><th>artifact answer</th><th>change</th></tr>{flips}</table>") if flips else ""
    head_lines = render_markdown(report).split("\n\n| artifact")[0].split("\n")[2:]  # below the title
    head = "<br>".join(html.escape(line.replace("`", "")) for line in head_lines if line)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>EXAONE 4.5 accuracy report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}.bad{color:#b00}svg{margin:1em 1em 0 0}"
        "</style></head><body>"
        f"<h1>EXAONE 4.5 accuracy-regression report</h1><p>{head}</p>{gate}"
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in HEADER)}</tr>{table}</table>"
        + (f"<p>{html.escape(endpoint_note(report))}</p>" if endpoint_note(report) else "") +
        f"<div>{accuracy_vs_memory_svg(report) if any(a.task and a.task.anls is not None for a in report.artifacts) else ''}"
        f"{kl_bars_svg(report)}{answers_grid_svg(report)}</div>{flips_html}</body></html>\n"
    )
