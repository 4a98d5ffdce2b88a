"""The GPTQ checkpoint's vLLM parts: config keys for MTP drafting, the model card, and --tp refusals before any work."""

from __future__ import annotations

import json

from conftest import run_cli
from exaone_edge.memory_source import load_source
from exaone_edge.quantize.gptq_vllm import mirror_mtp_keys, model_card


def test_mtp_keys_reach_the_top_level(tmp_path):
    config = {"model_type": "exaone4_5", "text_config": {"vocab_size": 153600, "num_nextn_predict_layers": 1}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    mirror_mtp_keys(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["vocab_size"] == 153600 and written["num_nextn_predict_layers"] == 1
    assert written["text_config"] == config["text_config"]
    no_head = {"text_config": {"vocab_size": 10, "num_nextn_predict_layers": 0}}
    (tmp_path / "config.json").write_text(json.dumps(no_head))
    mirror_mtp_keys(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == no_head


def test_model_card_names_the_degrees_and_the_serving_command(tmp_path):
    decoder = load_source("exaone-4.5-33b").spec.decoder
    details = {"bits": 4, "group_size": 64, "calibration_samples": 128, "unquantized": ["-:.*visual.*", "-:.*mtp.*"]}
    card = model_card(tmp_path / "gptq-tp4", tmp_path / "EXAONE-4.5-33B", decoder, details,
                      {"kl_mean": 0.0123, "top1_agreement": 0.95})
    assert "serves TP 1, 2, 4" in card and "group size 64" in card and "| KL divergence, mean | 0.0123 |" in card
    assert (f"vllm serve {tmp_path / 'gptq-tp4'} --tensor-parallel-size 4 --max-model-len 32768 "
            "--no-mm-device-do-normalize --speculative-config") in card


def test_tp_refusals_come_before_any_work(tiny_model_dir, tmp_path):
    # The tiny model: o_proj's input 256 is 64 per GPU at TP 4; 4 attention heads do not split over 8.
    four = run_cli("quantize", str(tiny_model_dir), "--format", "gptq", "--tp", "4", "--group-size", "128",
                   "-o", str(tmp_path / "q4"))
    assert four.returncode == 2 and "Traceback" not in four.stderr
    assert ("--tp 4 with --group-size 128: self_attn.o_proj's input width 256 is 64 per GPU at TP 4, not a multiple "
            "of group size 128. Use --group-size 64 (it serves TP 4), or a lower --tp.") in four.stderr
    eight = run_cli("quantize", str(tiny_model_dir), "--format", "gptq", "--tp", "8", "-o", str(tmp_path / "q8"))
    assert eight.returncode == 2 and "4 attention heads do not split over 8 GPUs" in eight.stderr
    assert not (tmp_path / "q4").exists() and not (tmp_path / "q8").exists()
