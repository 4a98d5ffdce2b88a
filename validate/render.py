"""report.json → report.md and a self-contained report.html (inline SVG, no scripts, no network)."""

from __future__ import annotations

import html
import math
from typing import Any

from exaone_edge.plan import GPUS

_WIDTH, _HEIGHT, _PAD = 640, 320, 56


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _mib(count: int | None) -> str:
    return "–" if count is None else f"{count / 2**20:,.1f} MiB"


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for a in report["artifacts"]:
        decoder, task, vision, speed = (a.get(k) or {} for k in ("decoder", "task", "vision", "speed"))
        rows.append([
            a["name"], a["kind"], _mib(a.get("bytes")),
            _fmt(decoder.get("kl_mean")), _fmt(decoder.get("kl_p99")), _fmt(decoder.get("top1_agreement"), 3),
            _fmt(decoder.get("ppl_ratio")), _fmt(task.get("anls"), 3), _fmt(task.get("exact_match"), 3),
            _fmt(task.get("recovery"), 3), _fmt(task.get("flip_rate"), 3),
            _fmt(vision.get("cosine_min"), 6), _fmt(vision.get("max_abs")),
            _fmt(speed.get("ttft_s"), 3), _fmt(speed.get("decode_tokens_per_s"), 3), _mib(speed.get("peak_rss_bytes")),
        ])
    return rows


HEADER = ["artifact", "kind", "size", "KL mean", "KL p99", "top-1", "ppl ratio", "ANLS", "EM", "recovery",
          "flip rate", "vision cos min", "vision max abs", "TTFT s", "decode tok/s", "peak RSS"]


def render_markdown(report: dict[str, Any], regressions: list[str] | None = None) -> str:
    machine = report["machine"]
    lines = [
        "# EXAONE 4.5 accuracy-regression report", "",
        f"Reference: `{report['reference']['path']}` · eval set: `{report['eval_set']['path']}` "
        f"({report['eval_set']['documents']} documents, {report['eval_set']['questions']} questions, "
        f"sha256 {report['eval_set']['sha256'][:12]}) · toolkit {report['toolkit_version']} · {report['created_at']}",
        f"Machine: {machine.get('cpu')} · {machine.get('cores')} cores · {_mib(machine.get('memory_bytes'))} RAM · "
        f"{machine.get('platform')}",
        f"Reference task accuracy (transformers): ANLS {_fmt(report['reference_task'].get('anls'), 3)}, "
        f"exact match {_fmt(report['reference_task'].get('exact_match'), 3)}", "",
        "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    if regressions is not None:
        lines += ["", "## Regression gate", ""]
        lines += [f"- ✗ {item}" for item in regressions] or ["- ✓ nothing regressed beyond its threshold"]
    flips = [(a["name"], f) for a in report["artifacts"] for f in (a.get("task") or {}).get("flips", [])]
    if flips:
        lines += ["", "## Answers whose correctness changed", "", "| artifact | question | reference | artifact answer | change |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {f['question']} | {f['reference_answer']} | {f['answer']} | {f['change']} |"
                  for name, f in flips]
    return "\n".join(lines) + "\n"


def _svg_frame(title: str, body: str, x_label: str, y_label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" role="img">'
        f'<title>{html.escape(title)}</title><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{_WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>'
        f'<line x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - 16}" y2="{_HEIGHT - _PAD}" stroke="black"/>'
        f'<line x1="{_PAD}" y1="28" x2="{_PAD}" y2="{_HEIGHT - _PAD}" stroke="black"/>'
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 14}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="14" y="{_HEIGHT / 2}" transform="rotate(-90 14 {_HEIGHT / 2})" text-anchor="middle">'
        f'{html.escape(y_label)}</text>{body}</svg>'
    )


def accuracy_vs_memory_svg(report: dict[str, Any]) -> str:
    """ANLS against bytes on a log axis, with each target GPU's memory drawn as a vertical line."""
    points = [(a["bytes"], (a.get("task") or {}).get("anls"), a["name"]) for a in report["artifacts"]
              if a.get("bytes") and (a.get("task") or {}).get("anls") is not None]
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
    body += "".join(
        f'<circle cx="{x(b):.1f}" cy="{y(v):.1f}" r="4" fill="#236"/>'
        f'<text x="{x(b) + 6:.1f}" y="{y(v) - 6:.1f}" font-size="10">{html.escape(name)}</text>'
        for b, v, name in points
    )
    return _svg_frame("Task accuracy vs size (GPU memory limits dashed)", body, "bytes (log scale)", "ANLS")


def kl_bars_svg(report: dict[str, Any]) -> str:
    bars = [(a["name"], a["decoder"]["kl_mean"]) for a in report["artifacts"] if (a.get("decoder") or {}).get("kl_mean") is not None]
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


def render_html(report: dict[str, Any], regressions: list[str] | None = None) -> str:
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in _rows(report)
    )
    gate = ""
    if regressions is not None:
        items = "".join(f"<li class=bad>✗ {html.escape(r)}</li>" for r in regressions) or "<li>✓ nothing regressed</li>"
        gate = f"<h2>Regression gate</h2><ul>{items}</ul>"
    flips = "".join(
        f"<tr><td>{html.escape(a['name'])}</td><td>{html.escape(f['question'])}</td>"
        f"<td>{html.escape(f['reference_answer'])}</td><td>{html.escape(f['answer'])}</td><td>{html.escape(f['change'])}</td></tr>"
        for a in report["artifacts"] for f in (a.get("task") or {}).get("flips", [])
    )
    flips_html = (f"<h2>Answers whose correctness changed</h2><table><tr><th>artifact</th><th>question</th>"
                  f"<th>reference</th><th>artifact answer</th><th>change</th></tr>{flips}</table>") if flips else ""
    markdown_head = html.escape(render_markdown(report).split("\n\n| artifact")[0]).replace("\n", "<br>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>EXAONE 4.5 accuracy report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}.bad{color:#b00}svg{margin:1em 1em 0 0}"
        "</style></head><body>"
        f"<p>{markdown_head}</p>{gate}"
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in HEADER)}</tr>{table}</table>"
        f"<div>{accuracy_vs_memory_svg(report) if any((a.get('task') or {}).get('anls') is not None for a in report['artifacts']) else ''}"
        f"{kl_bars_svg(report)}</div>{flips_html}</body></html>\n"
    )
