"""`exaone-edge quantize`: llama.cpp quants with a document imatrix (image rows included), bundle, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from gguf_fixtures import converted, hf_model, image_inputs, page_image

QUESTIONS = [
    ("What is the invoice total?", "The total is 1,234.56 USD."),
    ("합계 금액은 얼마입니까?", "합계 금액은 1,823,250원입니다."),
    ("Which item costs the most?", "Item 2 at 871.40."),
    ("계약 기간은?", "2년"),
    ("What is the due date?", "2024-12-31"),
]


def _samples():
    from exaone_edge.quantize.calibration import CalibrationSample

    return [CalibrationSample(page_image(i, size=(256, 192)), q, a, f"page {i}") for i, (q, a) in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def q4(tiny_model_dir, tmp_path_factory):
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    root = tmp_path_factory.mktemp("q4")
    result = quantize_checkpoint(tiny_model_dir, root / "bundle", bits=4, calibration=_samples(),
                                 work_dir=root / "work", keep_work=True)
    return result, root


def test_recipes_and_bits():
    from exaone_edge.errors import InputError
    from exaone_edge.quantize.recipes import RECIPES, choose_recipe

    assert choose_recipe(None, None).level == "Q4_K_M" == choose_recipe(4, None).level
    assert choose_recipe(8, None).level == "Q8_0" and not RECIPES["Q8_0"].uses_imatrix
    assert {"Q6_K", "Q5_K_M", "Q4_K_S", "IQ4_XS"} <= set(RECIPES)
    assert choose_recipe(4, "iq4_xs").level == "IQ4_XS"
    for bits, recipe in ((3, None), (None, "Q3_K_L"), (8, "Q4_K_M")):
        with pytest.raises(InputError):
            choose_recipe(bits, recipe)


def test_q4_bundle_is_complete_and_verified(q4):
    from exaone_edge.manifest import read_manifest

    result, _ = q4
    manifest = read_manifest(result.bundle, kind="bundle", verify=True)
    for name in ("decoder.gguf", "imatrix.gguf", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "preprocessor_config.json"):
        assert name in manifest.files, name
    decoder = manifest.details["decoder"]
    assert decoder["level"] == "Q4_K_M" and decoder["imatrix"] and 4.5 < decoder["bits_per_weight"] < 5.5
    assert decoder["bytes"] == (result.bundle / "decoder.gguf").stat().st_size
    assert manifest.inputs["checkpoint_sha256"] and manifest.inputs["calibration_sha256"]
    fidelity = manifest.validation["decoder_vs_f16"]
    assert fidelity["prompts_with_images"] >= 1 and 0 < fidelity["kl_mean"] < 0.1


def test_imatrix_covers_every_quantized_tensor(q4):
    from gguf import GGMLQuantizationType, GGUFReader

    from exaone_edge.quantize.imatrix import load_imatrix

    result, _ = q4
    imatrix = load_imatrix(result.bundle / "imatrix.gguf")
    tensors = GGUFReader(result.bundle / "decoder.gguf").tensors
    quantized = {t.name for t in tensors if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)}
    # token_embd is a row lookup, not a matmul: no activations enter it, llama-imatrix has no entry either. The MTP
    # head (blk.64) runs only in a drafting context, never in the target's forward pass: quantized without one.
    head = {name for name in quantized if name.startswith("blk.64.")}
    assert len(head) == 8  # its layer's 7 matrices and nextn.eh_proj
    assert quantized - {"token_embd.weight"} - head == set(imatrix.sums)
    assert len(imatrix.sums) == 64 * 7 + 1
    assert all(imatrix.counts[name] == imatrix.counts["blk.0.attn_q.weight"] for name in imatrix.sums)
    assert imatrix.chunks == 4  # four calibration pages; one of five is held out for the KL check
    reader = GGUFReader(result.bundle / "imatrix.gguf")
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "imatrix"
    assert "imatrix.datasets" in reader.fields and "imatrix.chunk_size" in reader.fields


def test_imatrix_changes_q4_k_m_weights(q4, tmp_path):
    from gguf import GGUFReader

    from exaone_edge.quantize.llama_quantize import quantize_tensors
    from exaone_edge.quantize.recipes import RECIPES

    result, root = q4
    plain = quantize_tensors(root / "work" / "decoder-F16.gguf", tmp_path / "plain.gguf", RECIPES["Q4_K_M"])
    with_imatrix = {t.name: np.asarray(t.data) for t in GGUFReader(result.bundle / "decoder.gguf").tensors}
    without = {t.name: np.asarray(t.data) for t in GGUFReader(plain).tensors}
    changed = {name for name in with_imatrix if not np.array_equal(with_imatrix[name], without[name])}
    assert {f"blk.{i}.{w}.weight" for i in (0, 31, 63) for w in ("attn_q", "ffn_gate", "ffn_down")} <= changed
    assert len(changed) >= 0.9 * (64 * 7 + 1)
    assert not any(name.endswith("_norm.weight") for name in changed)


def test_imatrix_with_image_rows_matches_pytorch_hooks(tiny_model_dir, tmp_path):
    """Σx² from llama.cpp's eval callback == Σx² at the inputs of the HF nn.Linear layers, image rows included."""
    import torch

    from exaone_edge.quantize.imatrix import collect_imatrix

    model = hf_model(tiny_model_dir)
    inputs, rows = image_inputs(tiny_model_dir, page_image(3, size=(256, 192)))
    before, after = [5, 73], [74, 200, 300, 400, 53, 6]
    ids = before + [model.config.image_token_id] * len(rows) + after
    layers = model.model.language_model.layers
    watched = {"blk.0.attn_q.weight": layers[0].self_attn.q_proj, "blk.17.attn_output.weight": layers[17].self_attn.o_proj,
               "blk.40.ffn_down.weight": layers[40].mlp.down_proj, "output.weight": model.lm_head}
    sums: dict[str, np.ndarray] = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, out, name=name: sums.__setitem__(name, (args[0][0].double() ** 2).sum(0).numpy()))
        for name, module in watched.items()]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    finally:
        for hook in hooks:
            hook.remove()
    imatrix = collect_imatrix(converted(tiny_model_dir, "F32", tmp_path), [[before, rows, after]], ["test"])
    for name in watched:
        assert imatrix.counts[name] == len(ids)
        np.testing.assert_allclose(imatrix.sums[name], sums[name], rtol=1e-3, err_msg=name)


def test_q8_0_and_q4_k_m_kl_vs_f16(q4, tiny_model_dir, tmp_path):
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    q4_result, root = q4
    q8_result = quantize_checkpoint(tiny_model_dir, tmp_path / "q8", bits=8, calibration=_samples(),
                                    work_dir=root / "work", keep_work=True)
    assert q8_result.imatrix is None and "F16 GGUF" in q8_result.reused
    kl8, kl4 = q8_result.fidelity.logits.kl_mean, q4_result.fidelity.logits.kl_mean
    print(f"mean KL vs F16: Q8_0 {kl8:.3e}, Q4_K_M {kl4:.3e}")
    assert 0 < kl8 < kl4 < 0.1
    assert q8_result.fidelity.logits.top1_agreement > 0.8


def test_rerun_reuses_valid_intermediates_and_redoes_corrupt_ones(q4, tiny_model_dir, tmp_path):
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    _, root = q4
    again = quantize_checkpoint(tiny_model_dir, tmp_path / "again", bits=4, calibration=_samples(),
                                work_dir=root / "work", keep_work=True)
    assert set(again.reused) == {"F16 GGUF", "importance matrix"}
    imatrix = root / "work" / "imatrix.gguf"
    original = imatrix.read_bytes()
    imatrix.write_bytes(original[: len(original) // 2])  # a half-written file from a crash
    redone = quantize_checkpoint(tiny_model_dir, tmp_path / "redone", bits=4, calibration=_samples(),
                                 work_dir=root / "work", keep_work=True)
    assert redone.reused == ["F16 GGUF"] and imatrix.read_bytes() == original
    other = _samples()[:2] + _samples()[3:]
    changed = quantize_checkpoint(tiny_model_dir, tmp_path / "changed", bits=4, calibration=other,
                                  work_dir=tmp_path / "work2", keep_work=False)
    assert changed.reused == [] and not (tmp_path / "work2").exists()


def test_interrupted_run_leaves_no_final_files(tiny_model_dir, tmp_path, monkeypatch):
    from exaone_edge.quantize import llama_quantize
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_quantize, "_run_quantizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(tiny_model_dir, tmp_path / "out", bits=8, work_dir=tmp_path / "work")
    assert not (tmp_path / "out").exists()
    leftovers = sorted(p.name for p in (tmp_path / "work").iterdir())
    # finished, verified, reusable; the marker says a run of ours made the folder (so a later run may remove it)
    assert leftovers == [".exaone-edge-work.json", "decoder-F16.gguf", "decoder-F16.gguf.json"]


def test_no_disk_space_is_checked_up_front(tiny_model_dir, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from exaone_edge.errors import InputError
    from exaone_edge.quantize.pipeline import quantize_checkpoint

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    with pytest.raises(InputError, match="not enough disk space"):
        quantize_checkpoint(tiny_model_dir, tmp_path / "out", bits=8, work_dir=tmp_path / "work")
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_inputs_are_one_line_errors(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    next(broken.glob("model-0000*.safetensors")).unlink()
    cases = [
        (["quantize", str(tiny_model_dir), "--bits", "3", "-o", str(tmp_path / "a")], "--bits 3"),
        (["quantize", str(tiny_model_dir), "--recipe", "Q3_K_XL", "-o", str(tmp_path / "b")], "unknown recipe"),
        (["quantize", str(broken), "--bits", "8", "-o", str(tmp_path / "c")], "missing shard"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_cli_quantize_8bit_json(tiny_model_dir, tmp_path):
    result = run_cli("quantize", str(tiny_model_dir), "--bits", "8", "-o", str(tmp_path / "q8"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["level"] == "Q8_0" and payload["imatrix"] is None and payload["fidelity"]["kl_mean"] > 0
    assert (tmp_path / "q8" / "decoder.gguf").is_file() and not (tmp_path / ".q8.work").exists()


def test_cli_f16_reference_and_q4_without_imatrix(tiny_model_dir, tmp_path):
    """The levels a validation report compares: F16 (KL 0 by construction) and Q4_K_M without the imatrix."""
    f16 = run_cli("quantize", str(tiny_model_dir), "--recipe", "F16", "-o", str(tmp_path / "f16"), "--json")
    assert f16.returncode == 0, f16.stderr
    payload = json.loads(f16.stdout)
    assert payload["level"] == "F16" and payload["imatrix"] is None and payload["fidelity"]["kl_mean"] < 1e-9
    plain = run_cli("quantize", str(tiny_model_dir), "--bits", "4", "--no-imatrix", "-o", str(tmp_path / "q4"), "--json")
    assert plain.returncode == 0, plain.stderr
    payload = json.loads(plain.stdout)
    assert payload["level"] == "Q4_K_M" and payload["imatrix"] is None and payload["fidelity"]["kl_mean"] > 0
    assert not (tmp_path / "q4" / "imatrix.gguf").exists()


def test_bundle_carries_a_verified_vision_export_and_refuses_an_altered_one(tiny_model_dir, vision_export, tmp_path):
    import shutil

    from exaone_edge.errors import ArtifactError
    from exaone_edge.quantize.pipeline import quantize_checkpoint
    from exaone_edge.bundle import load_bundle

    export = tmp_path / "export"
    shutil.copytree(vision_export, export)
    result = quantize_checkpoint(tiny_model_dir, tmp_path / "bundle", bits=8, vision_dir=export,
                                 work_dir=tmp_path / "work")
    bundle = load_bundle(result.bundle, verify=True)
    assert bundle.manifest.details["vision"]["precision"] == "fp32"
    assert "vision/vision.onnx" in bundle.manifest.files and (result.bundle / "vision" / "manifest.json").is_file()
    (export / "preprocessor_config.json").write_text("{}")  # altered after export: refused before any work
    with pytest.raises(ArtifactError, match="checksum"):
        quantize_checkpoint(tiny_model_dir, tmp_path / "again", bits=8, vision_dir=export, work_dir=tmp_path / "w2")
    assert not (tmp_path / "again").exists() and not (tmp_path / "w2").exists()


def test_cli_quantize_4bit_with_a_folder_of_pages(tiny_model_dir, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for index in range(5):
        page_image(10 + index, size=(256, 192)).save(pages / f"page-{index}.png")
    result = run_cli("quantize", str(tiny_model_dir), "--bits", "4", "--calibration", str(pages),
                     "-o", str(tmp_path / "q4"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["level"] == "Q4_K_M" and payload["imatrix"].endswith("imatrix.gguf")
    assert payload["fidelity"]["prompts_with_images"] >= 1
    assert "imatrix: calibration prompts" in result.stderr


def test_calibration_from_a_document_set_keeps_pages_and_holds_out_documents():
    from exaone_edge.documents import generate_set
    from exaone_edge.quantize.calibration import load_calibration, samples_from_documents

    documents = generate_set(4, ["en", "ko"], 0)
    samples = samples_from_documents(documents)
    assert all(sample.image is not None and sample.image.mode == "RGB" for sample in samples)
    assert any(sample.answer and any("\uac00" <= ch <= "\ud7a3" for ch in sample.question) for sample in samples)
    assert len({id(sample.image) for sample in samples}) == len(documents.documents)  # one render per page
    calibration = load_calibration(None, builtin_documents=4)
    held_out = {s.source.split()[0] for s in calibration.evaluation}
    assert held_out and held_out.isdisjoint({s.source.split()[0] for s in calibration.calibration})
    assert calibration.content_hash == documents.content_hash


def test_imatrix_file_reads_in_ggml_the_way_llama_quantize_loads_it(q4):
    """llama-quantize --imatrix uses ggml's gguf reader and requires u32 chunk keys, a string-array dataset
    list and F32 `.in_sum2` / `.counts` pairs; read our file with that same C reader."""
    import ctypes
    import os

    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype, lib.gguf_init_from_file.argtypes = ctypes.c_void_p, [ctypes.c_char_p, InitParams]
    for name, restype, argtypes in (
        ("gguf_find_key", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        ("gguf_get_kv_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_arr_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_val_u32", ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_get_n_tensors", ctypes.c_int64, [ctypes.c_void_p]),
        ("gguf_find_tensor", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        ("gguf_get_tensor_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        ("gguf_free", None, [ctypes.c_void_p]),
    ):
        getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
    result, _ = q4
    ctx = lib.gguf_init_from_file(str(result.bundle / "imatrix.gguf").encode(), InitParams(True, None))
    assert ctx
    try:
        uint32, string, array, f32 = 4, 8, 9, 0
        datasets = lib.gguf_find_key(ctx, b"imatrix.datasets")
        assert lib.gguf_get_kv_type(ctx, datasets) == array and lib.gguf_get_arr_type(ctx, datasets) == string
        for key in (b"imatrix.chunk_count", b"imatrix.chunk_size"):
            assert lib.gguf_get_kv_type(ctx, lib.gguf_find_key(ctx, key)) == uint32
        assert lib.gguf_get_val_u32(ctx, lib.gguf_find_key(ctx, b"imatrix.chunk_count")) == 4
        assert lib.gguf_get_n_tensors(ctx) == 2 * (64 * 7 + 1)
        for suffix in (b".in_sum2", b".counts"):
            tensor = lib.gguf_find_tensor(ctx, b"blk.63.ffn_down.weight" + suffix)
            assert tensor >= 0 and lib.gguf_get_tensor_type(ctx, tensor) == f32
    finally:
        lib.gguf_free(ctx)


def test_ctrl_c_inside_the_eval_callback_is_raised_after_decode(tiny_model_dir, tmp_path):
    import os
    import signal

    from exaone_edge.quantize.imatrix import ImatrixCollector
    from exaone_edge.llama_context import LlamaContext, reference_options

    collector = ImatrixCollector()
    sent = []

    def callback(tensor, ask, data):
        if not ask and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # arrives while Python runs inside llama_decode
        return collector(tensor, ask, data)

    with LlamaContext(converted(tiny_model_dir, "F16", tmp_path), reference_options(256), cb_eval=callback) as llama:
        with pytest.raises(KeyboardInterrupt):
            llama.evaluate([[5, 6, 7, 8, 9]])
    assert collector.error is None and len(collector.imatrix.sums) == 64 * 7 + 1  # the graph ran to the end


@pytest.fixture(scope="module")
def vision_export(tiny_vision_dir):
    return tiny_vision_dir


def test_4bit_bundle_with_the_onnx_export_calibrates_through_it_and_runs(tiny_model_dir, vision_export, tmp_path):
    """With --vision, calibration rows come from the exported encoder (what serving uses); the bundle then
    answers through the runtime's own engine."""
    from exaone_edge.quantize.pipeline import quantize_checkpoint
    from exaone_edge.bundle import load_bundle

    result = quantize_checkpoint(tiny_model_dir, tmp_path / "bundle", bits=4, calibration=_samples(),
                                 vision_dir=vision_export, work_dir=tmp_path / "work", keep_work=True)
    bundle = load_bundle(result.bundle, verify=True)
    assert bundle.manifest.details["vision"]["precision"] == "fp32"
    assert (result.bundle / "vision" / "vision.onnx").is_file()
    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.generation import GenerationParams

    engine = Engine.load(result.bundle, n_ctx=1024)
    try:
        messages = [{"role": "user", "content": [{"type": "image", "image": page_image(7, size=(256, 192))},
                                                 {"type": "text", "text": "What is the invoice total?"}]}]
        chunks = list(engine.generate(messages, GenerationParams(max_tokens=6)))
    finally:
        engine.close()
    assert 1 <= chunks[-1].usage.completion_tokens <= 6 and chunks[-1].usage.image_rows > 0 and engine.vision_runs == 1
    sidecar = json.loads((tmp_path / "work" / "imatrix.gguf.json").read_text())
    torch_rows = quantize_checkpoint(tiny_model_dir, tmp_path / "b2", bits=4, calibration=_samples(),
                                     work_dir=tmp_path / "work", keep_work=True)
    assert "importance matrix" not in torch_rows.reused  # other row source → other inputs hash → recomputed
    assert json.loads((tmp_path / "work" / "imatrix.gguf.json").read_text())["inputs"] != sidecar["inputs"]
