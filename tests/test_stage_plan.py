"""`plan --stages`: each README command's predicted time and memory for the released 33B on a target box."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from exaone_edge.errors import InputError
from exaone_edge.memory import GIB, plan
from exaone_edge.spec import RELEASED_33B_CONFIG, model_spec
from exaone_edge.plan.stages import Workload, prompt_flops, stage_plan

RELEASED = "exaone-4.5-33b"
DECODER = model_spec(json.loads(RELEASED_33B_CONFIG.read_text()), RELEASED_33B_CONFIG).decoder


def _deployed(gpu: str = "rtx4090", image_max_tokens: int | None = 1280):
    return plan(RELEASED, gpu=gpu, context=16384, kv_type="q8_0", vision_precision="int8w",
                image_max_tokens=image_max_tokens)


def _stages(gpu: str = "rtx4090", image_max_tokens: int | None = 1280, **box):
    """The stages by their command's first word (GPTQ as "gptq")."""
    stages = stage_plan(RELEASED, _deployed(gpu, image_max_tokens), vision_precision="int8w", **box)
    return {("gptq" if "gptq" in stage.command else stage.command.split()[0]): stage for stage in stages}


def test_every_walkthrough_command_is_predicted():
    stages = _stages()
    assert list(stages) == ["export", "quantize", "validate", "serve", "gptq"]
    for stage in stages.values():
        assert stage.seconds > 0 and all(phase.seconds >= 0 for phase in stage.phases)
        assert stage.gpu_bytes is None or stage.gpu_bytes > 0
    assert stages["serve"].gpu_bytes == _deployed().total_bytes  # the same figure `plan` gives


def test_calibration_prompts_hold_a_whole_budgeted_page():
    quantize = _stages()["quantize"]
    imatrix = next(p for p in quantize.phases if p.name.startswith("imatrix"))
    positions = int(imatrix.name.split(" × ")[1].split()[0])
    assert 1200 + 512 < positions <= 1280 + 512  # a scanned A4 page within 1,280 rows, + 512 positions of text


def test_the_f16_decoder_is_split_between_gpu_and_host_on_a_24_gb_card():
    quantize = _stages()["quantize"]
    imatrix = next(p for p in quantize.phases if p.name.startswith("imatrix"))
    assert "F16 with the output layer and " in imatrix.name  # llama.cpp offloads the output layer first
    on_gpu = int(imatrix.name.split("the output layer and ")[1].split(" of ")[0])
    # 0.9 GiB of F16 a layer on 24 GB beside the vision session, the reserve, the 1.47 GiB output layer and a
    # 0.26 GiB FFN weight's copy for the host layers' offloaded matmuls
    per_layer = 2 * DECODER.layer_params + 2048 * 2 * 8 * 128 * 4
    fixed = 2 * DECODER.vocab_size * DECODER.hidden_size + 2 * DECODER.intermediate_size * DECODER.hidden_size
    assert on_gpu == 20 == (24564 * 2**20 - 1536 * 2**20 - int(1.80 * GIB) - fixed) // per_layer
    assert quantize.gpu_bytes <= 24564 * 2**20
    candidate = next(p for p in quantize.phases if p.name.startswith("KL vs F16: the Q4_K_M pass"))
    assert candidate.name.endswith("every layer on the GPU")  # llama_eval gives the candidate its own split
    # The layers left on the host are memory-mapped: with 64 GB of RAM the box holds them.
    assert 30 * GIB < quantize.ram_bytes < 64 * GIB


def test_reference_passes_come_from_the_disk_unless_the_checkpoint_fits_the_page_cache():
    small, large = _stages(ram_gib=64)["validate"], _stages(ram_gib=256)["validate"]
    small_passes = next(p for p in small.phases if "more passes" in p.name)
    large_passes = next(p for p in large.phases if "more passes" in p.name)
    assert small_passes.bound == "disk" and large_passes.bound == "PCIe"
    assert "23 more passes" in small_passes.name  # one per answer token after the first (24 by default)
    bf16 = 2 * (DECODER.body_params + DECODER.embedding_params)
    assert small_passes.seconds == pytest.approx(23 * bf16 / 2e9)
    assert small_passes.seconds > 3 * large_passes.seconds


def test_disk_bound_phases_scale_with_the_disk():
    slow, fast = _stages(disk_gbs=1.0)["quantize"], _stages(disk_gbs=4.0)["quantize"]
    convert_slow, convert_fast = slow.phases[0], fast.phases[0]
    assert convert_slow.bound == convert_fast.bound == "disk"
    assert convert_slow.seconds == pytest.approx(4 * convert_fast.seconds)


def test_a_smaller_page_budget_shortens_page_work():
    budget, released = _stages(image_max_tokens=512)["serve"], _stages(image_max_tokens=None)["serve"]
    assert budget.phases[1].seconds < released.phases[1].seconds / 2  # 512 rows vs the default 1,280 a page


def test_attention_cost_grows_with_the_prompt_and_the_window_caps_sliding_layers():
    per_token = lambda tokens: prompt_flops(DECODER, tokens) / tokens  # noqa: E731
    assert per_token(8192) > per_token(1024) > per_token(1) > 0
    linear = 2 * (DECODER.body_params + DECODER.vocab_size * DECODER.hidden_size)
    assert per_token(1) == pytest.approx(linear, rel=1e-3)


def test_gptq_fits_the_a100_it_is_planned_on_and_grows_with_calibration():
    gptq = _stages()["gptq"]
    assert "a100-40" in gptq.command and gptq.gpu_bytes < 40 * GIB
    fewer = stage_plan(RELEASED, _deployed(), work=Workload(calibration_prompts=16))[-1]
    assert fewer.seconds < gptq.seconds and fewer.gpu_bytes < gptq.gpu_bytes


def test_cli_prints_and_emits_the_stages():
    text = run_cli("plan", RELEASED, "--context", "16384", "--kv-type", "q8_0", "--vision-precision", "int8w",
                   "--image-max-tokens", "1280", "--stages", check=True).stdout
    assert "predicted for rtx4090, 8 cores, 64 GiB RAM, disk 2 GB/s" in text
    assert "quantize --bits 4 (Q4_K_M, document imatrix)" in text
    data = json.loads(run_cli("plan", RELEASED, "--stages", "--json", check=True).stdout)
    assert [stage["command"].split()[0] for stage in data["stages"]] == ["export", "quantize", "validate", "serve",
                                                                          "quantize"]
    assert all(stage["seconds"] > 0 for stage in data["stages"])


def test_stage_times_need_a_named_gpu():
    with pytest.raises(InputError, match="Stage times need a named GPU"):
        stage_plan(RELEASED, plan(RELEASED, gpu="48GiB", context=16384))
    with pytest.raises(InputError, match="must be positive"):
        stage_plan(RELEASED, plan(RELEASED, context=16384), disk_gbs=0)


def test_many_questions_run_in_groups_instead_of_overflowing_the_gpu():
    """validate's reference keeps each generating question's KV cache (0.93 GB in float32 at 1,772 positions): 100
    questions run in groups whose caches fit half the card, each group paying its own passes over the weights."""
    few = stage_plan(RELEASED, _deployed(), work=Workload(questions=12))[2]
    many = stage_plan(RELEASED, _deployed(), work=Workload(questions=100))[2]
    passes = next(p for p in many.phases if "more passes" in p.name)
    assert "191 more passes" in passes.name and "8 groups" in passes.name
    assert "groups" not in next(p for p in few.phases if "more passes" in p.name).name  # 12 questions: one group
    assert many.gpu_bytes <= 24564 * 2**20 and many.seconds > 3 * few.seconds
