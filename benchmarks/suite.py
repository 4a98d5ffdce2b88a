"""`exaone-edge bench`: every comparison of issue #9 on one bundle, as ratios measured in this run.

Each result is our figure, the baseline's, their ratio and the target it is checked against. The
transformers baselines need the checkpoint the bundle was made from (`--model-dir`); without it
only the llama.cpp, bandwidth and server comparisons run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from exaone_edge.engine_settings import EngineSettings
from exaone_edge.errors import InputError
from exaone_edge.progress import log

SECTIONS = ("decode", "draft", "vision", "first_token", "server", "conversion")
MB = 1 << 20


@dataclass(frozen=True)
class BenchOptions:
    model_dir: Path | None = None
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    repeats: int = 3
    prompt_tokens: int = 256
    decode_tokens: int = 32
    concurrency: int = 4
    parallel: int = 4
    page: Path | None = None
    sections: tuple[str, ...] = SECTIONS
    mtmd: bool = False
    engine: EngineSettings = EngineSettings()  # placement and page budget, as for run/serve

    def engine_flags(self) -> tuple[str, ...]:
        """The serve flags that make the server's engine this run's engine."""
        engine = self.engine
        layers = () if engine.n_gpu_layers is None else ("--gpu-layers", str(engine.n_gpu_layers))
        pages = () if engine.image_max_tokens is None else ("--image-max-tokens", str(engine.image_max_tokens))
        return ("--device", engine.device, "--vision-provider", engine.vision_provider, *layers, *pages)


@dataclass(frozen=True)
class Target:
    """What a ratio must reach: at least or at most a bound."""

    at_least: float | None = None
    at_most: float | None = None

    def met(self, ratio: float) -> bool:
        return (self.at_least is None or ratio >= self.at_least) and (self.at_most is None or ratio <= self.at_most)

    def describe(self) -> str:
        """'≥ 0.97', '≤ 0.2'."""
        return " ".join(f"{sign} {bound:g}" for bound, sign in ((self.at_least, "≥"), (self.at_most, "≤"))
                        if bound is not None)


def at_least(bound: float) -> Target:
    return Target(at_least=bound)


def at_most(bound: float) -> Target:
    return Target(at_most=bound)


@dataclass(frozen=True)
class Result:
    name: str
    ours: float
    baseline: float
    unit: str
    ratio: float
    target: Target | None  # None: reported only
    met: bool | None
    note: str = ""


def result(name: str, ours: float, baseline: float, unit: str, ratio: float, target: Target | None = None,
           note: str = "") -> Result:
    met = None if target is None else target.met(ratio)
    return Result(name, round(ours, 4), round(baseline, 4), unit, round(ratio, 4), target, met, note)


@dataclass(frozen=True)
class BenchReport:
    bundle: Path
    decoder_level: str
    options: BenchOptions
    machine: dict[str, Any]  # exaone_edge.machine.describe_machine()
    placement: dict[str, Any]  # where each part ran
    results: list[Result]
    drafting: Any = None  # benchmarks.drafting.DraftTimings: --draft mtp's costs and speed-up curve

    def summary(self) -> str:
        if self.drafting is None:
            return render_table(self)
        from exaone_edge.benchmarks.drafting import render

        return render_table(self) + "\n\n" + render(self.drafting)

    def to_dict(self) -> dict[str, Any]:
        """bench.json."""
        return {"bundle": str(self.bundle), "decoder_level": self.decoder_level,
                "model_dir": str(self.options.model_dir) if self.options.model_dir else None,
                "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.options).items()},
                "machine": self.machine, "placement": self.placement, "results": [asdict(r) for r in self.results],
                "drafting": self.drafting.to_dict() if self.drafting is not None else None}


def run_bench(bundle_dir: Path, options: BenchOptions) -> BenchReport:
    from exaone_edge.benchmarks.machine import read_bandwidth
    from exaone_edge.machine import describe_machine
    from exaone_edge.benchmarks.drafting import has_mtp_head
    from exaone_edge.bundle import load_bundle
    from exaone_edge.runtime.engine import Engine

    unknown = sorted(set(options.sections) - set(SECTIONS))
    if unknown:
        raise InputError(f"unknown bench section(s): {', '.join(unknown)}", fix=f"Choose from: {', '.join(SECTIONS)}.")
    needs_model = {"vision", "first_token", "conversion"} & set(options.sections)
    if needs_model and options.model_dir is None:
        raise InputError(f"sections {', '.join(sorted(needs_model))} compare against transformers and need the checkpoint",
                         fix="Pass --model-dir CHECKPOINT (the one the bundle was made from), or --only decode,server.")
    bundle = load_bundle(bundle_dir)
    level = bundle.details.decoder.level
    results: list[Result] = []
    drafting = None
    engine = Engine(bundle, replace(options.engine, n_threads=options.threads, flash_attn=False, verify=False))
    n_ctx, placement = engine.n_ctx, engine.placement.as_dict()
    model = _transformers_model(options) if options.model_dir and {"decode", "vision", "first_token"} & set(options.sections) else None
    try:
        if "decode" in options.sections:
            log("bench: decode and prefill (ours vs llama-cpp-python, transformers), read bandwidth")
            results += _decode(engine, bundle, model, options, read_bandwidth(options.threads), level)
        if "draft" in options.sections and has_mtp_head(bundle.decoder_path):
            log("bench: MTP drafting: one-token step, (k+1)-token verify, k-token draft")
            drafting = _draft(engine, bundle, options)
        if "vision" in options.sections and bundle.has_vision:
            log("bench: vision encoder (ONNX Runtime vs PyTorch SDPA)")
            results += _vision(engine, model, bundle, options)
        if "first_token" in options.sections and bundle.has_vision:
            log("bench: page + question time to first token (ours vs transformers generate)")
            results += _first_token(engine, model, options)
    finally:
        engine.close()
    del model  # the server runs in its own process: give it the memory the torch model held
    if "server" in options.sections:
        log(f"bench: server, {options.concurrency} concurrent requests vs one")
        results += _server(bundle_dir, n_ctx, options)
    if "conversion" in options.sections:
        log("bench: checkpoint → GGUF conversion vs a plain copy")
        results += _conversion(options)
    return BenchReport(Path(bundle_dir), level, options, describe_machine(), placement, results, drafting)


def _transformers_model(options: BenchOptions):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    torch.set_num_threads(options.threads)
    return Exaone4_5_ForConditionalGeneration.from_pretrained(options.model_dir, dtype=torch.bfloat16).eval()


def _decode(engine, bundle, model, options: BenchOptions, bandwidth: float, level: str) -> list[Result]:
    from exaone_edge.benchmarks.decode import (
        compare_with_llama_cpp, decode_bytes_per_token, document_messages, transformers_speed)

    speeds = compare_with_llama_cpp(engine, bundle.decoder_path, prompt_tokens=options.prompt_tokens,
                                    decode_tokens=options.decode_tokens, threads=options.threads,
                                    repeats=options.repeats)
    ours, plain = speeds["ours"], speeds["llama_cpp_python"]
    per_token = decode_bytes_per_token(bundle.decoder_path)
    out = [
        result("decode: ours ÷ llama-cpp-python", ours.decode_tokens_per_s, plain.decode_tokens_per_s, "tok/s",
               ours.decode_tokens_per_s / plain.decode_tokens_per_s, at_least(0.97)),
        result("prefill: ours ÷ llama-cpp-python", ours.prefill_tokens_per_s, plain.prefill_tokens_per_s, "tok/s",
               ours.prefill_tokens_per_s / plain.prefill_tokens_per_s, at_least(0.97)),
        result(f"decode × {per_token / MB:.0f} MiB/token ÷ read bandwidth", ours.decode_tokens_per_s * per_token / 1e9,
               bandwidth / 1e9, "GB/s", ours.decode_tokens_per_s * per_token / bandwidth,
               at_least(0.65) if level == "Q4_K_M" else None, f"{level}; {options.threads} reader threads"),
    ]
    if model is not None:
        ids = engine.encode_prompt(document_messages(engine, options.prompt_tokens)).ids
        hf = transformers_speed(model, ids, decode_tokens=min(options.decode_tokens, 16), repeats=options.repeats)
        out += [
            result(f"decode: ours ({level}) ÷ transformers bf16", ours.decode_tokens_per_s, hf.decode_tokens_per_s,
                   "tok/s", ours.decode_tokens_per_s / hf.decode_tokens_per_s, at_least(5) if level == "Q4_K_M" else None),
            result(f"prefill: ours ({level}) ÷ transformers bf16", ours.prefill_tokens_per_s, hf.prefill_tokens_per_s,
                   "tok/s", ours.prefill_tokens_per_s / hf.prefill_tokens_per_s),
        ]
    return out


def _draft(engine, bundle, options: BenchOptions):
    from exaone_edge.benchmarks.decode import document_messages
    from exaone_edge.benchmarks.drafting import measure

    ids = engine.encode_prompt(document_messages(engine, options.prompt_tokens)).ids
    return measure(bundle.decoder_path, ids, k_max=options.engine.draft_max, threads=options.threads,
                   repeats=options.repeats, image_token=bundle.spec.image_token_id)


def _vision(engine, model, bundle, options: BenchOptions) -> list[Result]:
    from exaone_edge.benchmarks.vision import compare_with_torch

    page = bench_page(options.page)
    times = compare_with_torch(engine.vision, model, page, repeats=options.repeats)
    precision = engine.vision.precision
    versus = "PyTorch SDPA" if precision in ("fp32", "fp16") else "PyTorch SDPA fp32"
    out = [result(f"vision {precision}: ONNX Runtime ÷ {versus} (speed-up)", times.onnx_s, times.torch_s, "s/page",
                  times.torch_s / times.onnx_s, at_least(1.5) if precision == "fp32" else None,
                  f"{page.width}x{page.height} page, {times.rows} rows, max|Δ| {times.max_abs_diff:.1e}")]
    if options.mtmd:
        out.append(_mtmd(bundle, page, times.onnx_s, precision, options))
    return out


def _mtmd(bundle, page: Image.Image, onnx_s: float, precision: str, options: BenchOptions) -> Result:
    """llama.cpp's own EXAONE 4.5 vision path: llama-mtmd-cli with an mmproj from llama.cpp's converter."""
    import tempfile

    from exaone_edge.benchmarks.mtmd_vision import convert_mmproj, mtmd_encode_seconds, window_note

    with tempfile.TemporaryDirectory(prefix="exaone-edge-mtmd-") as tmp:
        image = Path(tmp) / "page.png"
        page.save(image)
        mmproj = convert_mmproj(options.model_dir, Path(tmp) / "mmproj.gguf")
        run = mtmd_encode_seconds(bundle.decoder_path, mmproj, image, options.threads, options.repeats,
                                  model_dir=options.model_dir)
    note = f"{run['mtmd_image_tokens']} image tokens, flash attention off"
    caveat = window_note(options.model_dir)
    return result(f"vision {precision}: ONNX Runtime ÷ llama.cpp mtmd (speed-up)", onnx_s, run["encode_s"], "s/page",
                  run["encode_s"] / onnx_s, at_least(2) if precision == "fp32" else None, note + (f"; {caveat}" if caveat else ""))


def _first_token(engine, model, options: BenchOptions) -> list[Result]:
    from exaone_edge.benchmarks.first_token import compare_with_transformers, image_only_processor

    page = bench_page(options.page)
    processor = image_only_processor(options.model_dir)
    if options.engine.image_max_tokens is not None:  # transformers gets the same page size as our engine
        image_processor = processor.image_processor
        image_processor.size = replace(image_processor.size, longest_edge=engine.image.max_pixels)
    timing = compare_with_transformers(engine, model, processor, page, repeats=options.repeats)
    note = f"{page.width}x{page.height} page, {timing.prompt_positions} prompt positions"
    return [
        result("page + question TTFT: transformers bf16 ÷ ours (speed-up)", timing.ours_s, timing.transformers_s, "s",
               timing.transformers_s / timing.ours_s, at_least(1.5), note),
        result("second question on the page: TTFT ÷ first", timing.ours_second_question_s, timing.ours_s, "s",
               timing.ours_second_question_s / timing.ours_s, at_most(0.2), "vision rows and KV prefix reused"),
    ]


def _server(bundle_dir: Path, n_ctx: int, options: BenchOptions) -> list[Result]:
    from exaone_edge.benchmarks.server_load import compare_concurrency

    load = compare_concurrency(bundle_dir, concurrency=options.concurrency, parallel=options.parallel,
                               max_tokens=options.decode_tokens * 2, threads=options.threads, ctx=n_ctx,
                               repeats=options.repeats, flags=options.engine_flags())
    return [result(f"server: {load.concurrency} concurrent ÷ one (aggregate)", load.concurrent_tokens_per_s,
                   load.one_tokens_per_s, "tok/s", load.concurrent_tokens_per_s / load.one_tokens_per_s, at_least(2),
                   f"--parallel {load.parallel}")]


def _conversion(options: BenchOptions) -> list[Result]:
    from exaone_edge.benchmarks.conversion import compare_with_copy

    run = compare_with_copy(options.model_dir, repeats=options.repeats)
    bound = 2 * run.largest_tensor + 200 * MB
    return [
        result("GGUF conversion: throughput ÷ plain copy", run.checkpoint_bytes / run.convert_s / MB,
               run.checkpoint_bytes / run.copy_s / MB, "MiB/s", run.copy_s / run.convert_s, at_least(0.8),
               f"{run.checkpoint_bytes / MB:.0f} MiB checkpoint"),
        result("GGUF conversion: peak RSS ÷ (2 × largest tensor + 200 MiB)", run.peak_rss / MB, bound / MB, "MiB",
               run.peak_rss / bound, at_most(1), f"largest tensor {run.largest_tensor / MB:.0f} MiB"),
    ]


def bench_page(path: Path | None) -> Image.Image:
    """The page to encode: the user's, or a generated English invoice rendered at 100 dpi (A4)."""
    if path is not None:
        from exaone_edge.images import open_image

        return open_image(path)
    from exaone_edge.documents.canvas import Scan, rasterize
    from exaone_edge.documents.generate import generate_document

    generated = generate_document(0, ["en"], seed=0)
    return rasterize(generated.pages[0], Scan(dpi=100))


def render_table(report: BenchReport) -> str:
    """The results as a text table (rich), with the machine on top."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    machine = report.machine
    table = Table(title=f"exaone-edge bench: {report.bundle} ({report.decoder_level})", title_justify="left")
    for column, justify in (("comparison", "left"), ("ours", "right"), ("baseline", "right"), ("unit", "left"),
                            ("ratio", "right"), ("target", "left"), ("", "left"), ("note", "left")):
        table.add_column(column, justify=justify)
    for r in report.results:
        verdict = {True: "✓", False: "✗", None: ""}[r.met]
        table.add_row(r.name, f"{r.ours:.4g}", f"{r.baseline:.4g}", r.unit, f"{r.ratio:.3g}",
                      r.target.describe() if r.target else "", verdict, r.note)
    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    console.print(f"machine: {machine['cpu']}, {machine['usable_cpus']} cores, "
                  f"{machine['memory_bytes'] / 2**30:.0f} GiB RAM, GPUs: {', '.join(machine['gpus']) or 'none'}")
    console.print(table)
    return buffer.getvalue().rstrip()
