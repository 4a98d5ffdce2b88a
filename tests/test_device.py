"""Device choice (vision provider, decoder offload) and the one llama.cpp binding.

GPU availability is simulated only by monkeypatching the runtime queries (onnxruntime.get_available_providers and
our test-load of its CUDA provider, llama_cpp.llama_supports_gpu_offload); everything else runs for real, on this
machine's CPU builds.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from exaone_edge import device
from exaone_edge.device import DeviceUnavailable, Placement, choose_placement, predicted_placement
from exaone_edge.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY = ("CPUExecutionProvider",)
WITH_CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture
def gpu_box(monkeypatch):
    """This process's runtimes report a GPU build (only the two queries are replaced)."""
    import llama_cpp
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(WITH_CUDA))
    monkeypatch.setattr(device, "_provider_starts", lambda name: True)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)


@pytest.mark.parametrize(
    "device_, layers, vision, providers, offload, expected",
    [
        ("auto", None, "auto", WITH_CUDA, True, Placement("cuda", -1)),
        ("auto", None, "auto", CPU_ONLY, False, Placement("cpu", 0)),
        ("auto", None, "auto", WITH_CUDA, False, Placement("cuda", 0)),  # each part on what its runtime offers
        ("auto", None, "auto", CPU_ONLY, True, Placement("cpu", -1)),
        ("auto", 20, "auto", CPU_ONLY, True, Placement("cpu", 20)),  # partial offload
        ("cuda", None, "auto", WITH_CUDA, True, Placement("cuda", -1)),
        ("cuda", 0, "auto", WITH_CUDA, False, Placement("cuda", 0)),  # decoder kept on the CPU on purpose
        ("cuda", None, "cpu", CPU_ONLY, True, Placement("cpu", -1)),  # vision on CPU frees GPU memory for context
        ("cpu", None, "auto", WITH_CUDA, True, Placement("cpu", 0)),
        ("auto", None, "tensorrt", ("TensorrtExecutionProvider", *WITH_CUDA), True, Placement("tensorrt", -1)),
    ],
)
def test_choice(device_, layers, vision, providers, offload, expected):
    assert choose_placement(device_, layers, vision, providers=providers, gpu_offload=offload) == expected


def test_tensorrt_only_when_asked():
    assert choose_placement(providers=("TensorrtExecutionProvider", *WITH_CUDA), gpu_offload=True).vision == "cuda"
    assert Placement("tensorrt", -1).providers[0] == "TensorrtExecutionProvider"


def test_cuda_missing_names_the_runtime_and_the_install():
    with pytest.raises(DeviceUnavailable) as error:
        choose_placement("cuda", providers=CPU_ONLY, gpu_offload=True)
    assert "onnxruntime" in str(error.value) and "pip install onnxruntime-gpu==1.31.1" in str(error.value)
    with pytest.raises(DeviceUnavailable) as error:
        choose_placement("cuda", providers=WITH_CUDA, gpu_offload=False)
    text = str(error.value)
    assert "llama.cpp" in text and 'CMAKE_ARGS="-DGGML_CUDA=on"' in text and "llama-cpp-python==0.3.36" in text
    with pytest.raises(DeviceUnavailable, match="llama.cpp"):  # asking for layers on the GPU is asking for CUDA
        choose_placement("auto", 10, providers=WITH_CUDA, gpu_offload=False)
    with pytest.raises(DeviceUnavailable, match="TensorrtExecutionProvider"):
        choose_placement("auto", None, "tensorrt", providers=WITH_CUDA, gpu_offload=True)


@pytest.mark.parametrize("args", [("gpu",), ("auto", -2), ("auto", None, "rocm"), ("cpu", 8), ("cpu", None, "cuda")])
def test_bad_or_conflicting_options(args):
    with pytest.raises(InputError):
        choose_placement(*args, providers=WITH_CUDA, gpu_offload=True)


def test_no_vision_never_asks_onnxruntime(monkeypatch):
    monkeypatch.setattr(device, "onnxruntime_providers", lambda: pytest.fail("queried onnxruntime"))
    assert choose_placement("cuda", has_vision=False, gpu_offload=True) == Placement("none", -1)


def test_the_queries_are_what_is_simulated(gpu_box):
    assert device.onnxruntime_providers() == WITH_CUDA and device.llama_gpu_offload()
    assert choose_placement() == Placement("cuda", -1)


@pytest.mark.parametrize("n_gpu_layers, head_blocks, expected", [
    (0, 0, (0, 0, False)), (1, 0, (0, 0, True)), (2, 0, (1, 0, True)), (20, 0, (19, 0, True)),
    (64, 0, (63, 0, True)), (65, 0, (64, 0, True)), (100, 0, (64, 0, True)), (-1, 0, (64, 0, True)),
    (1, 1, (0, 0, True)), (2, 1, (0, 1, True)), (3, 1, (1, 1, True)), (65, 1, (63, 1, True)), (66, 1, (64, 1, True)),
    (-1, 1, (64, 1, True)),
])
def test_llama_cpp_layer_rule(n_gpu_layers, head_blocks, expected):
    """src/llama-model.cpp load_tensors (llama-cpp-python 0.3.36): i_gpu_start = max(n_layer_all + 1 - N, 0), where
    n_layer_all counts the file's MTP blocks (the last indices) and index n_layer_all is the output layer: N puts the
    output layer, then the MTP block, then the last repeating layers on the GPU."""
    from exaone_edge.device import describe_gpu_layers, gpu_layer_split

    n_layer, n_all = 64, 64 + head_blocks
    start = max(n_all + 1 - (n_all + 1 if n_gpu_layers < 0 else n_gpu_layers), 0)
    on_gpu = [i for i in range(n_all + 1) if i >= start]
    rule = (len([i for i in on_gpu if i < n_layer]), len([i for i in on_gpu if n_layer <= i < n_all]), n_all in on_gpu)
    assert rule == expected == gpu_layer_split(n_gpu_layers, n_layer, head_blocks)
    words = describe_gpu_layers(n_gpu_layers, n_layer, head_blocks)
    assert ("MTP" in words) == (0 < expected[1] and expected[0] < n_layer)  # else "every layer"


def test_imatrix_and_kl_offload_count_the_output_layer_first(tiny_model_dir, tmp_path, monkeypatch):
    """The F16 33B (65 GB) does not fit a 24 GB card: the default is llama.cpp's n_gpu_layers for the room there is,
    the output layer first (N = output + N - 1 layers), then room for one host weight's GPU copy (op offload)."""
    from gguf import GGUFReader

    from exaone_edge.quantize import llama_eval
    from gguf_fixtures import converted

    f16 = converted(tiny_model_dir, "F16", tmp_path)
    sizes: dict[int, int] = {}
    output = largest = 0
    for tensor in GGUFReader(str(f16)).tensors:
        if tensor.name.startswith("blk."):
            sizes[int(tensor.name.split(".")[1])] = sizes.get(int(tensor.name.split(".")[1]), 0) + int(tensor.n_bytes)
            largest = max(largest, int(tensor.n_bytes))
        elif tensor.name.startswith("output"):
            output += int(tensor.n_bytes)
    mtp = sizes.pop(64)  # the MTP block, kept as block n_layer: llama.cpp counts it among the layers (n_layer_all)
    layer = max(sizes.values())
    assert len(set(sizes.values())) == 1 and len(sizes) == 64  # the tiny model's repeating layers are alike
    assert mtp > layer  # and the MTP block is larger (it adds eh_proj and two norms)
    largest = max(int(t.n_bytes) for t in GGUFReader(str(f16)).tensors if t.name.startswith("blk.") and
                  not t.name.startswith("blk.64."))  # the head's tensors are not loaded: no GPU copy of them either
    config = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    kv = 256 * 2 * config["num_key_value_heads"] * config["head_dim"] * 4  # f32 KV of one layer at 256 positions
    fit = llama_eval.layers_that_fit
    base = llama_eval.LLAMA_GPU_RESERVE + output + largest  # the output layer and one host weight's copy
    # llama.cpp's i_gpu_start = n_layer_all + 1 - N: after the output layer comes the MTP block (the last index),
    # which imatrix and KL do not load: it costs a count, no memory and no KV (the target's cache filters it out)
    assert fit(f16, base + 5 * (layer + kv), 256) == 7  # the output layer, the MTP block, 5 layers
    assert fit(f16, base + 5 * (layer + kv) - 1, 256) == 6
    assert fit(f16, base, 256) == 2  # the output layer (and the unloaded MTP block) only
    assert fit(f16, base - 1, 256) == 0  # not even the output layer: nothing on the GPU
    everything = llama_eval.LLAMA_GPU_RESERVE + output + 64 * (layer + kv)  # no layer left on the host: no copy needed
    assert fit(f16, everything, 256) == -1
    assert fit(f16, everything - 1, 256) == 2 + (everything - 1 - base) // (layer + kv) < 66
    monkeypatch.setattr(llama_eval, "gpu_memory", lambda: (base + 7 * (layer + kv), 10**12))
    assert llama_eval.default_gpu_layers(f16, 256) == 9
    monkeypatch.setattr(llama_eval, "gpu_memory", lambda: None)
    assert llama_eval.default_gpu_layers(f16, 256) == 0


def test_this_machine_real_queries():
    """The real CPU builds here: auto falls back to the CPU, cuda is refused naming the first runtime lacking it."""
    import llama_cpp
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    placement = choose_placement()
    assert placement == Placement("cuda" if has_cuda else "cpu", -1 if offload else 0)
    from exaone_edge.llama import gpu_memory

    assert (gpu_memory() is not None) == offload
    if not has_cuda:
        with pytest.raises(DeviceUnavailable, match="onnxruntime"):
            choose_placement("cuda")


def test_plan_predicts_the_runtime_default():
    """plan asks the same function, with the GPU box's runtimes; the runtime asks with this machine's."""
    assert predicted_placement() == choose_placement(providers=WITH_CUDA, gpu_offload=True) == Placement("cuda", -1)
    assert predicted_placement("cuda", vision_provider="cpu") == Placement("cpu", -1)
    assert predicted_placement("cpu") == Placement("cpu", 0)


def test_plan_follows_the_placement(tiny_model_dir):
    from exaone_edge.memory import plan
    from exaone_edge.plan.command import render_plan

    on_gpu = plan(tiny_model_dir, gpu="24GiB", context=4096)
    assert on_gpu.vision_on_gpu and on_gpu.placement == predicted_placement().as_dict()
    vision_cpu = plan(tiny_model_dir, gpu="24GiB", context=4096, vision_provider="cpu")
    assert not vision_cpu.vision_on_gpu and vision_cpu.components["vision_weights"] == 0
    assert on_gpu.decoder_blocks == (64, 1)  # the tiny model has an MTP head, and quantize keeps it as the last block
    half = plan(tiny_model_dir, gpu="24GiB", context=4096, gpu_layers=34)  # output, the MTP block, 32 of 64 layers
    assert "the output layer, the MTP block and 32 repeating layers" in render_plan(half)
    assert "n_gpu_layers 100: every layer" in render_plan(plan(tiny_model_dir, gpu="24GiB", context=4096, gpu_layers=100))
    assert half.components["decoder_weights"] < on_gpu.components["decoder_weights"]
    assert half.components["kv_cache"] == on_gpu.components["kv_cache"] // 2
    assert half.host_components["decoder_weights_not_offloaded"] == (on_gpu.components["decoder_weights"]
                                                                       - half.components["decoder_weights"])
    assert half.decode_tokens_per_s_ceiling is None  # not bandwidth-bound on the GPU alone
    cpu = plan(tiny_model_dir, gpu="24GiB", context=4096, device="cpu")
    assert cpu.components["decoder_weights"] == cpu.components["kv_cache"] == cpu.components["vision_weights"] == 0


# -- the real CPU path, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    from runtime_bundle_fixture import build_tiny_bundle

    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("device") / "tiny", vision_dir=tiny_vision_dir)


def test_engine_on_the_cpu_reports_its_placement(bundle, capsys):
    from exaone_edge.runtime.engine import Engine

    engine = Engine.load(bundle, device="cpu", n_ctx=256, verify=False)
    try:
        assert engine.placement == Placement("cpu", 0)
        assert engine.vision.providers == ("CPUExecutionProvider",)
        assert "placement: vision encoder on CPU (ONNX Runtime CPUExecutionProvider); decoder on CPU" in capsys.readouterr().err
        from starlette.testclient import TestClient

        from exaone_edge.runtime.server.app import create_app

        with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:  # loopback: no Host check
            health = client.get("/health").json()
            assert health["placement"]["vision"]["device"] == "cpu"
            assert health["placement"]["decoder"] == {"runtime": "llama.cpp", "device": "cpu", "gpu_layers": 0}
            metrics = client.get("/metrics").text
            assert 'exaone_edge_placement{device="cpu",gpu_layers="0",part="decoder",runtime="llama.cpp"} 1.0' in metrics
    finally:
        engine.close()


def test_onnxruntime_falling_back_to_the_cpu_is_an_error(tiny_vision_dir):
    """onnxruntime only logs when a requested GPU provider cannot start; the encoder refuses instead."""
    import onnxruntime

    from exaone_edge.vision import VisionEncoder

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a working CUDA provider")
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider"):
        VisionEncoder(tiny_vision_dir, providers=list(WITH_CUDA), verify=False)


def test_cli_refuses_cuda_in_one_line(bundle):
    from conftest import run_cli

    result = run_cli("run", str(bundle), "What is this?", "--device", "cuda", "--no-verify")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a working CUDA provider")
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "onnxruntime" in error[0] and "onnxruntime-gpu==1.31.1" in error[0]


# -- the binding ---------------------------------------------------------------------------------


def _calls(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Attribute) and node.attr == name for node in ast.walk(tree))


def test_one_module_calls_llama_batch_init():
    sources = [p for folder in ("exaone_edge", "runtime", "quantize", "validate", "export", "benchmarks")
               for p in (ROOT / folder).rglob("*.py")]
    callers = sorted(str(p.relative_to(ROOT)) for p in sources if _calls(p, "llama_batch_init"))
    assert callers == ["exaone_edge/llama_context.py", "exaone_edge/llama_mtp.py"]  # the target's and the head's
    assert all(_calls(ROOT / caller, "llama_batch_free") for caller in callers)  # each frees what it allocates
    backend = sorted(str(p.relative_to(ROOT)) for p in sources if _calls(p, "llama_backend_init"))
    assert backend == ["exaone_edge/llama.py"]


def test_kl_never_maps_both_models(tiny_model_dir, tmp_path, monkeypatch):
    """compare_decoders opens the reference, keeps its logits on disk, closes it, then opens the candidate;
    the KL equals the one computed from both models' full logits."""
    from gguf_fixtures import converted

    from exaone_edge import llama
    from exaone_edge.llama_context import LlamaContext, reference_options
    from exaone_edge.quantize.llama_eval import compare_decoders, kl_rows

    reference, candidate = converted(tiny_model_dir, "F32", tmp_path), converted(tiny_model_dir, "F16", tmp_path)
    rows = np.random.default_rng(0).normal(size=(7, 256)).astype(np.float32)
    prompts = [[[1, 50, 51, 9, 10, 11], rows, [12, 13]], [[1, 20, 21, 22, 23]]]
    seen: list[list[Path]] = []
    load = llama.Model.__init__

    def tracked(self, *args, **kwargs):
        load(self, *args, **kwargs)
        seen.append(llama.open_models())

    monkeypatch.setattr(llama.Model, "__init__", tracked)
    result = compare_decoders(reference, candidate, prompts, scratch_dir=tmp_path, gpu_layers=0, threads=2)
    assert seen == [[reference], [candidate]] and llama.open_models() == []
    assert not list(tmp_path.glob(".kl-*"))  # the scratch logits are gone
    with llama.Model(reference, vocab_only=True) as vocab:
        first_prompt = 16 * vocab.n_vocab * 4  # 15 positions fit, 15 + 5 do not
    seen.clear()  # a scratch budget below both prompts' logits: two passes, the same numbers
    two = compare_decoders(reference, candidate, prompts, scratch_dir=tmp_path, gpu_layers=0, threads=2,
                           scratch_bytes=first_prompt)
    assert seen == [[reference], [candidate], [reference], [candidate]]
    assert np.array_equal(two.kl, result.kl) and np.array_equal(two.top1, result.top1)
    expected = []
    for prompt in prompts:
        options = reference_options(256, n_threads=2)
        with LlamaContext(reference, options) as ref, LlamaContext(candidate, options) as cand:
            expected.append(kl_rows(ref.logits_all(prompt), cand.logits_all(prompt)))
    assert np.array_equal(result.kl, np.concatenate([kl for kl, _ in expected]))
    assert np.array_equal(result.top1, np.concatenate([same for _, same in expected]))
    assert json.dumps(float(result.kl.mean()))  # finite, small: F16 vs F32 of the same weights
    assert 0 <= result.kl.max() < 1e-3
