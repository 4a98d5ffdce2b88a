"""`exaone-edge export` on the tiny model: one ONNX graph for every page size, validated against transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from exaone_edge.errors import CheckpointError, InputError, ValidationFailed
from exaone_edge.manifest import read_manifest

FAST_PAGES = (("a4-tall", (595, 842)), ("odd-wide", (999, 211)))


@pytest.fixture(scope="module")
def fp32_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vision") / "fp32"
    result = run_cli("export", str(tiny_model_dir), "-o", str(out), "--json", check=True)
    return out, json.loads(result.stdout)


def test_fp32_export_writes_a_validated_self_describing_dir(fp32_export: tuple[Path, dict]) -> None:
    out, payload = fp32_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "preprocessor_config.json",
                                                     "vision.onnx"]
    manifest = read_manifest(out, kind="vision-onnx", verify=True)
    assert manifest.details["precision"] == "fp32"
    validation = manifest.validation
    assert validation == payload["validation"] and validation["passed"]
    pages = validation["pages"]
    assert {p["page"] for p in pages} >= {"square", "a4-tall", "wide", "tiny", "large-a4-300dpi", "odd"}
    assert len({tuple(p["grid"]) for p in pages}) >= 5  # one graph served (at least) five different grids
    for page in pages:
        assert page["ok"] and page["max_abs"] <= 1e-4 and page["min_row_cosine"] >= 0.9999, page
    graph = manifest.details["graph"]
    patches = next(i for i in graph["inputs"] if i["name"] == "pixel_patches")
    assert isinstance(patches["shape"][0], str)  # dynamic patch axis, not a traced constant
    assert_fused_full_attention(out)


def assert_fused_full_attention(export_dir: Path) -> None:
    """Each full-attention block is one MultiHeadAttention node (no [heads, patches, patches] score matrix)."""
    import onnx

    model = onnx.load(str(export_dir / "vision.onnx"), load_external_data=False)
    fused = [node for node in model.graph.node if node.op_type == "MultiHeadAttention"]
    blocks = json.loads((export_dir / "config.json").read_text())["vision_config"]["fullatt_block_indexes"]
    assert len(fused) == len(blocks) and all(node.domain == "com.microsoft" for node in fused)
    heads = json.loads((export_dir / "config.json").read_text())["vision_config"]["num_heads"]
    assert all(next(a.i for a in node.attribute if a.name == "num_heads") == heads for node in fused)


def test_encoder_matches_get_image_features_on_unseen_sizes(fp32_export: tuple[Path, dict],
                                                            tiny_model_dir: Path) -> None:
    """Same rows, same order as HF `get_image_features(...).pooler_output`, on sizes the export never saw."""
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from exaone_edge.export.checklist import page_image
    from exaone_edge.vision import VisionEncoder

    out, _ = fp32_export
    encoder = VisionEncoder(out, providers=["CPUExecutionProvider"])
    model = Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir)
    for seed, size in enumerate([(1000, 123), (257, 263), (64, 1700)]):
        image = page_image(size, 50 + seed)
        inputs = processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            (want,) = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        got = encoder.encode(image)
        assert got.shape == tuple(want.shape) and got.shape[0] == encoder.rows_for(size)
        assert np.abs(got - want.numpy()).max() <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "int8w", "int4"])
def test_fp16_and_weight_only_exports_validate(tiny_model_dir: Path, tmp_path: Path, precision: str) -> None:
    from exaone_edge.export.vision import export_vision

    result = export_vision(tiny_model_dir, tmp_path / precision, precision=precision, pages=FAST_PAGES)
    manifest = read_manifest(result.path, kind="vision-onnx")
    assert manifest.details["precision"] == precision and manifest.validation["passed"]
    assert all(check.ok for check in result.checks)
    fp32_like = tmp_path / precision / "vision.onnx"
    import onnx

    graph = onnx.load(str(fp32_like), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    if precision in ("int8w", "int4"):
        assert "Gemm" not in ops  # every linear layer became MatMulNBits, none stayed float
        bits = {attr.i for node in graph.node if node.op_type == "MatMulNBits" for attr in node.attribute
                if attr.name == "bits"}
        assert bits == {8 if precision == "int8w" else 4}
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    assert_fused_full_attention(result.path)


def test_int8_calibrated_on_document_pages(tiny_model_dir: Path, tmp_path: Path) -> None:
    from exaone_edge.export.checklist import page_image

    pages = tmp_path / "pages"
    pages.mkdir()
    for index, size in enumerate([(595, 842), (842, 595), (700, 900)]):
        page_image(size, 200 + index).save(pages / f"page{index}.png")
    out = tmp_path / "int8"
    result = run_cli("export", str(tiny_model_dir), "-o", str(out), "--precision", "int8", "--calibration",
                     str(pages), check=True)
    manifest = read_manifest(out, kind="vision-onnx")
    validation = manifest.validation
    assert validation["passed"] and validation["calibration"]["pages"] == 3
    assert all(page["mean_row_cosine"] >= 0.99 for page in validation["pages"])
    assert "passed" in result.stdout and "cosine" in result.stdout
    import onnx

    graph = onnx.load(str(out / "vision.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    # every weight matrix is stored as int8: a layer the quantizer skipped would keep a float matrix
    float_matrices = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert not float_matrices, float_matrices
    assert_fused_full_attention(out)


def test_streamed_calibration_ranges_equal_ort_minmax_calibrator(tiny_model_dir: Path, tiny_vision_dir: Path,
                                                                tmp_path: Path) -> None:
    """Our one-page-at-a-time min/max must be what ORT's own MinMax calibrator computes."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, create_calibrator

    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.export.checklist import page_image
    from exaone_edge.export.precision import activation_ranges
    from exaone_edge.export.vision import _feeds
    from exaone_edge.vision.geometry import rope_theta

    graph = tmp_path / "vision.onnx"
    shutil.copy2(tiny_vision_dir / "vision.onnx", graph)
    checkpoint = open_checkpoint(tiny_model_dir)
    theta = rope_theta(checkpoint.config["vision_config"])
    feeds = [_feeds(page_image(size, seed), checkpoint, theta) for seed, size in enumerate([(595, 842), (300, 900)])]

    class Pages(CalibrationDataReader):
        def __init__(self) -> None:
            self.pages = iter(feeds)

        def get_next(self):
            return next(self.pages, None)

    calibrator = create_calibrator(graph, ["MatMul"], augmented_model_path=str(tmp_path / "augmented.onnx"))
    calibrator.collect_data(Pages())
    theirs = calibrator.compute_data()
    names = sorted(theirs.data)
    ours = activation_ranges(graph, iter(feeds), names)
    assert len(names) > 20
    for name in names:
        assert np.allclose(ours[name].range_value, theirs[name].range_value, rtol=1e-6, atol=1e-7), (
            name, ours[name].range_value, theirs[name].range_value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["augmented.onnx", "vision.onnx"]  # ours cleaned up


def test_bad_inputs_fail_with_one_line_and_write_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = run_cli("export", str(tiny_model_dir), "-o", str(out), "--precision", "int3")
    assert result.returncode == 2 and "unsupported precision 'int3'" in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pages here")
    result = run_cli("export", str(tiny_model_dir), "-o", str(out), "--precision", "int8", "--calibration", str(empty))
    assert result.returncode == 2 and "no usable PDFs or images" in result.stderr and not out.exists()

    from exaone_edge.export.vision import export_vision

    with pytest.raises(InputError, match="has no page images"):
        export_vision(tiny_model_dir, out, precision="int8", calibration=iter([]), calibration_source="empty set")
    assert not out.exists()


def test_checkpoint_without_vision_tower(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    text_only = tmp_path / "text-only"
    shutil.copytree(tiny_model_dir, text_only)
    index_path = text_only / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(text_only / shard))
        save_file({k: v for k, v in tensors.items() if ".visual." not in f".{k}"}, str(text_only / shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if ".visual." not in f".{k}"}
    index_path.write_text(json.dumps(index))

    from exaone_edge.export.vision import export_vision

    with pytest.raises(CheckpointError, match="no vision-tower tensors"):
        export_vision(text_only, tmp_path / "out")
    result = run_cli("export", str(text_only), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "no vision-tower tensors" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missed_tolerance_and_interruption_leave_nothing(tiny_model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from exaone_edge.export import checklist, vision

    strict = checklist.Tolerance(max_abs=1e-12, min_row_cosine=1.0, mean_row_cosine=1.0)
    monkeypatch.setitem(checklist.TOLERANCES, "fp32", strict)
    out = tmp_path / "strict"
    with pytest.raises(ValidationFailed, match="missed its tolerance") as caught:
        vision.export_vision(tiny_model_dir, out, pages=FAST_PAGES[:1])
    assert caught.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []  # no output dir, no leftover partial dir

    monkeypatch.undo()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vision, "_validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vision.export_vision(tiny_model_dir, tmp_path / "cut", pages=FAST_PAGES[:1])
    assert list(tmp_path.iterdir()) == []


def test_the_reference_forward_never_holds_a_score_matrix(tiny_model_dir: Path) -> None:
    """Eager attention would hold [heads, patches, patches] scores and their softmax: 69 GB for the released
    tower's largest page, past the target box's 64 GB. The reference runs transformers' SDPA instead."""
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.export.vision import _reference

    model, references = _reference(open_checkpoint(tiny_model_dir), [])
    assert references == [] and model.config._attn_implementation == "sdpa"
    assert all(block.attn.config._attn_implementation == "sdpa" for block in model.blocks)
