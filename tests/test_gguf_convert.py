"""Checkpoint → GGUF: llama.cpp's logits, tokenizer and chat template against transformers on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exaone_edge.spec import RELEASED_33B_CONFIG
from gguf_fixtures import TEXT_PROMPTS, converted, hf_model, hf_tokenizer, image_inputs, page_image

# llama.cpp's CPU matmul rounds activations to F16 for F16 weights (measured ~2e-3 on the tiny
# model); the F16 weights themselves are checked exact against the checkpoint below.
TOLERANCE = {"F32": 1e-3, "F16": 5e-3}


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


def _runner(path):
    from exaone_edge.llama_context import LlamaContext, reference_options

    return LlamaContext(path, reference_options(512))


@pytest.mark.parametrize("out_type", ["F32", "F16"])
def test_text_logits_match_transformers(tiny_model_dir, gguf_dir, out_type):
    import torch

    path = converted(tiny_model_dir, out_type, gguf_dir)
    model, tokenizer = hf_model(tiny_model_dir), hf_tokenizer(tiny_model_dir)
    with _runner(path) as runner:
        for prompt in TEXT_PROMPTS:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                reference = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            diff = np.abs(runner.logits_all([ids]) - reference).max()
            assert diff <= TOLERANCE[out_type], f"{out_type} max abs diff {diff:.2e} on {prompt[:30]!r}"


@pytest.mark.parametrize("out_type", ["F32", "F16"])
def test_image_rows_fed_as_embeddings_match_transformers(tiny_model_dir, gguf_dir, out_type):
    """HF runs the real path (pixels → vision → placeholders); llama.cpp gets the rows as embeddings."""
    import torch

    path = converted(tiny_model_dir, out_type, gguf_dir)
    model, tokenizer = hf_model(tiny_model_dir), hf_tokenizer(tiny_model_dir)
    inputs, rows = image_inputs(tiny_model_dir, page_image(1, size=(320, 256)))
    image_token = model.config.image_token_id
    before = tokenizer("<|user|>\n<vision>", add_special_tokens=False)["input_ids"]
    after = tokenizer("</vision>What is the total of item 2?<|endofturn|>\n<|assistant|>\n<think>\n\n</think>\n\n",
                      add_special_tokens=False)["input_ids"]
    ids = before + [image_token] * len(rows) + after
    assert len(ids) > 2 * model.config.text_config.sliding_window  # the window is exercised
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), pixel_values=inputs["pixel_values"],
                          image_grid_thw=inputs["image_grid_thw"]).logits[0].numpy()
    with _runner(path) as runner:
        logits = runner.logits_all([before, rows, after])
    diff = np.abs(logits - reference).max()
    assert diff <= TOLERANCE[out_type], f"{out_type} max abs diff {diff:.2e}"


def test_f16_weights_are_the_checkpoint_weights(tiny_model_dir, gguf_dir):
    from gguf import GGUFReader
    from safetensors import safe_open

    reader = GGUFReader(converted(tiny_model_dir, "F16", gguf_dir))
    tensors = {t.name: t for t in reader.tensors}
    assert len([n for n in tensors if n.endswith("attn_q.weight")]) == 65  # 64 layers and the MTP head's
    assert len([n for n in tensors if n.startswith("blk.64.")]) == 15  # the layer's 11 and nextn's 4
    pairs = {
        "blk.5.ffn_down.weight": "model.language_model.layers.5.mlp.down_proj.weight",
        "blk.63.post_ffw_norm.weight": "model.language_model.layers.63.post_feedforward_layernorm.weight",
        "output.weight": "lm_head.weight",
        "blk.64.attn_q.weight": "mtp.layers.0.self_attn.q_proj.weight",
        "blk.64.nextn.eh_proj.weight": "mtp.fc.weight",
        "blk.64.nextn.enorm.weight": "mtp.pre_fc_norm_embedding.weight",
        "blk.64.nextn.hnorm.weight": "mtp.pre_fc_norm_hidden.weight",
        "blk.64.nextn.shared_head_norm.weight": "mtp.norm.weight",
        "blk.64.post_ffw_norm.weight": "mtp.layers.0.post_feedforward_layernorm.weight",
    }
    from exaone_edge.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(tiny_model_dir)
    for gguf_name, hf_name in pairs.items():
        with safe_open(checkpoint.tensors[hf_name].file, framework="pt") as shard:
            source = shard.get_tensor(hf_name).float().numpy()
        stored = np.asarray(tensors[gguf_name].data).reshape(source.shape)
        expected = source if source.ndim == 1 else source.astype(np.float16)
        assert stored.dtype == expected.dtype and np.array_equal(stored, expected), gguf_name


def test_metadata_records_swa_pattern_rope_and_provenance(tiny_model_dir, gguf_dir):
    from exaone_edge import __version__
    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.quantize.gguf_convert import checkpoint_hash

    with _runner(converted(tiny_model_dir, "F16", gguf_dir)) as runner:
        assert runner.model.meta("general.architecture") == "exaone4"
        assert runner.model.meta("exaone4.block_count") == "65"  # as llama.cpp's converter: 64 + the MTP head
        assert runner.model.meta("exaone4.nextn_predict_layers") == "1"
        assert runner.model.meta("exaone4.attention.sliding_window") == "32"
        assert runner.model.meta("tokenizer.ggml.pre") == "exaone-moe"  # EXAONE 4.5 uses the K-EXAONE split
        assert runner.model.meta("exaone_edge.toolkit_version") == __version__
        assert runner.model.meta("exaone_edge.source_checkpoint_sha256") == checkpoint_hash(open_checkpoint(tiny_model_dir))
        assert runner.model.meta("exaone_edge.mtp_policy") == "kept"


TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog. Revenue grew 12.5% year-over-year.",
    "대한민국 헌법 제1조 ① 대한민국은 민주공화국이다. 합계 금액: 1,823,250원",
    "0 1 12 123 1234 12345 123456 3.14159 -42 1e-5 2024-12-31 ₩1,000,000 $18,232.50",
    "| 항목 | 수량 | 단가 |\n|---|---:|---:|\n| Widget | 3 | 1,200 |\n\n\tindented\t\ttabs   spaces",
    "<|user|>\n<vision><|image_pad|><|image_pad|></vision>합계는?<|endofturn|>\n<|assistant|>\n<think>\n\n</think>\n\n",
    "  leading spaces, émojis 🚀📄, mixed 한국어English123 and 'quotes' \"double\" don't",
]


@pytest.mark.parametrize("text", TOKENIZER_TEXTS, ids=["english", "korean", "digits", "table", "special", "mixed"])
def test_tokenization_is_identical_to_hf(tiny_model_dir, gguf_dir, text):
    tokenizer = hf_tokenizer(tiny_model_dir)
    with _runner(converted(tiny_model_dir, "F16", gguf_dir)) as runner:
        assert runner.model.tokenize(text, add_special=False) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert runner.model.tokenize(text, add_special=True) == tokenizer(text)["input_ids"]


def test_chat_template_renders_like_hf(tiny_model_dir, gguf_dir):
    tokenizer = hf_tokenizer(tiny_model_dir)
    with _runner(converted(tiny_model_dir, "F16", gguf_dir)) as runner:
        template = runner.model.chat_template()
    conversations = [
        [{"role": "user", "content": "What is the invoice total?"}],
        [
            {"role": "system", "content": "Answer from the document only."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "계약 기간은?"}]},
            {"role": "assistant", "content": "2년입니다."},
            {"role": "user", "content": "And the penalty?"},
        ],
    ]
    for messages in conversations:
        for thinking in (True, False):
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=thinking)
            rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                     add_generation_prompt=True, enable_thinking=thinking)
            assert rendered == expected


def test_bad_inputs_are_typed_errors(tiny_model_dir, tmp_path):
    import shutil

    from exaone_edge.errors import CheckpointError, InputError
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    with pytest.raises(InputError, match="not one of"):
        convert_to_gguf(tiny_model_dir, tmp_path / "x.gguf", "Q3")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    next(broken.glob("model-0000*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        convert_to_gguf(broken, tmp_path / "x.gguf", "F16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_sliding_window_depth_rule(tiny_model_dir, tmp_path):
    """The real 33B config converts (64 layers, the MTP head counted apart); any other depth with sliding
    layers is refused, because llama.cpp would silently run every layer as global attention."""
    import json
    import shutil

    from exaone_edge.errors import CheckpointError
    from exaone_edge.quantize.gguf_convert import check_swa_depth, convert_to_gguf
    from exaone_edge.spec import decoder_spec

    real = json.loads(RELEASED_33B_CONFIG.read_text())["text_config"]
    check_swa_depth(decoder_spec(real, Path("config.json")), Path("config.json"))
    shallow = tmp_path / "shallow"
    shutil.copytree(tiny_model_dir, shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 60
    config["text_config"]["layer_types"] = config["text_config"]["layer_types"][:60]
    (shallow / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="exactly 64 layers"):
        convert_to_gguf(shallow, tmp_path / "x.gguf", "F16")
    assert not (tmp_path / "x.gguf").exists()


def test_a_wrong_pre_tokenizer_fails_validation_and_leaves_no_file(tiny_model_dir, tmp_path, monkeypatch):
    from exaone_edge.errors import ValidationFailed
    from exaone_edge.quantize import gguf_vocab
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    # qwen2's split keeps words apart, unlike exaone-moe's multi-word letter runs
    monkeypatch.setitem(gguf_vocab.SPLIT_NAMES, gguf_vocab.EXAONE_MOE_REGEX, "qwen2")
    with pytest.raises(ValidationFailed, match="tokenizes"):
        convert_to_gguf(tiny_model_dir, tmp_path / "x.gguf", "F16")
    assert list(tmp_path.iterdir()) == []


def test_pre_tokenizer_is_read_from_tokenizer_json():
    from exaone_edge.errors import CheckpointError
    from exaone_edge.quantize.gguf_vocab import _GPT2_REGEX, pre_tokenizer_name

    def split(regex):
        return {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": regex}},
                                                      {"type": "ByteLevel", "use_regex": False}]}

    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}, Path("t")) == "exaone4"
    assert pre_tokenizer_name(split(_GPT2_REGEX), Path("t")) == "exaone4"
    with pytest.raises(CheckpointError, match="no name for"):
        pre_tokenizer_name(split(r"\p{L}+|\d"), Path("t"))
    with pytest.raises(CheckpointError, match="byte-level"):
        pre_tokenizer_name({"type": "Metaspace"}, Path("t"))


def test_bf16_weights_are_the_checkpoint_bytes_and_run(tiny_model_dir, gguf_dir):
    from gguf import GGUFReader
    from safetensors import safe_open

    from exaone_edge.checkpoint import open_checkpoint

    path = converted(tiny_model_dir, "BF16", gguf_dir)
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    checkpoint = open_checkpoint(tiny_model_dir)
    name = "model.language_model.layers.5.mlp.down_proj.weight"
    import torch

    with safe_open(checkpoint.tensors[name].file, framework="pt") as shard:
        source = shard.get_tensor(name).view(torch.uint16).numpy()
    stored = np.asarray(tensors["blk.5.ffn_down.weight"].data).view(np.uint16).reshape(source.shape)
    assert np.array_equal(stored, source)
    with _runner(path) as runner:
        assert np.isfinite(runner.logits_all([[5, 6, 7, 8]])).all()


def test_pieces_converted_by_several_threads_give_the_same_file(tiny_model_dir, gguf_dir, tmp_path, monkeypatch):
    from exaone_edge import safetensors_stream
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    whole = converted(tiny_model_dir, "F16", gguf_dir)
    monkeypatch.setattr(safetensors_stream, "PIECE_BYTES", 4096)  # every matrix in many pieces
    split = convert_to_gguf(tiny_model_dir, tmp_path / "split.gguf", "F16", workers=3).path
    assert split.read_bytes() == Path(whole).read_bytes()


def test_values_beyond_f16_range_are_refused(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from exaone_edge.checkpoint import open_checkpoint
    from exaone_edge.errors import CheckpointError
    from exaone_edge.quantize.gguf_convert import convert_to_gguf

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    name = "model.language_model.layers.3.mlp.up_proj.weight"
    shard = open_checkpoint(model).tensors[name].file
    tensors = load_file(str(shard))
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = torch.tensor(70000.0, dtype=tensors[name].dtype)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="beyond F16's range"):
        convert_to_gguf(model, tmp_path / "x.gguf", "F16")
    assert not list(tmp_path.glob("*.gguf"))
    assert convert_to_gguf(model, tmp_path / "x.gguf", "BF16").path.exists()  # the suggested fix works
