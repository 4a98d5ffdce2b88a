"""`exaone-edge plan --stages`: how long each README command takes, and how much memory, on a target box.

Work is counted from config.json: FLOPs per token and per page, the bytes each step reads and writes, the passes
over the weights. A phase lasts as long as its slowest resource at the box's rates: the GPU's spec-sheet tensor
throughput, memory bandwidth and PCIe link (exaone_edge.memory.GPUS), the disk's sequential rate (`--disk-gbs`:
the user's drive, unknowable here) and CPU rates measured on this project's test machine
(benchmarks/cpu_rates.py). A command's phases run one after another. No run reaches spec-sheet peaks, so every
time here is a floor, printed as a prediction; scripts/gpu_check.sh measures the GPU path on a GPU box.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from exaone_edge.errors import InputError
from exaone_edge.levels import estimated_bytes
from exaone_edge.budgets import (DTYPE_BYTES, EXPORT_INT8_CALIBRATION_PAGES, GIB, LLAMA_GPU_RESERVE,
                                  PAGE_TEXT_ALLOWANCE, REFERENCE_CACHE_SHARE, REFERENCE_DTYPE, UBATCH)
from exaone_edge.memory import (GPUS, VISION_WEIGHT_BYTES, Gpu, Plan, Source, load_source, output_layer_bytes,
                                vision_activation_bytes, with_page_budget)
from exaone_edge.spec import DecoderSpec, VisionSpec
from exaone_edge.vision.contract import VALIDATION_PAGES
from exaone_edge.vision.preprocess import smart_resize

# Measured by benchmarks/cpu_rates.py on this project's 2-core test machine (AMD EPYC, AVX-512; 2026-12-02, one run,
# medians of 3), per core; the target box's cores are taken to be as fast.
CPU_GFLOPS_PER_CORE = 75.1  # fp32 GEMM through ONNX Runtime at the vision tower's widths
QUANTIZE_PARAMS_PER_S_PER_CORE = 6.82e6  # llama.cpp F16 → Q4_K_M with an importance matrix, real decoder widths
INT4_PARAMS_PER_S_PER_CORE = 3.0e7  # ONNX Runtime's MatMulNBits quantizer (block 32, 4 bits; 8 bits taken as fast)
TRACE_SECONDS_PER_BLOCK = 1.9  # the tiny tower's whole export on one tiny page ÷ its 6 blocks (fixed cost included)
# Export's peak RSS: a fixed cost (torch, transformers, ONNX Runtime) + a multiple of the tower's fp32 bytes, measured by
# benchmarks/vision_export_memory.py on a 4-block real-width tower (docs/export.md) for fp32 and int8; fp16, int8w and
# int4 are given fp32's ratio, not measured (their conversion reopens the fp32 graph after the tower is freed).
EXPORT_FIXED_RAM = int(1.15e9)
EXPORT_RAM_PER_FP32_BYTE = {"fp32": 1.52, "fp16": 1.52, "int8w": 1.52, "int4": 1.52, "int8": 2.17}
# validate's layer-streamed reference, peak RSS at the real decoder widths with 8 layers (benchmarks/reference_memory.py).
REFERENCE_RAM = int(4.12 * GIB)
GPTQ_GPU = "a100-40"  # the GPU GPTQ is planned on (README: an A100 40/80 GB)
PROCESS_RAM = GIB  # a Python process with its runtimes loaded, beside what a stage holds


@dataclass(frozen=True)
class Box:
    """The machine the commands run on."""

    gpu: Gpu
    cores: int = 8
    ram_bytes: int = 64 * GIB
    disk_gbs: float = 2.0  # sequential read or write


@dataclass(frozen=True)
class Workload:
    calibration_prompts: int = 128  # imatrix / GPTQ pages (a document folder gives 2–4 per document)
    held_out_prompts: int = 32  # quantize's KL check
    questions: int = 12  # validate's default --max-questions
    answer_tokens: int = 24  # validate's answer budget without thinking


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    bound: str  # the resource that sets the time


@dataclass(frozen=True)
class Stage:
    command: str
    where: str
    phases: tuple[Phase, ...]
    ram_bytes: int | None  # peak host memory of the process (None: not predicted)
    gpu_bytes: int | None
    memory_from: str

    @property
    def seconds(self) -> float:
        return sum(phase.seconds for phase in self.phases)


def _phase(name: str, **seconds_by_resource: float) -> Phase:
    """The phase takes as long as its slowest resource (the others overlap with it)."""
    resource, seconds = max(seconds_by_resource.items(), key=lambda item: item[1])
    return Phase(name, seconds, resource.replace("_", " "))


# ---- work -------------------------------------------------------------------------------------------------------
def prompt_flops(decoder: DecoderSpec, tokens: int) -> float:
    """One prompt of `tokens` through the decoder and its head: the weights' 2 FLOPs per parameter per token, and
    attention's QKᵀ and PV (4 × heads × head_dim per attended position; causal, sliding layers capped at the window)."""
    linear = 2 * tokens * (decoder.body_params + decoder.vocab_size * decoder.hidden_size)
    window = decoder.sliding_window or tokens
    attended = sum(tokens * tokens / 2 if kind == "G" else tokens * min(tokens / 2, window) for kind in decoder.pattern)
    return linear + 4 * decoder.num_heads * decoder.head_dim * attended


def vision_flops(vision: VisionSpec, patches: int) -> float:
    """One page through the tower and merger: full-attention blocks attend every patch, windowed ones a window."""
    window = (vision.window_size // vision.patch_size) ** 2
    full = len(vision.fullatt_block_indexes)
    attended = full * patches + (vision.depth - full) * min(window, patches)
    return 2 * vision.params * patches + 4 * vision.hidden_size * patches * attended


def page_patches(source: Source, size: tuple[int, int]) -> int:
    width, height = size
    h, w = smart_resize(height, width, source.token_side, source.min_pixels, source.max_pixels)
    return h * w // source.spec.vision.patch_size ** 2


def largest_page_patches(source: Source) -> int:
    """A scanned A4 page at 300 DPI, as large as the page budget lets it be."""
    return page_patches(source, (2480, 3508))


def _page_rows(source: Source) -> int:
    """Decoder rows of that page (patches merged 2×2)."""
    return largest_page_patches(source) // source.spec.vision.spatial_merge_size ** 2


def _linears(decoder: DecoderSpec) -> list[tuple[int, int]]:
    """(rows, columns) of each weight matrix in a decoder layer: q, k, v, o, gate, up, down."""
    hidden, q_out, kv_out, inter = (decoder.hidden_size, decoder.num_heads * decoder.head_dim,
                                    decoder.num_kv_heads * decoder.head_dim, decoder.intermediate_size)
    return [(q_out, hidden), (kv_out, hidden), (kv_out, hidden), (hidden, q_out), (inter, hidden), (inter, hidden),
            (hidden, inter)]


# ---- stages -----------------------------------------------------------------------------------------------------
def _cpu(box: Box) -> float:
    return box.cores * CPU_GFLOPS_PER_CORE * 1e9


def _disk(box: Box, nbytes: float) -> float:
    return nbytes / (box.disk_gbs * 1e9)


def _gpu(box: Box, flops: float) -> float:
    return flops / (box.gpu.fp16_tflops * 1e12)


def _pcie(box: Box, nbytes: float) -> float:
    return nbytes / (box.gpu.pcie_gbs * 1e9)


def export_stage(source: Source, box: Box, precision: str) -> Stage:
    vision = source.spec.vision
    checks = sum(2 * vision_flops(vision, page_patches(source, size)) for _, size in VALIDATION_PAGES)
    written = vision.params * VISION_WEIGHT_BYTES[precision]
    phases = [
        _phase("read the tower's bf16 weights", disk=_disk(box, 2 * vision.params)),
        _phase(f"trace {vision.depth} blocks to ONNX and optimise", CPU=TRACE_SECONDS_PER_BLOCK * vision.depth),
        _phase("write the fp32 graph" + (", read it back to convert" if precision != "fp32" else ""),
               disk=_disk(box, 4 * vision.params * (1 if precision == "fp32" else 2))),
    ]
    if precision in ("int4", "int8w"):
        phases.append(_phase(f"pack {precision} weights", CPU=vision.params / (INT4_PARAMS_PER_S_PER_CORE * box.cores)))
    if precision == "int8":
        calibration = EXPORT_INT8_CALIBRATION_PAGES * vision_flops(vision, largest_page_patches(source))
        phases.append(_phase("int8 calibration pages", CPU=calibration / _cpu(box)))
    if precision != "fp32":
        phases.append(_phase(f"write the {precision} graph", disk=_disk(box, written)))
    phases.append(_phase(f"validate on {len(VALIDATION_PAGES)} pages (transformers and ONNX Runtime)",
                         CPU=checks / _cpu(box)))
    ram = (EXPORT_FIXED_RAM + int(EXPORT_RAM_PER_FP32_BYTE[precision] * 4 * vision.params)
           + vision_activation_bytes(source.spec, source.max_pixels, fused=True))
    return Stage(f"export --precision {precision}", "CPU", tuple(phases), ram, None,
                 "measured ratio to the tower's fp32 size (docs/export.md) + the largest page's activations")


@dataclass(frozen=True)
class _Offload:
    """A GGUF's split across the GPU and the host in llama.cpp (quantize.llama_eval.layers_that_fit's rule)."""

    layer_bytes: int  # one repeating layer's weights
    output_bytes: int  # the output layer (output.weight)
    layers: int  # repeating layers on the GPU
    output_on_gpu: bool

    def host_weights(self, num_layers: int) -> int:
        return (num_layers - self.layers) * self.layer_bytes + (0 if self.output_on_gpu else self.output_bytes)

    def gpu_weights(self) -> int:
        return self.layers * self.layer_bytes + (self.output_bytes if self.output_on_gpu else 0)


def _offload(decoder: DecoderSpec, box: Box, n_ctx: int, resident: int, layer_bytes: int, output_bytes: int,
             largest: int) -> _Offload:
    """quantize.llama_eval.layers_that_fit with `resident` bytes (the ONNX vision session) already on the GPU: the
    output layer counted first, every layer's f32 KV cache of `n_ctx`, and while layers stay in host memory room
    for a copy of the `largest` weight (op offload runs their matmuls on the GPU, one weight at a time)."""
    per_layer = layer_bytes + n_ctx * 2 * decoder.num_kv_heads * decoder.head_dim * 4
    room = box.gpu.memory_bytes - LLAMA_GPU_RESERVE - resident
    if room >= output_bytes + decoder.num_layers * per_layer:
        return _Offload(layer_bytes, output_bytes, decoder.num_layers, True)
    room -= output_bytes + largest
    layers = 0 if room < 0 else min(decoder.num_layers, room // per_layer)
    return _Offload(layer_bytes, output_bytes, layers, room >= 0)


def _llama_pass(decoder: DecoderSpec, box: Box, prompts: int, tokens: int, split: _Offload,
                imatrix: bool = False) -> tuple[float, float]:
    """(GPU seconds, PCIe seconds) of `prompts` through a decoder split as `split` says: llama.cpp runs the host
    layers' matmuls on the GPU too (op offload, batches ≥ 32), uploading their weights every micro-batch (UBATCH
    positions: imatrix and KL run llama.cpp's default batch); imatrix's collector copies each matmul's input back to
    the host."""
    uploads = prompts * math.ceil(tokens / UBATCH) * split.host_weights(decoder.num_layers)
    collector = imatrix * prompts * tokens * decoder.num_layers * 4 * sum(columns for _, columns in _linears(decoder))
    return _gpu(box, prompts * prompt_flops(decoder, tokens)), _pcie(box, uploads + collector)


def _split_text(split: _Offload, num_layers: int) -> str:
    if split.layers == num_layers and split.output_on_gpu:
        return "every layer on the GPU"
    output = "the output layer and " if split.output_on_gpu else ""
    return f"{output}{split.layers} of {num_layers} layers on the GPU"


def quantize_stage(source: Source, box: Box, level: str, work: Workload, deployed: Plan) -> Stage:
    decoder = source.spec.decoder
    layers = decoder.num_layers
    tokens = _page_rows(source) + PAGE_TEXT_ALLOWANCE
    n_ctx = (tokens + 255) // 256 * 256
    f16 = estimated_bytes(source.decoder_params, "F16")
    quantized = deployed.components["decoder_weights"] + deployed.host_bytes
    vision_gpu = deployed.components["vision_weights"] + deployed.components["vision_activations"]
    table = decoder.vocab_size * decoder.hidden_size
    f16_split = _offload(decoder, box, n_ctx, vision_gpu, 2 * decoder.layer_params, 2 * table,
                         2 * decoder.intermediate_size * decoder.hidden_size)
    output = output_layer_bytes(source, level)
    candidate = _offload(decoder, box, n_ctx, vision_gpu, estimated_bytes(decoder.layer_params, level), output,
                         estimated_bytes(decoder.intermediate_size * decoder.hidden_size, level))
    page = vision_flops(source.spec.vision, largest_page_patches(source))
    imatrix_gpu, imatrix_pcie = _llama_pass(decoder, box, work.calibration_prompts, tokens, f16_split, True)
    kl_gpu, kl_pcie = _llama_pass(decoder, box, work.held_out_prompts, tokens, f16_split)
    candidate_gpu, candidate_pcie = _llama_pass(decoder, box, work.held_out_prompts, tokens, candidate)
    pages = work.calibration_prompts + work.held_out_prompts
    phases = (
        _phase("convert to an F16 GGUF (read bf16, write F16)", disk=_disk(box, 2 * f16)),
        _phase(f"encode {pages} pages (ONNX Runtime, GPU)", GPU_FP16=_gpu(box, pages * page)),
        _phase("map the F16 GGUF", disk=_disk(box, f16)),
        _phase(f"imatrix: {work.calibration_prompts} prompts × {tokens} positions, F16 with "
               f"{_split_text(f16_split, layers)}", GPU_FP16=imatrix_gpu, PCIe=imatrix_pcie),
        _phase(f"quantize to {level}", CPU=source.decoder_params / (QUANTIZE_PARAMS_PER_S_PER_CORE * box.cores),
               disk=_disk(box, f16 + quantized)),
        _phase(f"KL vs F16: {work.held_out_prompts} prompts, F16 pass (read again)", disk=_disk(box, f16),
               GPU_FP16=kl_gpu, PCIe=kl_pcie),
        _phase(f"KL vs F16: the {level} pass, {_split_text(candidate, layers)}", disk=_disk(box, quantized),
               GPU_FP16=candidate_gpu, PCIe=candidate_pcie),
    )
    host_f16 = f16_split.host_weights(layers) + 2 * table  # + token_embd, never offloaded
    copy = 0 if f16_split.layers == layers else 2 * decoder.intermediate_size * decoder.hidden_size
    gpu = f16_split.gpu_weights() + copy + LLAMA_GPU_RESERVE + vision_gpu
    return Stage(f"quantize --bits 4 ({level}, document imatrix)", "GPU + CPU", phases, host_f16 + PROCESS_RAM,
                 min(gpu, box.gpu.memory_bytes), "predicted: F16 layers left in host memory (memory-mapped) + 1 GiB")


def validate_stage(source: Source, box: Box, work: Workload, deployed: Plan) -> Stage:
    decoder = source.spec.decoder
    tokens = _page_rows(source) + PAGE_TEXT_ALLOWANCE
    bf16 = 2 * source.decoder_params  # the shards on disk
    ref = DTYPE_BYTES[REFERENCE_DTYPE] * source.decoder_params  # what crosses PCIe: torch casts on the host for blocking copies
    cached = bf16 + REFERENCE_RAM <= box.ram_bytes  # later passes come from the page cache, not the disk
    # Every generating question keeps all layers' KV caches on the GPU; questions run in groups whose caches fit
    # budgets.REFERENCE_CACHE_SHARE of it, each group with its own passes over the weights.
    caches = work.questions * tokens * decoder.num_layers * decoder.kv_bytes_per_token_per_layer_f16 * DTYPE_BYTES[REFERENCE_DTYPE] // 2
    groups = max(1, math.ceil(caches / (REFERENCE_CACHE_SHARE * box.gpu.memory_bytes)))
    passes = groups * work.answer_tokens  # teacher-forced + prefill share a group's first; each further token one more
    per_pass = _pcie(box, ref) if cached else max(_disk(box, bf16), _pcie(box, ref))
    prefill = work.questions * prompt_flops(decoder, tokens)
    page = vision_flops(source.spec.vision, largest_page_patches(source))
    step = (deployed.components["decoder_weights"] + deployed.components["kv_cache"]) / (box.gpu.bandwidth_gbs * 1e9)
    quantized = deployed.components["decoder_weights"] + deployed.host_bytes
    fp32 = box.gpu.fp32_tflops * 1e12  # float32 matmuls without TF32 (torch's default): the non-tensor rate
    phases = (
        _phase(f"reference: {work.questions} pages through the tower (float32, GPU)",
               disk=_disk(box, 2 * source.spec.vision.params), GPU_FP32=work.questions * page / fp32),
        _phase("reference: first pass over the decoder in float32 (teacher-forced + prefill)", disk=_disk(box, bf16),
               GPU_FP32=2 * prefill / fp32, PCIe=_pcie(box, ref)),
        _phase(f"reference: {passes - 1} more passes, one per answer token"
               + (f" ({groups} groups of questions, their KV caches apart)" if groups > 1 else ""), **{
            "PCIe" if cached else "disk": (passes - 1) * per_pass}),
        _phase(f"candidate: load the {deployed.level} bundle", disk=_disk(box, quantized)),
        _phase(f"candidate: {work.questions} pages, teacher-forced + {work.answer_tokens} answer tokens each",
               GPU_FP16=_gpu(box, work.questions * (page + 2 * prompt_flops(decoder, tokens))),
               GPU_bandwidth=work.questions * work.answer_tokens * step),
    )
    resident = DTYPE_BYTES[REFERENCE_DTYPE] * (decoder.layer_params + decoder.embedding_params)
    return Stage(f"validate ({work.questions} questions, reference once)", "GPU + CPU", phases, REFERENCE_RAM,
                 max(resident + caches // groups, deployed.total_bytes),
                 "RAM measured at the real widths (float32, CPU, 8 layers); GPU predicted: one float32 layer, "
                 "embeddings, head and a group of questions' KV caches, or the bundle, whichever is larger")


def serve_stage(source: Source, box: Box, deployed: Plan) -> Stage:
    decoder = source.spec.decoder
    rows = _page_rows(source)
    page = vision_flops(source.spec.vision, largest_page_patches(source))
    phases = (
        _phase("load the bundle", disk=_disk(box, deployed.components["decoder_weights"] + deployed.host_bytes
                                              + deployed.components["vision_weights"])),
        _phase(f"first page: encode ({rows} rows)", GPU_FP16=_gpu(box, page)),
        _phase(f"first page: prefill {rows + 64} positions", GPU_FP16=_gpu(box, prompt_flops(decoder, rows + 64))),
    )
    fit = "fits" if deployed.fits else f"does NOT fit this GPU; best level that does: {deployed.best_level or 'none'}"
    return Stage(f"serve {deployed.level} (load, then one page's time to first token; {fit})", "GPU", phases,
                 deployed.host_bytes + PROCESS_RAM, deployed.total_bytes, "plan's GPU total; host: token embedding + 1 GiB")


def gptq_stage(source: Source, box: Box, work: Workload) -> Stage:
    """On `box`'s GPU (stage_plan passes the A100 GPTQ is planned on)."""
    decoder = source.spec.decoder
    rows = _page_rows(source)
    tokens = work.calibration_prompts * (rows + PAGE_TEXT_ALLOWANCE)
    linears = _linears(decoder)
    # Per layer: the calibration states forward before and after quantizing; X·Xᵀ per weight; GPTQ's solve (the
    # column updates, rows × columns², and the Cholesky inverse of the Hessian, columns³), in fp32.
    forward = 2 * 2 * tokens * decoder.layer_params
    hessians = sum(2 * tokens * columns ** 2 for _, columns in linears)
    solves = sum(2 * rows_ * columns ** 2 + columns ** 3 for rows_, columns in linears)
    layers = decoder.num_layers
    phases = (
        _phase("read the bf16 checkpoint", disk=_disk(box, 2 * (source.decoder_params + source.vision_params))),
        _phase(f"encode {work.calibration_prompts} pages (transformers, GPU)",
               GPU_FP16=_gpu(box, work.calibration_prompts * vision_flops(source.spec.vision, largest_page_patches(source)))),
        _phase(f"{layers} layers: forward passes", GPU_FP16=_gpu(box, layers * forward)),
        _phase(f"{layers} layers: Hessians and GPTQ solves (fp32)",
               GPU_FP32=layers * (hessians + solves) / (box.gpu.fp32_tflops * 1e12)),
        _phase("fidelity: streamed reference and candidate passes", disk=_disk(box, 2 * 2 * source.decoder_params)),
    )
    states = 2 * tokens * decoder.hidden_size * 2
    resident = 2 * decoder.layer_params + sum(4 * columns ** 2 for _, columns in linears) + states
    return Stage(f"quantize --format gptq --bits 4 (on {box.gpu.name})", f"GPU ({box.gpu.name})", phases, None, resident,
                 "GPU predicted: one bf16 layer, its Hessians and the calibration states; RAM not predicted")


def stage_plan(path: Path, deployed: Plan, *, vision_precision: str = "int8w", cores: int = 8, ram_gib: float = 64,
               disk_gbs: float = 2.0, work: Workload = Workload()) -> list[Stage]:
    """The README walk-through's commands for the checkpoint at `path` (config.json alone is enough), deployed as
    `deployed` (exaone_edge.memory.plan for the same path) on a box with its GPU."""
    card = GPUS.get(deployed.gpu)
    if card is None:
        raise InputError(f"no spec-sheet rates for '{deployed.gpu}'", fix=f"Stage times need a named GPU: {', '.join(GPUS)}.")
    if disk_gbs <= 0 or cores < 1 or ram_gib <= 0:
        raise InputError("--disk-gbs, --cores and --ram-gib must be positive")
    box = Box(card, cores, int(ram_gib * GIB), disk_gbs)
    checkpoint = load_source(path)
    source = with_page_budget(checkpoint, deployed.image_max_tokens)
    return [
        export_stage(checkpoint, box, vision_precision),  # export validates at the checkpoint's own page limit
        quantize_stage(source, box, deployed.level, work, deployed),
        validate_stage(source, box, work, deployed),
        serve_stage(source, box, deployed),
        gptq_stage(source, replace(box, gpu=GPUS[GPTQ_GPU]), work),
    ]


def stages_dict(stages: list[Stage]) -> list[dict]:
    return [{**asdict(stage), "seconds": stage.seconds} for stage in stages]


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_stages(stages: list[Stage], box_line: str, work: Workload = Workload()) -> str:
    gib = lambda n: "–" if n is None else f"{n / GIB:.1f} GiB"  # noqa: E731
    lines = [f"predicted for {box_line}; floors at spec-sheet rates (real runs are slower)",
             f"work: {work.calibration_prompts} calibration prompts, {work.held_out_prompts} held out, "
             f"{work.questions} validate questions × {work.answer_tokens} answer tokens"]
    for stage in stages:
        lines.append(f"{stage.command}: ≥ {_duration(stage.seconds)} on {stage.where}, "
                     f"RAM {gib(stage.ram_bytes)}, GPU {gib(stage.gpu_bytes)}")
        for phase in stage.phases:
            lines.append(f"    {_duration(phase.seconds):>7}  {phase.name}  [{phase.bound}]")
    return "\n".join(lines)
