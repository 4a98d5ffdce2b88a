"""GPTQ on CPU with the tiny model: 8-bit closer than 4-bit, vision tower untouched, the layer-streamed
candidate equal to the whole GPTQ model, clear errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from exaone_edge.errors import InputError
from exaone_edge.manifest import read_manifest
from exaone_edge.quantize.gptq import _chat, check_options, quantize_gptq


def _page(index: int) -> Image.Image:
    page = Image.new("RGB", (224 + 32 * (index % 3), 288), "white")
    draw = ImageDraw.Draw(page)
    for line in range(8):
        draw.text((12, 12 + 30 * line), f"Item {line}: {index * 97 + line * 13}.00 USD", fill="black")
    return page


def _chats(count: int, offset: int = 0):
    return [_chat(_page(i + offset), f"What is item {i % 8}?", f"{(i + offset) * 97 + (i % 8) * 13}.00 USD")
            for i in range(count)]


@pytest.fixture(scope="module")
def gptq_models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    calibration, evaluation = _chats(8), _chats(2, offset=100)
    return {bits: quantize_gptq(tiny_model_dir, root / f"w{bits}", calibration, evaluation, bits=bits)
            for bits in (8, 4)}


def test_eight_bit_is_closer_to_the_source_than_four(gptq_models):
    eight, four = gptq_models[8], gptq_models[4]
    assert 0 < eight.kl_mean < four.kl_mean
    assert eight.top1_agreement >= four.top1_agreement
    for result in gptq_models.values():
        manifest = read_manifest(result.path, kind="gptq")  # checksums verified
        assert manifest.validation["kl_mean"] == pytest.approx(result.kl_mean)


def test_checkpoint_layout_for_vllm_and_transformers(gptq_models, tiny_model_dir):
    path = gptq_models[4].path
    quant = json.loads((path / "quantize_config.json").read_text())
    assert quant["bits"] == 4 and quant["format"] == "gptq" and quant["group_size"] == 128
    assert set(quant["dynamic"]) == {"-:.*visual.*", "-:.*mtp.*"}
    for name in ("preprocessor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (path / name).is_file(), name
    # vLLM: the MTP drafter reads these at config.json's top level; the degrees group 128 serves (o_proj's 256 inputs
    # are 128 a GPU at TP 2, 64 at TP 4), in the manifest and the model card.
    config = json.loads((path / "config.json").read_text())
    assert config["vocab_size"] == config["text_config"]["vocab_size"] and config["num_nextn_predict_layers"] == 1
    assert read_manifest(path, kind="gptq").details["tensor_parallel"] == [1, 2]
    card = (path / "README.md").read_text()
    assert "serves TP 1, 2" in card and "--no-mm-device-do-normalize" in card and str(path) in card


def test_vision_tower_and_mtp_head_are_byte_identical(gptq_models, tiny_model_dir):
    from safetensors import safe_open

    source_index = json.loads((tiny_model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    out = gptq_models[4].path
    shards = sorted(out.glob("*.safetensors"))
    kept = 0
    for shard in shards:
        with safe_open(shard, framework="pt") as quantized:
            for name in quantized.keys():
                if not (name.startswith("model.visual.") or name.startswith("mtp.")):
                    continue
                with safe_open(tiny_model_dir / source_index[name], framework="pt") as original:
                    expected = original.get_tensor(name)
                actual = quantized.get_tensor(name)
                assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
                assert actual.view(-1).view(dtype=__import__("torch").uint8).equal(
                    expected.view(-1).view(dtype=__import__("torch").uint8)), name
                kept += 1
    assert kept == sum(1 for n in source_index if n.startswith(("model.visual.", "mtp.")))


@pytest.mark.parametrize("bits", [4, 8])
def test_streamed_candidate_equals_the_whole_gptq_model(gptq_models, tiny_model_dir, bits):
    """The fidelity check's candidate, one decoder layer resident, computes what transformers + GPTQModel's kernel
    compute with the whole GPTQ model loaded (float32, CPU). Tolerance 1e-4, as for the dense streamed reference
    (float32 summation order); measured 0.0: the dense weights are the kernel's own dequantization, bit for bit."""
    import numpy as np
    import torch
    from transformers import AutoProcessor, Exaone4_5_ForConditionalGeneration

    from exaone_edge.reference.kernels import eager_gptq_kernels
    from exaone_edge.torch_weights import GptqShardReader
    from exaone_edge.reference.streamed import StreamedReference, conversation_inputs

    path = gptq_models[bits].path
    inputs = conversation_inputs(AutoProcessor.from_pretrained(tiny_model_dir), _chats(2, offset=100))
    streamed = StreamedReference(path, processor_dir=tiny_model_dir, dtype="float32", device="cpu")
    assert isinstance(streamed.weights, GptqShardReader)
    logits = [np.concatenate(chunks) for chunks in streamed.sequence_logits(inputs)]
    # One pass, every stored tensor but the MTP head's read exactly once, no decoder layer left resident.
    layout = streamed.weights.layout
    assert streamed.passes == 1
    assert streamed.weights.bytes_read == sum(t.nbytes for name, t in layout.items() if not name.startswith("mtp."))
    assert all(p.is_meta for p in streamed.model.model.language_model.layers.parameters())
    with eager_gptq_kernels(), torch.no_grad():  # the only place the whole GPTQ model is still loaded
        whole = Exaone4_5_ForConditionalGeneration.from_pretrained(path, dtype=torch.float32, device_map="cpu").eval()
        expected = [whole(**item).logits[0].numpy() for item in inputs]
    for mine, theirs in zip(logits, expected, strict=True):
        assert mine.shape == theirs.shape
        assert np.abs(mine - theirs).max() <= 1e-4


@pytest.mark.parametrize(
    "bits, group, message",
    [(3, 128, "--bits 3 is not supported"), (4, 0, "--group-size 0 is invalid"),
     (4, 96, "does not divide the decoder's input widths")],
)
def test_bad_options(bits, group, message):
    with pytest.raises(InputError, match=message):
        check_options(bits, group, [256, 512])


def test_relative_output_path_from_the_cli(tiny_model_dir, tmp_path):
    """GPTQModel works inside a scratch directory; a relative -o must still land where the user said."""
    from conftest import run_cli

    result = run_cli("quantize", str(tiny_model_dir), "--format", "gptq", "--bits", "8", "-o", "out-8", "--json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["bits"] == 8  # GPTQModel's own log lines went to stderr
    assert (tmp_path / "out-8" / "quantize_config.json").is_file()
    assert read_manifest(tmp_path / "out-8", kind="gptq").details["bits"] == 8


def test_too_small_calibration_set(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="GPTQ needs at least 4"):
        quantize_gptq(tiny_model_dir, tmp_path / "out", _chats(2), _chats(1))
    assert not (tmp_path / "out").exists()
