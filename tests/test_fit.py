"""Settings that fit a GPU: `--ctx auto` / `--gpu-layers auto` choose what `plan` says for the free memory, and
`plan` recommends level, KV type, vision precision and page budget for the asked context.

Free memory is mocked through the project's own query (exaone_edge.llama.gpu_memory), and the decoder's GPU build
through exaone_edge.device.llama_gpu_offload; the engine then loads for real on this machine's CPU build."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import run_cli
from exaone_edge.device import Placement, predicted_placement
from exaone_edge.fit import MIN_CONTEXT, fit, recommend
from exaone_edge.memory import GIB, GPUS, Gpu, load_source, plan, plan_source, with_page_budget

RELEASED = "exaone-4.5-33b"
WALKTHROUGH = dict(kv_type="q8_0", vision_precision="int8w", image_max_tokens=1280)  # README's 24 GB setting


def _source(image_max_tokens: int | None = 1280):
    return with_page_budget(load_source(RELEASED), image_max_tokens)


def _fits(source, card: Gpu, context: int, layers: int, placement=None, **settings) -> bool:
    placement = replace(placement or predicted_placement(), gpu_layers=layers)
    return plan_source(source, card, context, settings.get("kv_type", "q8_0"), None, placement,
                       vision_precision=settings.get("vision_precision", "int8w")).fits


def test_ctx_auto_takes_plan_s_largest_context_with_every_layer_on_the_gpu():
    card = Gpu("free", GPUS["rtx4090"].memory_bytes, None)  # what ggml_backend_dev_memory would report, all of it free
    chosen = fit(_source(), card, predicted_placement(), ctx="auto", gpu_layers="auto", kv_type="q8_0",
                 vision_precision="int8w")
    expected = plan(RELEASED, gpu="rtx4090", context=16384, **WALKTHROUGH)
    assert (chosen.n_ctx, chosen.gpu_layers) == (expected.max_context, -1) == (40448, -1)
    assert chosen.planned_bytes <= card.memory_bytes and chosen.free_bytes == card.memory_bytes


def test_when_every_layer_does_not_fit_the_minimum_context_layers_leave_the_gpu():
    """llama.cpp's --fit order: the context shrinks to 4,096 first, then n_gpu_layers drops (the output layer stays)."""
    card = Gpu("free", GPUS["a10g"].memory_bytes, None)
    chosen = fit(_source(), card, predicted_placement(), ctx="auto", gpu_layers="auto", kv_type="q8_0",
                 vision_precision="int8w")
    assert chosen.n_ctx == MIN_CONTEXT and 0 < chosen.gpu_layers <= 65  # 65 blocks: 64 layers and the MTP block
    assert _fits(_source(), card, MIN_CONTEXT, chosen.gpu_layers)
    assert not _fits(_source(), card, MIN_CONTEXT, chosen.gpu_layers + 1)  # one layer more does not fit
    assert plan(RELEASED, gpu="a10g", context=MIN_CONTEXT, gpu_layers="auto", **WALKTHROUGH).placement["decoder"][
        "gpu_layers"] == chosen.gpu_layers  # plan --gpu-layers auto says the same


def test_gpu_layers_auto_at_a_fixed_context():
    card = Gpu("free", 16 * GIB, None)
    chosen = fit(_source(), card, predicted_placement(), ctx=16384, gpu_layers="auto", kv_type="q8_0",
                 vision_precision="int8w")
    assert chosen.n_ctx == 16384 and 1 < chosen.gpu_layers < 64
    assert _fits(_source(), card, 16384, chosen.gpu_layers) and not _fits(_source(), card, 16384, chosen.gpu_layers + 1)
    with pytest.raises(Exception, match="free"):  # not even the vision encoder fits
        fit(_source(), Gpu("free", GIB, None), predicted_placement(), ctx=16384, gpu_layers="auto", kv_type="q8_0")


def test_plan_recommends_a_fitting_combination_at_16k(tmp_path):
    """`plan exaone-4.5-33b --gpu rtx4090 --context 16384` at the defaults does not fit; the recommendation is the
    README's 23.20 GiB setting on the RTX 4090, and Q4_K_S with the same settings on the A10G (22.11 GiB)."""
    for gpu, level, gib in (("rtx4090", "Q4_K_M", 23.20), ("a10g", "Q4_K_S", 22.11)):
        default = plan(RELEASED, gpu=gpu, context=16384)
        assert not default.fits
        best = default.recommended
        assert (best["level"], best["kv_type"], best["vision_precision"], best["image_max_tokens"]) == (
            level, "q8_0", "int8w", 1280)
        check = plan(RELEASED, gpu=gpu, context=16384, level=level, **WALKTHROUGH)
        assert check.fits and check.total_bytes == best["total_bytes"] and round(best["total_bytes"] / GIB, 2) == gib
        assert best["max_context"] == check.max_context
    text = run_cli("plan", RELEASED, "--gpu", "rtx4090", "--context", "16384", check=True).stdout
    assert "DOES NOT FIT" in text
    assert "recommended for context 16384: Q4_K_M, KV q8_0, vision int8w, 1,280-row pages: 23.20 GiB" in text
    report = json.loads(run_cli("plan", RELEASED, "--gpu", "a10g", "--context", "16384", "--json", check=True).stdout)
    assert report["recommended"]["level"] == "Q4_K_S"


def test_a_q4_0_cache_only_when_no_level_fits_otherwise():
    """q4_0 KV is the last resort: at 128K on the RTX 4090 no level fits with q8_0 (IQ4_XS does to 109,824)."""
    assert recommend(_source(), GPUS["rtx4090"], 98304, predicted_placement()).kv_type == "q8_0"
    best = recommend(_source(), GPUS["rtx4090"], 131072, predicted_placement())
    assert (best.level, best.kv_type) == ("Q4_K_S", "q4_0")
    assert recommend(_source(), GPUS["rtx4090"], 262144, predicted_placement()) is None


def test_plan_accepts_every_kv_type_the_runtime_accepts():
    from exaone_edge.llama import KV_TYPES
    from exaone_edge.llama_context import LlamaOptions

    f16 = plan(RELEASED, gpu="a100-80", context=8192, kv_type="f16")
    f32 = plan(RELEASED, gpu="a100-80", context=8192, kv_type="f32")  # what benchmarks/gpu_check.py compares against
    assert f32.components["kv_cache"] == 2 * f16.components["kv_cache"]
    for kv_type in KV_TYPES:  # the one list both read
        assert plan(RELEASED, gpu="a100-80", context=8192, kv_type=kv_type).kv_type == kv_type
        LlamaOptions(kv_type=kv_type)
    from exaone_edge.engine_settings import flag_fields

    assert "KV cache type: f32, f16, q8_0, q4_0." == flag_fields()["kv_type"].help


# -- the engine, on this machine's CPU build, with the GPU's free memory mocked ---------------------------------


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    from runtime_bundle_fixture import build_tiny_bundle

    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("fit") / "tiny", vision_dir=tiny_vision_dir)


@pytest.fixture
def gpu_with_free(monkeypatch):
    """llama.cpp reports a GPU with `free` bytes free (the engine's vision stays on this machine's CPU provider)."""
    from exaone_edge import device, llama

    def set_free(free: int) -> None:
        monkeypatch.setattr(llama, "gpu_memory", lambda: (free, 24 * GIB))
        monkeypatch.setattr(device, "llama_gpu_offload", lambda: True)

    return set_free


def _tiny_need(bundle, context: int, layers: int) -> int:
    """Free bytes a GPU needs for the tiny bundle at `context` with `layers` (plan's total, its 5% headroom included)."""
    components = plan_source(load_source(bundle), Gpu("x", 0, None), context, "f16", None,
                             Placement("cpu", layers)).components
    return int(sum(components.values()) / 0.95) + 1


def test_engine_ctx_auto_with_every_layer(bundle, gpu_with_free, capsys):
    from exaone_edge.runtime.engine import Engine

    gpu_with_free(_tiny_need(bundle, 2048, -1) + 100_000)  # room for about 2K positions with every layer
    engine = Engine.load(bundle, n_ctx="auto", verify=False)
    try:
        source, card = load_source(bundle), Gpu("free", _tiny_need(bundle, 2048, -1) + 100_000, None)
        expected = fit(source, card, Placement("cpu", -1), ctx="auto", gpu_layers=-1, kv_type="f16")
        assert engine.fit == replace(expected, asked={"ctx": "auto", "gpu_layers": None})
        assert 2048 <= engine.fit.n_ctx < MIN_CONTEXT and engine.fit.gpu_layers == -1
        assert engine.n_ctx == engine.fit.n_ctx and engine.placement.gpu_layers == -1
        assert engine.options.n_ctx == engine.fit.n_ctx  # resolved: the rest of the engine sees numbers
        assert f"fit: context {engine.fit.n_ctx:,}, every layer on the GPU" in capsys.readouterr().err
    finally:
        engine.close()


def test_engine_gpu_layers_auto_moves_layers_off_when_the_model_s_context_does_not_fit(bundle, gpu_with_free):
    from exaone_edge.runtime.engine import Engine

    free = _tiny_need(bundle, 4096, 40)  # the tiny model's whole context (4,096) with 39 layers and the output
    gpu_with_free(free)
    engine = Engine.load(bundle, n_ctx="auto", n_gpu_layers="auto", verify=False)
    try:
        assert engine.fit.n_ctx == 4096 == engine.n_ctx
        source, card = load_source(bundle), Gpu("free", free, None)
        layers = engine.fit.gpu_layers
        assert layers == engine.placement.gpu_layers and 30 < layers < 65
        assert _fits(source, card, 4096, layers, Placement("cpu", layers), kv_type="f16")
        assert not _fits(source, card, 4096, layers + 1, Placement("cpu", layers), kv_type="f16")
        assert engine.llama.model.params.n_gpu_layers == layers
    finally:
        engine.close()


def test_engine_auto_without_a_gpu_is_the_cpu_default(bundle):
    from exaone_edge.runtime.engine import Engine

    engine = Engine.load(bundle, device="cpu", n_ctx="auto", n_gpu_layers="auto", verify=False)
    try:
        assert (engine.fit.n_ctx, engine.fit.gpu_layers, engine.fit.free_bytes) == (4096, 0, None)
        assert engine.placement == Placement("cpu", 0)
    finally:
        engine.close()


def test_health_reports_what_auto_chose(tiny_model_dir, tmp_path):
    import httpx

    from exaone_edge.runtime.engine import Engine
    from exaone_edge.runtime.server.app import create_app
    from runtime_bundle_fixture import build_tiny_bundle
    from server_fixtures import serve_in_process

    engine = Engine.load(build_tiny_bundle(tiny_model_dir, tmp_path / "bundle"), n_ctx="auto", n_gpu_layers="auto",
                         n_threads=1)
    try:
        with serve_in_process(create_app(engine)) as url:
            health = httpx.get(f"{url}/health", timeout=60).json()
        assert health["fit"] == {**engine.fit.as_dict(), "asked": {"ctx": "auto", "gpu_layers": "auto"}}
        assert health["fit"]["n_ctx"] == engine.n_ctx
    finally:
        engine.close()
