"""The CUDA paths' CPU-side logic, read against llama.cpp 0c1e570 and ONNX Runtime 1.31: a CPU placement hides every
GPU from llama.cpp, llama.cpp's warnings and errors reach stderr, load failures say what to change, and ONNX
Runtime's CUDA provider is test-loaded and its CPU fallbacks counted."""

from __future__ import annotations

import ctypes

import pytest

from exaone_edge import device, llama
from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.llama_context import LlamaOptions, context_params


def test_cpu_placement_passes_no_gpu_device_to_llama_cpp():
    """llama_model_params.devices: NULL takes every registered GPU; a NULL-terminated empty list (llama.cpp's own
    `--device none`) takes none, and with no GPU backend in the context nothing is op-offloaded either."""
    lib = llama.library()
    params, keep = llama.model_params(lib, n_gpu_layers=0)
    devices = ctypes.cast(params.devices, ctypes.POINTER(ctypes.c_void_p))
    assert params.devices and devices[0] is None and keep is not None and len(keep) == 1
    offloaded, none = llama.model_params(lib, n_gpu_layers=-1)
    assert offloaded.devices is None and none is None  # every device llama.cpp registered
    assert context_params(lib, LlamaOptions(n_gpu_layers=0)).op_offload is False
    assert context_params(lib, LlamaOptions(n_gpu_layers=20)).op_offload is True  # host layers' matmuls on the GPU


def test_the_engine_on_the_cpu_loads_with_no_gpu_device(tiny_model_dir, tmp_path):
    from gguf_fixtures import converted

    from exaone_edge.llama_context import LlamaContext

    with LlamaContext(converted(tiny_model_dir, "F16", tmp_path), LlamaOptions(n_ctx=256, n_gpu_layers=0)) as llm:
        params = llm.model.params
        assert params.n_gpu_layers == 0 and ctypes.cast(params.devices, ctypes.POINTER(ctypes.c_void_p))[0] is None
        assert llm.logits_all([[1, 2, 3]]).shape[0] == 3  # and it runs


def test_warnings_and_errors_pass_info_and_debug_do_not():
    written: list[str] = []
    log = llama.LogFilter(written.append, keep=3)
    log(2, b"load_tensors: loading model tensors\n")  # INFO
    log(5, b" more info\n")  # its continuation: dropped with it
    log(3, b"llama_context: n_ctx_seq (512) > n_ctx_train (256)\n")  # WARN
    log(4, b"ggml_cuda_init: failed to initialize CUDA: ")  # ERROR, continued
    log(5, b"no CUDA-capable device is detected\n")
    log(1, b"debug\n")
    log(3, b"load: special_eos_id is not in special_eog_ids - the tokenizer config may be incorrect\n")  # expected
    assert written == ["llama.cpp: llama_context: n_ctx_seq (512) > n_ctx_train (256)\n",
                       "llama.cpp: ggml_cuda_init: failed to initialize CUDA: ", "no CUDA-capable device is detected\n"]
    assert list(log.recent) == ["llama_context: n_ctx_seq (512) > n_ctx_train (256)",
                                "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected"]
    assert log.count == 2


OOM = ["ggml_backend_cuda_buffer_type_alloc_buffer: allocating 17000.00 MiB on device 0: cudaMalloc failed: out of memory",
       "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
       "llama_model_load_from_file_impl: failed to load model"]


def test_a_failed_load_with_gpu_layers_names_gpu_memory_and_gpu_layers(tmp_path):
    every = llama.load_failure(tmp_path / "decoder.gguf", vocab_only=False, n_gpu_layers=-1, gpu=True, log=OOM)
    assert type(every) is InputError
    assert "could not load the decoder with every layer on the GPU (llama.cpp: llama_model_load: error loading " \
           "model: unable to allocate CUDA0 buffer)" in str(every)  # llama.cpp's own reason, quoted
    assert "GPU memory is the usual cause: lower --gpu-layers (or --gpu-layers auto)" in str(every)
    some = llama.load_failure(tmp_path / "decoder.gguf", vocab_only=False, n_gpu_layers=30, gpu=True, log=[])
    assert "with 30 layers on the GPU." in str(some) and "--device cpu" in str(some)


@pytest.mark.parametrize("gpu_layers, gpu", [(0, True), (-1, False)])  # no layer asked, or no GPU to put one on
def test_a_failed_load_without_gpu_layers_blames_the_file(tmp_path, gpu_layers, gpu):
    error = llama.load_failure(tmp_path / "decoder.gguf", vocab_only=False, n_gpu_layers=gpu_layers, gpu=gpu, log=OOM)
    assert type(error) is ArtifactError and "cannot load this GGUF's model" in str(error)
    assert "Re-create it" in str(error) and "--gpu-layers" not in str(error)


def test_a_broken_file_quotes_llama_cpp(tmp_path, capfd):
    bad = tmp_path / "decoder.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ArtifactError, match="llama.cpp: llama_model_load: error loading model") as error:
        llama.Model(bad)
    assert "Re-create it" in str(error.value)
    assert "llama.cpp: gguf_init_from_reader: invalid magic characters" in capfd.readouterr().err  # on stderr too


def test_no_gpu_from_llama_cpp_says_which_case():
    """A build without a GPU backend vs a CUDA build whose driver failed (CUDA registers with no device)."""
    built = device.no_llama_gpu([], [])
    assert "built without a GPU backend" in str(built) and 'CMAKE_ARGS="-DGGML_CUDA=on"' in str(built)
    failed = device.no_llama_gpu(["CUDA"], ["ggml_cuda_init: failed to initialize CUDA: CUDA driver version is "
                                            "insufficient for CUDA runtime version"])
    assert "llama.cpp's CUDA backend found no usable GPU (ggml_cuda_init: failed to initialize CUDA" in str(failed)
    assert "built without" not in str(failed) and "nvidia-smi" in str(failed)
    assert llama.gpu_backends() == []  # this machine's CPU build registers no GPU backend


def test_onnxruntime_cuda_is_test_loaded(monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider even when its libraries cannot load: the probe session decides.
    Here the listing is simulated and the probe runs for real on this CPU build, where CUDA cannot start."""
    import onnxruntime

    monkeypatch.setattr(device, "_started", {})
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning):  # onnxruntime's own note that CUDA is not among what it can create here
        assert device.onnxruntime_providers() == ("CPUExecutionProvider",)
    assert device._started == {"CUDAExecutionProvider": False}
    assert device.choose_placement(gpu_offload=True).vision == "cpu"  # auto: the vision encoder on the CPU ...
    with pytest.raises(device.DeviceUnavailable, match="--vision-provider cpu"):  # ... cuda: names the way out
        device.choose_placement("cuda", gpu_offload=True)
    assert device.choose_placement("cuda", vision_provider="cpu", gpu_offload=True).gpu_layers == -1  # decoder: GPU


def test_the_probe_model_is_what_onnx_writes():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="")
    assert model.SerializeToString() == device.PROBE_MODEL
    onnx.checker.check_model(onnx.load_from_string(device.PROBE_MODEL))


def test_nodes_on_the_cpu_are_counted_from_onnxruntime_s_assignment(tiny_vision_dir):
    """ORT 1.31 records which provider runs each node (session.record_ep_graph_assignment_info); on a CPU session
    every node is the CPU's, so counting them is what a CUDA session with every node fallen back would report."""
    from exaone_edge.vision.contract import GRAPH_FILE
    from exaone_edge.vision.encoder import SHAPE_OPS, cpu_assigned, cpu_nodes, session

    created = session(tiny_vision_dir / GRAPH_FILE)
    assert cpu_nodes(created) == {}  # a CPU session has nothing to report
    counted = cpu_assigned(created.get_provider_graph_assignment_info())
    assert counted.get("MatMul", 0) + counted.get("FusedMatMul", 0) > 0 and not set(counted) & SHAPE_OPS
