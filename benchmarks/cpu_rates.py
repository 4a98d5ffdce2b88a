"""The CPU rates `plan --stages` predicts CPU work with, measured on this machine, per core.

    .venv/bin/python benchmarks/cpu_rates.py [--work DIR] [--json OUT]

- fp32 GEMM through ONNX Runtime at the vision tower's widths ([4096 × 2048] · [2048 × 5120]): GFLOPs per core.
- ONNX Runtime's MatMulNBits quantizer (block 32, symmetric, as export writes int4) on four 2048 × 5120 weights.
- llama.cpp's quantizer, F16 → Q4_K_M with an importance matrix, on the bench preset (the released decoder widths,
  2 layers, the 153,600 × 5,120 embeddings): parameters per second per core.
- The vision export's tracing and graph optimisation: the tiny model's 6-block tower exported on one tiny page,
  divided by its blocks (so it carries the fixed cost too).
Each is the median of `--repeats` runs with every core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

CORES = os.cpu_count() or 1


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _matmul_model(weights: list[np.ndarray], rows: int):

    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for index, weight in enumerate(weights):
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{index}"], [f"y{index}"]))
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [rows, w.shape[1]]) for i, w in enumerate(weights)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, weights[0].shape[0]])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def gemm_gflops_per_core(repeats: int) -> float:
    import onnxruntime as ort

    rows, hidden, inter = 4096, 2048, 5120
    rng = np.random.default_rng(0)
    model = _matmul_model([rng.standard_normal((hidden, inter), dtype=np.float32)], rows)
    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((rows, hidden), dtype=np.float32)
    seconds = _median_seconds(lambda: session.run(None, {"x": x}), repeats)
    return 2 * rows * hidden * inter / seconds / 1e9 / CORES


def int4_params_per_s_per_core(repeats: int) -> float:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from exaone_edge.export.precision import INT4_BLOCK

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((2048, 5120), dtype=np.float32) for _ in range(4)]
    model = _matmul_model(weights, 16)

    def run() -> None:
        quantizer = MatMulNBitsQuantizer(model.__deepcopy__(), block_size=INT4_BLOCK, is_symmetric=True)
        quantizer.process()

    return sum(w.size for w in weights) / _median_seconds(run, repeats) / CORES


def quantize_params_per_s_per_core(work: Path, repeats: int) -> float:
    from gguf import GGUFReader

    from exaone_edge.quantize.gguf_convert import convert_to_gguf
    from exaone_edge.quantize.llama_quantize import quantize_tensors
    from exaone_edge.quantize.recipes import choose_recipe
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    model = work / "bench-2"
    if not (model / "config.json").exists():
        build_tiny_model(model, preset="bench", overwrite=True)
    f16 = work / "bench-2-f16.gguf"
    if not f16.exists():
        convert_to_gguf(model, f16)
    tensors = GGUFReader(str(f16)).tensors
    params = sum(int(t.n_elements) for t in tensors)
    # Values do not change the work: every 2-D weight gets a column of ones, as an imatrix gives it numbers.
    imatrix = {t.name: np.ones(int(t.shape[0]), dtype=np.float32) for t in tensors
               if len(t.shape) == 2 and (t.name.startswith("blk.") or t.name == "output.weight")}
    recipe = choose_recipe(4, None, imatrix=True)
    target = work / "bench-2-q4.gguf"
    seconds = _median_seconds(lambda: quantize_tensors(f16, target, recipe, imatrix, CORES), repeats)
    target.unlink(missing_ok=True)
    return params / seconds / CORES


def trace_seconds_per_block(work: Path, repeats: int) -> float:
    from exaone_edge.export.vision import export_vision
    from exaone_edge.spec import model_spec
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    model = work / "tiny"
    if not (model / "config.json").exists():
        build_tiny_model(model, overwrite=True)
    depth = model_spec(json.loads((model / "config.json").read_text()), model / "config.json").vision.depth
    pages = (("tiny", (20, 30)),)
    seconds = _median_seconds(lambda: export_vision(model, work / "tiny-vision", overwrite=True, pages=pages), repeats)
    return seconds / depth


def main() -> None:
    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-cpu-rates"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rates = {
        "cores": CORES,
        "gemm_gflops_per_core": gemm_gflops_per_core(args.repeats),
        "int4_params_per_s_per_core": int4_params_per_s_per_core(args.repeats),
        "trace_seconds_per_block": trace_seconds_per_block(args.work, args.repeats),
        "quantize_params_per_s_per_core": quantize_params_per_s_per_core(args.work, args.repeats),
    }
    for name, value in rates.items():
        print(f"{name:34s} {value:,.4g}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rates, indent=2))


if __name__ == "__main__":
    main()
