"""`plan --engine vllm`: per-GPU memory of the released 33B as GPTQ on vLLM, figures computed by hand here."""

from __future__ import annotations

import json

import pytest

from exaone_edge.budgets import GIB
from exaone_edge.errors import InputError
from exaone_edge.memory_source import load_source
from exaone_edge.plan.vllm import (
    GPU_MEMORY_UTILIZATION, decoder_linear_bytes, kv_bytes_per_gpu, vllm_plan,
)

MODEL = "exaone-4.5-33b"
# One decoder layer's Linear weights: q and o 5120², k and v 5120 × 1024, gate/up/down 5120 × 27,392.
LAYER_WEIGHTS = 2 * 5120 * 5120 + 2 * 5120 * 1024 + 3 * 5120 * 27392


@pytest.fixture(scope="module")
def decoder():
    return load_source(MODEL).spec.decoder


def test_gptq_weight_bytes_by_hand(decoder):
    weights = 64 * LAYER_WEIGHTS
    g_idx = 64 * 4 * (6 * 5120 + 27392)  # one int32 per input row of each Linear
    # 4-bit weights, an fp16 scale and a 4-bit zero per 128 inputs of each output
    assert decoder_linear_bytes(decoder, 4, 128) == weights // 2 + weights // 128 * 2 + weights // 128 // 2 + g_idx
    assert decoder_linear_bytes(decoder, 4, 128) == 16_096_428_032  # 14.99 GiB: 4.16 bits a weight


def test_kv_cache_by_hand(decoder):
    per_token_layer = 2 * 8 * 128 * 2  # K and V, 8 KV heads of 128, bf16
    sliding_tokens = (-(-(4096 - 1 + 2048) // 16) + 1) * 16  # window − 1 + a 2,048-token batch, in 16-token blocks, + 1
    assert sliding_tokens == 6160
    assert kv_bytes_per_gpu(decoder, 32768, 1) == (16 * 32768 + 48 * sliding_tokens) * per_token_layer
    assert kv_bytes_per_gpu(decoder, 32768, 2) * 2 == kv_bytes_per_gpu(decoder, 32768, 1)  # 4 KV heads a GPU
    # Shorter than the window: sliding layers hold it all, plus vLLM's one block for a window not starting on a block.
    assert kv_bytes_per_gpu(decoder, 1024, 1) == (16 * 1024 + 48 * (1024 + 16)) * per_token_layer


def test_one_24gb_card_is_not_enough_two_are(decoder):
    one = vllm_plan(MODEL, tp=1, gpu="a10g", context=32768)
    two = vllm_plan(MODEL, tp=2, gpu="a10g", context=32768)
    assert not one.fits and one.max_context == 0
    assert two.fits and two.group_size == 128 and two.supported_tp == (1, 2)
    assert two.components["decoder Linear weights (GPTQ 4-bit, 1/2)"] == 16_096_428_032 // 2
    assert two.components["vision tower (bf16, 1/2)"] == 1_286_482_944 * 2 // 2
    assert two.reserve_bytes == int((1 - GPU_MEMORY_UTILIZATION) * two.gpu_bytes)
    assert two.total_bytes == sum(two.components.values()) + two.reserve_bytes
    kv_budget = two.gpu_bytes - two.reserve_bytes - sum(v for k, v in two.components.items() if not k.startswith("KV"))
    assert kv_bytes_per_gpu(decoder, two.max_context, 2) <= kv_budget < kv_bytes_per_gpu(decoder, two.max_context + 256, 2)
    assert two.requests_at_context == kv_budget // kv_bytes_per_gpu(decoder, 32768, 2)
    assert "--tensor-parallel-size 2 --max-model-len 32768 --no-mm-device-do-normalize" in two.command


def test_the_gpus(decoder):
    a100 = vllm_plan(MODEL, tp=1, gpu="a100-40", context=32768)
    assert a100.fits and 200_000 < a100.max_context < 262_144
    assert not vllm_plan(MODEL, tp=1, gpu="rtx4090", context=4096).fits
    four = vllm_plan(MODEL, tp=4, gpu="rtx4090", context=32768)
    assert four.group_size == 64 and four.supported_tp == (1, 2, 4)  # 6,848 per GPU is not a multiple of 128


def test_refusals():
    with pytest.raises(InputError, match="Use --group-size 64"):
        vllm_plan(MODEL, tp=4, gpu="a10g", group_size=128)
    with pytest.raises(InputError, match="context 300000 is outside"):
        vllm_plan(MODEL, tp=2, gpu="a10g", context=300_000)


def test_summary_names_every_part():
    text = vllm_plan(MODEL, tp=2, gpu="a100-80", context=65536).summary()
    for part in ("TP 2 × a100-80", "vision tower", "KV cache, one request of 65,536 tokens", "vLLM reserve",
                 "largest context (--max-model-len)", "serve: vllm serve GPTQ_DIR"):
        assert part in text, part
    assert f"{80:.2f} GiB each" in text and GIB


def test_the_command():
    from conftest import run_cli

    result = run_cli("plan", MODEL, "--engine", "vllm", "--tp", "4", "--gpu", "rtx4090", "--context", "65536", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tp"] == 4 and data["group_size"] == 64 and data["fits"] and data["context"] == 65536
    assert data == vllm_plan(MODEL, tp=4, gpu="rtx4090", context=65536).to_dict()
    wrong = run_cli("plan", MODEL, "--engine", "vllm", "--tp", "3")
    assert wrong.returncode == 2 and "40 attention heads do not split over 3 GPUs" in wrong.stderr
