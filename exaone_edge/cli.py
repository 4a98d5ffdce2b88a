"""The `exaone-edge` command: parses, calls a stage function, prints. Stages import heavy libraries lazily."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from exaone_edge.cli_flags import engine_flags, settings_flags
from exaone_edge.engine_settings import EngineSettings
from exaone_edge.runtime.server.settings import ServerSettings  # pydantic only (typer needs it too)
from exaone_edge.errors import ExaoneEdgeError, InputError
from exaone_edge.results import Result

app = typer.Typer(
    name="exaone-edge",
    help="EXAONE 4.5 from a Hugging Face checkpoint to a private document-AI service on one GPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
PLACEMENT = ("image_max_tokens", "device", "n_gpu_layers", "vision_provider")  # where each part runs, page size


def emit(result: Result, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")


@app.command()
def inspect(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face EXAONE 4.5 checkpoint directory.")],
    json_output: JsonFlag = False,
) -> None:
    """Check a checkpoint directory and print its sizes, attention pattern and memory at each precision."""
    from exaone_edge.plan.inspect import inspect_checkpoint

    emit(inspect_checkpoint(model_dir), json_output)


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this command (never a folder it did not write).")] = False,
    preset: Annotated[str, typer.Option(help="tiny (tests, demo) or bench (real layer widths, 2.4 GB).")] = "tiny",
    json_output: JsonFlag = False,
) -> None:
    """Write a small random EXAONE 4.5 checkpoint (64-layer decoder, MTP head, 4-block vision tower)."""
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    emit(build_tiny_model(out, seed=seed, overwrite=overwrite, preset=preset), json_output)


@app.command()
@engine_flags("kv_type", "parallel", *PLACEMENT, "draft")
def plan(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory (config.json alone is enough) or bundle.")],
    gpu: Annotated[str, typer.Option(help="rtx4090, a10g, a100-40, a100-80, or a size such as 48GiB.")] = "rtx4090",
    context: Annotated[int | None, typer.Option(help="Context length in tokens (default: min(model max, 32768)).")] = None,
    level: Annotated[str | None, typer.Option(help="Decoder level (default: the bundle's, else Q4_K_M).")] = None,
    vision_on: Annotated[str, typer.Option(help="Where the vision encoder runs: gpu or cpu (cpu = --vision-provider cpu).")] = "gpu",
    vision_precision: Annotated[str, typer.Option(help="Vision export precision for a checkpoint: fp32, fp16, int8, int8w or int4 (a bundle's file is measured).")] = "fp16",
    stages: Annotated[bool, typer.Option("--stages", help="Also predict each README command's time and memory on this box.")] = False,
    disk_gbs: Annotated[float, typer.Option(help="--stages: the disk's sequential read/write rate, GB/s.")] = 2.0,
    cores: Annotated[int, typer.Option(help="--stages: CPU cores of the box.")] = 8,
    ram_gib: Annotated[float, typer.Option(help="--stages: RAM of the box, GiB.")] = 64,
    serving_engine: Annotated[str, typer.Option("--engine", help="llama.cpp (our bundle, one GPU) or vllm (the GPTQ "
                                                "checkpoint with tensor parallel, per GPU).")] = "llama.cpp",
    tp: Annotated[int, typer.Option("--tp", help="--engine vllm: GPUs (tensor-parallel degree).")] = 1,
    json_output: JsonFlag = False,
    engine: EngineSettings = EngineSettings(),
) -> None:
    """Predict GPU memory for a deployment and find the largest context and best level that fit.

    Placement flags as for run/serve: the plan places each part as the runtime would on a GPU box with the
    GPU builds installed. --engine vllm: per-GPU memory of `vllm serve` at --tp GPUs (plan/vllm.py)."""
    from exaone_edge.plan.command import plan_report

    if serving_engine not in ("llama.cpp", "vllm"):
        raise InputError(f"--engine must be llama.cpp or vllm, got '{serving_engine}'")
    if serving_engine == "vllm":
        from exaone_edge.plan.vllm import vllm_plan

        emit(vllm_plan(model, tp=tp, gpu=gpu, context=context, image_max_tokens=engine.image_max_tokens), json_output)
        return
    if vision_on not in ("gpu", "cpu"):
        raise InputError(f"--vision-on must be gpu or cpu, got '{vision_on}'")
    emit(plan_report(model, gpu=gpu, context=context, kv_type=engine.kv_type, level=level, vision_on_gpu=vision_on == "gpu",
                     parallel=engine.parallel, device=engine.device, gpu_layers=engine.n_gpu_layers,
                     vision_provider=engine.vision_provider, vision_precision=vision_precision,
                     image_max_tokens=engine.image_max_tokens, stages=stages, cores=cores, ram_gib=ram_gib,
                     disk_gbs=disk_gbs, draft=engine.draft), json_output)



@app.command()
@engine_flags("n_ctx", *PLACEMENT, "n_threads", "flash_attn", "kv_type", "verify", "draft", "draft_max")
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `exaone-edge quantize`.")],
    question: Annotated[str, typer.Argument(help="The question about the document.")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="An image (PNG/JPEG/TIFF/WebP); repeat for more.")] = None,
    pdf: Annotated[Path | None, typer.Option(help="A PDF; its pages (see --pages) are rendered for the vision encoder.")] = None,
    pages: Annotated[str | None, typer.Option(help="PDF pages, 1-based: '1-3,5' (default: all).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 is greedy; above 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0: off).")] = 0,
    min_p: Annotated[float, typer.Option(help="Drop tokens below min_p × the top probability (0: off).")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: random).")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop when this text appears; repeatable.")] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason first (reasoning shown dimmed on stderr, "
                                        "the answer on stdout); off: answer directly.")] = False,
    json_schema: Annotated[Path | None, typer.Option("--json-schema", help="Answer with JSON matching this JSON Schema "
                                                     "file (a grammar guarantees it; reasoning stays free).")] = None,
    json_output: JsonFlag = False,
    engine: EngineSettings = EngineSettings(),
) -> None:
    """Ask a question about images or PDF pages; the answer streams to stdout, timings go to stderr."""
    from exaone_edge.runtime.ask import ask, read_schema, stats_line
    from exaone_edge.runtime.generation import GenerationParams, collect

    params = GenerationParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
        stop=tuple(stop or ()),
    )
    chunks = ask(bundle, question, images=image or [], pdf=pdf, pages=pages, params=params, settings=engine,
                 thinking=think, json_schema=read_schema(json_schema) if json_schema is not None else None)
    if json_output:
        emit(collect(chunks), True)
        return
    # Reasoning goes to stderr (dimmed on a terminal), so stdout holds only the answer and stays pipeable.
    dim, undim = ("\x1b[2m", "\x1b[0m") if sys.stderr.isatty() else ("", "")

    def streamed():
        reasoned = False
        for chunk in chunks:
            if chunk.reasoning:
                sys.stderr.write(f"{dim}{chunk.reasoning}{undim}")
                sys.stderr.flush()
                reasoned = True
            if chunk.text and reasoned:
                sys.stderr.write("\n")
                reasoned = False
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            yield chunk

    result = collect(streamed())
    sys.stdout.write("\n")
    if result.reasoning and not result.text:
        sys.stderr.write("\n")
        if result.finish_reason == "length":
            sys.stderr.write("note: the reasoning used every --max-tokens token before an answer; raise --max-tokens\n")
    sys.stderr.write(stats_line(result) + "\n")  # one unwrapped line, for people and for grep


@app.command()
@settings_flags(ServerSettings, skip=("engine", "api_key"))
@engine_flags("n_ctx", *PLACEMENT, "n_threads", "flash_attn", "kv_type", "parallel", "verify", "draft", "draft_max",
              given_only=True)
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `exaone-edge quantize`.")],
    given: dict[str, Any],
    engine: dict[str, Any],
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/models, /health, /metrics); loopback by default.

    Every flag can also come from EXAONE_EDGE_<SETTING> (e.g. EXAONE_EDGE_MAX_QUEUE=4, EXAONE_EDGE_N_CTX=16384);
    flags win.
    """
    from exaone_edge.runtime.server.main import serve as run_server

    run_server(bundle, ServerSettings.resolve(given, engine=engine))


@app.command()
def quantize(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face EXAONE 4.5 checkpoint directory.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle directory to write.")],
    bits: Annotated[int | None, typer.Option(help="4 (Q4_K_M, imatrix) or 8 (Q8_0); default 4.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S or IQ4_XS.")] = None,
    format: Annotated[str, typer.Option("--format", help="gguf (llama.cpp bundle) or gptq (exaone_edge/formats.py).")] = "gguf",
    calibration: Annotated[Path | None, typer.Option(help="Document set or folder for the importance matrix.")] = None,
    vision: Annotated[Path | None, typer.Option(help="Vision export dir (`exaone-edge export`) to bundle.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Where intermediates live (default: beside -o).")] = None,
    keep_work: Annotated[bool, typer.Option(help="Keep the F16 GGUF and imatrix for later runs.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this command (never a folder it did not write).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    group_size: Annotated[int | None, typer.Option(help="GPTQ group size (-1: per channel; default: the largest that "
                                                   "serves --tp GPUs: 128 at TP 1-2 for EXAONE 4.5 33B).")] = None,
    tp: Annotated[int, typer.Option("--tp", help="GPTQ: the vLLM tensor-parallel degree to serve at (checks or picks "
                                   "--group-size).")] = 1,
    imatrix: Annotated[bool, typer.Option(help="Calibrate 4/5/6-bit levels with the document importance matrix.")] = True,
    gpu_layers: Annotated[int | None, typer.Option(help="F16 decoder layers on the GPU for the imatrix and KL steps: "
                                                   "-1 all, 0 none (default: as many as fit the GPU's free memory).")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Quantize the decoder: GGUF at 4/8 bits with a document-calibrated importance matrix, as a bundle."""
    from exaone_edge.formats import QUANTIZE_FORMATS

    if format not in QUANTIZE_FORMATS:
        raise InputError(f"--format must be one of {', '.join(QUANTIZE_FORMATS)}, got '{format}'")

    def gguf():
        from exaone_edge.quantize.pipeline import quantize_gguf

        return quantize_gguf(model_dir, out, bits=bits, recipe=recipe, calibration=calibration, imatrix=imatrix,
                             vision_dir=vision, work_dir=work_dir, keep_work=keep_work, overwrite=overwrite,
                             threads=threads, gpu_layers=gpu_layers)

    def gptq():
        from exaone_edge.quantize.gptq import gptq_from_documents

        return gptq_from_documents(model_dir, out, calibration, bits=bits or 4, group_size=group_size, tp=tp,
                                   overwrite=overwrite)

    result = {"gguf": gguf, "gptq": gptq}[format]()  # one entry per QUANTIZE_FORMATS name (a test keeps them equal)
    emit(result, json_output)


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face EXAONE 4.5 checkpoint directory.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory to write (vision.onnx, manifest.json, configs).")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 (GPU), int8 (weights and activations, static QDQ: the CPU), int8w or int4 (8- or 4-bit weights, MatMulNBits: the GPU).")] = "fp32",
    calibration: Annotated[Path | None, typer.Option(help="Document set or folder of PDFs/images for int8 "
                                                     "(default: a generated set).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this command (never a folder it did not write).")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Export the vision encoder (tower + merger) to one ONNX graph for every page size, validated."""
    from exaone_edge.export.vision import export_vision

    result = export_vision(model_dir, out, precision=precision, calibration=calibration, overwrite=overwrite)
    emit(result, json_output)


@app.command()
@engine_flags(*PLACEMENT)
def validate(
    reference: Annotated[Path, typer.Option(help="The original Hugging Face checkpoint.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report directory (report.json, .md, .html).")],
    artifacts: Annotated[list[Path] | None, typer.Argument(help="Bundles, GPTQ checkpoints or vision exports.")] = None,
    eval_set: Annotated[Path | None, typer.Option("--eval", help="Document set or folder with qa.jsonl.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="An earlier report.json: exit 1 if anything regressed.")] = None,
    max_questions: Annotated[int, typer.Option(help="Questions to evaluate.")] = 12,
    kl_threshold: Annotated[float | None, typer.Option(help="Override the allowed KL increase.")] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip the speed/memory probe.")] = False,
    reference_cache: Annotated[Path | None, typer.Option(help="Where reference files are kept and reused "
                                                         "(default: ~/.cache/exaone-edge/references).")] = None,
    reference_dtype: Annotated[str, typer.Option(help="Reference precision: auto (float32 everywhere, so the "
                                                 "reference rounds less than any candidate), bfloat16 or float32.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier report in -o (nothing else is ever replaced).")] = False,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Validate with reasoning on (answers scored after "
                                        "</think>) or off (default, as run and serve answer).")] = False,
    answer_tokens: Annotated[int | None, typer.Option(help="Token budget per answer (default: 24 without thinking, "
                                                      "1024 with it; each token is a pass of the reference).")] = None,
    endpoint: Annotated[list[str] | None, typer.Option("--endpoint", help="An OpenAI-compatible server (vLLM, "
                        "llama-server, exaone-edge serve) as a candidate, e.g. http://127.0.0.1:8000/v1; repeatable.")] = None,
    endpoint_model: Annotated[list[str] | None, typer.Option("--endpoint-model", help="The model each --endpoint serves, "
                              "in order (default: the server's only model).")] = None,
    endpoint_api_key_file: Annotated[Path | None, typer.Option(help="A file holding the endpoints' API key.")] = None,
    json_output: JsonFlag = False,
    engine: EngineSettings = EngineSettings(),
) -> None:
    """Accuracy-regression report per artifact or endpoint: vision/decoder fidelity, document-QA accuracy, speed."""
    from exaone_edge.validate.collect import ValidateOptions, validate as collect
    from exaone_edge.validate.endpoint import endpoints_from
    from exaone_edge.validate.report import check_report_dir, load_baseline, write_report

    endpoints = endpoints_from(endpoint or [], endpoint_model or [], endpoint_api_key_file)

    check_report_dir(out, overwrite)  # a folder we may not write fails before the run, not after
    if baseline is not None:
        load_baseline(baseline)  # a bad baseline fails before the run, not after
    if answer_tokens is not None and answer_tokens < 1:
        raise InputError(f"--answer-tokens must be at least 1, got {answer_tokens}")
    options = ValidateOptions(max_questions=max_questions, measure_speed=not no_speed, thinking=think,
                              max_new_tokens=answer_tokens, engine=engine)
    report = collect(reference, artifacts or [], eval_set, options,
                     reference_cache=reference_cache, reference_dtype=reference_dtype, endpoints=endpoints)
    overrides = {"kl_mean_increase": kl_threshold} if kl_threshold is not None else None
    result = write_report(out, report, baseline, overrides, overwrite=overwrite)
    emit(result, json_output)
    if result.regressions:
        raise typer.Exit(1)


@app.command()
@engine_flags(*PLACEMENT, "draft_max")
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory made by `exaone-edge quantize`.")],
    model_dir: Annotated[Path | None, typer.Option(help="The checkpoint the bundle was made from "
                                                   "(transformers baselines, conversion).")] = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated sections: decode, draft, vision, first_token, "
                                             "server, conversion (default: all).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per comparison (medians), after a warm-up.")] = 3,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runtime (default: all usable cores).")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length for prefill.")] = 256,
    decode_tokens: Annotated[int, typer.Option(help="Tokens decoded per run.")] = 32,
    page: Annotated[Path | None, typer.Option(help="Page image for vision and TTFT (default: a generated A4 invoice).")] = None,
    parallel: Annotated[int, typer.Option(help="Server slots for the concurrency test.")] = 4,
    mtmd: Annotated[bool, typer.Option(help="Also time llama.cpp's mtmd vision path (builds it once; minutes).")] = False,
    save: Annotated[Path, typer.Option(help="Where to write the JSON results.")] = Path("bench.json"),
    json_output: JsonFlag = False,
    engine: EngineSettings = EngineSettings(),
) -> None:
    """Speed and memory as ratios against llama-cpp-python, transformers, the memory bandwidth and a copy."""
    from exaone_edge.benchmarks.suite import SECTIONS, BenchOptions, run_bench
    from exaone_edge.files import write_json

    if repeats < 1 or prompt_tokens < 8 or decode_tokens < 2:
        raise InputError("--repeats must be >= 1, --prompt-tokens >= 8 and --decode-tokens >= 2")
    options = BenchOptions(model_dir=model_dir, repeats=repeats, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens,
                           page=page, parallel=parallel, mtmd=mtmd, engine=engine,
                           sections=tuple(s.strip() for s in only.split(",")) if only else SECTIONS,
                           **({"threads": threads} if threads else {}))
    report = run_bench(bundle, options)
    write_json(save, report.to_dict())
    sys.stderr.write(f"saved {save}\n")
    emit(report, json_output)


docs_app = typer.Typer(help="Document sets for calibration and evaluation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("make")
def docs_make(
    out: Annotated[Path, typer.Argument(help="Directory to write the set to.")],
    n: Annotated[int, typer.Option("--n", help="Number of documents.")] = 200,
    lang: Annotated[str, typer.Option("--lang", help="Languages, comma-separated: ko, en.")] = "ko,en",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical pages.")] = 0,
    pdf: Annotated[bool, typer.Option("--pdf", help="Also write each document as a PDF with a text layer.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this command (never a folder it did not write).")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write a synthetic set of invoices, receipts, statements, tables, charts and forms with QA pairs."""
    from exaone_edge.documents import generate_set

    from dataclasses import replace

    result = generate_set(n, lang, seed, out, overwrite=overwrite, pdf=pdf)
    emit(replace(result.summary(), written_to=str(out)), json_output)


@docs_app.command("show")
def docs_show(
    set_path: Annotated[Path, typer.Argument(metavar="SET", help="A set from `docs make`, or a folder of PDFs/images.")],
    json_output: JsonFlag = False,
) -> None:
    """Summarize a document set: documents, pages, questions, kinds, languages, skipped files."""
    from exaone_edge.documents import load_documents

    emit(load_documents(set_path).summary(), json_output)


def main() -> None:
    # torchao, which transformers imports when installed, trips a torch deprecation warning on import: nothing a
    # user of this command can act on, and it would sit between our progress lines.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        app()
    except ExaoneEdgeError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
