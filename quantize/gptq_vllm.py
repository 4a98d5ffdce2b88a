"""What a vLLM user needs from the GPTQ checkpoint beside the weights: the config keys vLLM's MTP drafter reads,
the tensor-parallel degrees the group size serves, and a model card with the serving command (docs/scale-out.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from exaone_edge.files import read_json, write_json, write_text
from exaone_edge.spec import DecoderSpec
from exaone_edge.tensor_parallel import supported_tp

# vLLM 0.32.0's EXAONE 4.5 MTP drafter reads `config.vocab_size` (and the head count) from the top level of the
# multimodal config (vllm/model_executor/models/exaone4_5_mtp.py); transformers keeps them in text_config only, and
# the drafter then dies at start with "'Exaone4_5_Config' object has no attribute 'vocab_size'".
TOP_LEVEL_FOR_MTP = ("vocab_size", "num_nextn_predict_layers")
NORMALIZE_FIX = "--no-mm-device-do-normalize"  # vLLM 0.32.0 feeds EXAONE 4.5 raw pixels without it


def mirror_mtp_keys(out: Path) -> None:
    """Copy the MTP drafter's keys from text_config to the top level of out/config.json (when there is an MTP head)."""
    path = out / "config.json"
    config = read_json(path, "config.json")
    text = config.get("text_config") or {}
    if not text.get("num_nextn_predict_layers"):
        return
    config.update({key: text[key] for key in TOP_LEVEL_FOR_MTP if key in text and key not in config})
    write_json(path, config)


def serve_command(out: Path, tp: int, mtp: bool) -> str:
    args = ["vllm", "serve", str(out), "--tensor-parallel-size", str(tp), "--max-model-len", "32768", NORMALIZE_FIX]
    if mtp:
        args += ["--speculative-config", '{"method": "mtp", "num_speculative_tokens": 1}']
    return shlex.join(args)


def model_card(out: Path, source: Path, decoder: DecoderSpec, details: dict[str, Any], fidelity: dict[str, Any]) -> str:
    """README.md of the checkpoint at `out` (its final path: the card names it and serves it)."""
    degrees = supported_tp(decoder, details["group_size"])
    mtp = decoder.nextn_layers > 0
    return "\n".join([
        f"# {out.name}: EXAONE 4.5, GPTQ {details['bits']}-bit (exaone-edge)", "",
        f"Made by `exaone-edge quantize --format gptq` from `{source.name}`, calibrated on "
        f"{details['calibration_samples']} document chats with their page images. The language model's Linear layers "
        f"are GPTQ v1, {details['bits']}-bit, group size {details['group_size']}, symmetric, no act-order; the vision "
        "tower" + (" and the MTP head stay" if mtp else " stays") + " in the source's precision "
        f"(`dynamic`: {', '.join(details['unquantized'])}).", "",
        "| check against the source (held-out chats, images included) | value |", "|---|---|",
        f"| KL divergence, mean | {fidelity['kl_mean']:.4g} |",
        f"| top-1 agreement | {fidelity['top1_agreement']:.4f} |", "",
        f"Tensor parallel (vLLM): serves TP {', '.join(map(str, degrees))} (each GPU's share of o_proj/down_proj must "
        f"hold whole groups of {details['group_size']}; `exaone-edge quantize --format gptq --tp N` picks the group "
        "size for N).", "",
        "```bash", serve_command(out, max(degrees), mtp), "```", "",
        f"`{NORMALIZE_FIX}` is required with vLLM 0.32.0 (without it raw pixels reach the vision tower and image "
        "answers change); GPTQ runs in bf16 or fp16." + (" The MTP head drafts with `--speculative-config`." if mtp else ""),
        "", "Licence: the source model's (EXAONE AI Model License 1.2-NC: non-commercial).", "",
    ])


def write_vllm_parts(tmp: Path, out: Path, source: Path, decoder: DecoderSpec, details: dict[str, Any],
                     fidelity: dict[str, Any]) -> None:
    """Into the checkpoint being written at `tmp` (to become `out`), before its manifest: config keys for MTP drafting
    and README.md, the model card."""
    mirror_mtp_keys(tmp)
    write_text(tmp / "README.md", model_card(out, source, decoder, details, fidelity))
