"""fp32 ONNX → fp16, int8 (static QDQ, calibrated) or 4-bit weight-only (MatMulNBits)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


INT4_BLOCK = 32


def save(model, target: Path, *, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def _weight_matmuls(model) -> list[str]:
    """MatMul nodes with a constant weight: attention's activation × activation products stay float."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in initializers]


def to_fp16(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    del feeds
    model = onnx.load(str(source))
    # inputs/outputs stay float32 so callers feed the same arrays; norms and softmax reduce in float32
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                    op_block_list=["ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "Cos", "Sin"])
    save(half, target, external=external)


class _Reader:
    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def to_int8(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = _weight_matmuls(onnx.load(str(source), load_external_data=False))
    quantize_static(
        str(source), str(target), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
        # ORT's MinMax calibrator holds every page's activations until the end (its CalibMaxIntermediateOutputs
        # option drops them uncounted in 1.31.1), so the page count is capped by the caller
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def to_int4(source: Path, target: Path, *, feeds: Iterable[dict[str, np.ndarray]], external: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    del feeds
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=INT4_BLOCK, is_symmetric=True)
    quantizer.process()
    save(quantizer.model.model, target, external=external)


CONVERTERS: dict[str, Callable[..., None]] = {"fp16": to_fp16, "int8": to_int8, "int4": to_int4}
