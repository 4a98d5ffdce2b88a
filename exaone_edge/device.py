"""Where each part runs: the vision encoder on an ONNX Runtime execution provider, the decoder's layers in llama.cpp.

`choose_placement` is the one function that decides, for `run`, `serve`, `validate` and `bench` (from what
this machine's runtimes offer) and for `plan` (from what a GPU box set up as the README says offers), so the
plan predicts what the runtime does. `--device auto` uses the GPU for each part whose runtime has a GPU build
and the CPU otherwise; `--device cuda` insists, and names the runtime that lacks CUDA and how to install it.
TensorRT runs the vision encoder only when asked (`--vision-provider tensorrt`): it builds an engine per
input shape, minutes each, so it is not a default for pages of every size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exaone_edge.errors import InputError, MissingDependency
from exaone_edge.llama import ALL_LAYERS  # llama_cpp itself loads only when the offload question is asked

DEVICES = ("auto", "cpu", "cuda")
VISION_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
ORT_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
ORT_GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu==1.31.1"
LLAMA_GPU_INSTALL = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                     "--no-binary llama-cpp-python llama-cpp-python==0.3.36")
# What `plan` assumes of the target box: onnxruntime-gpu and llama.cpp built with CUDA (README's GPU set-up).
GPU_BOX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# CUDA EP options (ONNX Runtime's CUDA provider docs): grow the arena by what is asked, not in powers of two (up to
# 2× the activations `plan` counts), and no TF32 in fp32 matmuls (10-bit mantissas; fp32 graphs stay fp32).
ORT_PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "CUDAExecutionProvider": {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"},
}
# A one-Identity ONNX model (opset 13, IR 8), serialized by onnx.helper (tests/test_device.py rebuilds it): enough for
# ONNX Runtime to start a provider, which get_available_providers() lists even when its CUDA libraries cannot load.
PROBE_MODEL = (b"\x08\x08\x12\x00:;\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04"
               b"\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r")
_started: dict[str, bool] = {}  # provider → whether it started on PROBE_MODEL in this process


class DeviceUnavailable(MissingDependency):
    """A GPU was asked for but the runtime that would use it has no GPU build here."""


def onnxruntime_providers() -> tuple[str, ...]:
    """ONNX Runtime's execution providers that start here (none when onnxruntime is not installed): CUDA is listed
    by onnxruntime-gpu whether or not its CUDA/cuDNN libraries load, so it is test-loaded once per process (and
    TensorRT, which needs the same libraries, goes with it)."""
    try:
        import onnxruntime
    except ImportError:
        return ()
    listed = tuple(onnxruntime.get_available_providers())
    if "CUDAExecutionProvider" in listed and not _provider_starts("CUDAExecutionProvider"):
        return tuple(name for name in listed if name not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
    return listed


def _provider_starts(name: str) -> bool:
    """Whether ONNX Runtime starts `name` on PROBE_MODEL; its own warning says why not (logged at warning level)."""
    if name not in _started:
        import onnxruntime

        onnxruntime.set_default_logger_severity(2)  # a provider that fails to load says why through this logger
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 2
        try:
            session = onnxruntime.InferenceSession(PROBE_MODEL, options, enable_fallback=0,
                                                   providers=[(name, ORT_PROVIDER_OPTIONS.get(name, {})), "CPUExecutionProvider"])
            _started[name] = session.get_providers()[0] == name
        except (RuntimeError, ValueError):  # onnxruntime's own failure to create the provider
            _started[name] = False
    return _started[name]


def llama_gpu_offload() -> bool:
    """Whether llama.cpp was built with a GPU backend."""
    from exaone_edge.llama import supports_gpu_offload

    return supports_gpu_offload()


@dataclass(frozen=True)
class Placement:
    vision: str  # "cpu", "cuda", "tensorrt"; "none" (no vision encoder) or "caller" (an encoder passed in)
    gpu_layers: int  # decoder layers on the GPU: -1 every layer, 0 none

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime providers for the vision session, in order of preference."""
        return ORT_PROVIDERS.get(self.vision, ())

    @property
    def vision_on_gpu(self) -> bool:
        return self.vision in ("cuda", "tensorrt")

    @property
    def decoder(self) -> str:
        return "cpu" if self.gpu_layers == 0 else "cuda"

    def describe(self) -> str:
        if self.vision in ("none", "caller"):
            vision = "none" if self.vision == "none" else "the caller's encoder"
        else:
            vision = f"{'GPU' if self.vision_on_gpu else 'CPU'} (ONNX Runtime {self.providers[0]})"
        layers = {0: "CPU", ALL_LAYERS: "GPU, every layer"}.get(
            self.gpu_layers, f"GPU, the output layer and {max(self.gpu_layers - 1, 0)} repeating layers (rest on CPU)")
        return f"vision encoder on {vision}; decoder on {layers} (llama.cpp)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "vision": {"runtime": "onnxruntime", "device": self.vision, "providers": list(self.providers)},
            "decoder": {"runtime": "llama.cpp", "device": self.decoder, "gpu_layers": self.gpu_layers},
        }


def choose_placement(device: str = "auto", gpu_layers: int | None = None, vision_provider: str = "auto", *,
                     has_vision: bool = True, providers: tuple[str, ...] | None = None,
                     gpu_offload: bool | None = None) -> Placement:
    """Decide where the vision encoder and the decoder's layers run.

    `gpu_layers` None: every layer on the GPU when the decoder may use one, else none. `providers` and
    `gpu_offload` say what the runtimes offer; None asks this machine's (only when the answer matters).
    """
    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got '{device}'")
    if vision_provider not in VISION_PROVIDERS:
        raise InputError(f"--vision-provider must be one of {', '.join(VISION_PROVIDERS)}, got '{vision_provider}'")
    if gpu_layers is not None and gpu_layers < ALL_LAYERS:
        raise InputError(f"--gpu-layers must be -1 (every layer), 0 (none) or a layer count, got {gpu_layers}")
    if device == "cpu" and (gpu_layers or vision_provider in ("cuda", "tensorrt")):
        raise InputError("--device cpu conflicts with --gpu-layers or a GPU --vision-provider",
                         fix="Drop --device cpu, or drop the GPU option.")
    return Placement(_vision(device, vision_provider, has_vision, providers), _layers(device, gpu_layers, gpu_offload))


def _vision(device: str, asked: str, has_vision: bool, providers: tuple[str, ...] | None) -> str:
    if not has_vision:
        return "none"
    if device == "cpu" or asked == "cpu":
        return "cpu"
    available = onnxruntime_providers() if providers is None else providers
    wanted = asked if asked != "auto" else ("cuda" if device == "cuda" or "CUDAExecutionProvider" in available else "cpu")
    if wanted != "cpu" and ORT_PROVIDERS[wanted][0] not in available:
        name = ORT_PROVIDERS[wanted][0]
        if wanted == "cuda":  # the decoder's placement does not depend on ONNX Runtime
            fix = (f"Install the GPU build: {ORT_GPU_INSTALL} (it also needs the CUDA and cuDNN libraries it was built "
                   "for), or add --vision-provider cpu to keep only the vision encoder on the CPU.")
        else:
            fix = "Install onnxruntime-gpu with the TensorRT libraries on the library path, or use --vision-provider cuda."
        raise DeviceUnavailable(f"the vision encoder's runtime, onnxruntime, has no {name} here "
                                f"(it offers {', '.join(available) or 'nothing: onnxruntime is not installed'})", fix=fix)
    return wanted


def _layers(device: str, gpu_layers: int | None, gpu_offload: bool | None) -> int:
    if device == "cpu" or gpu_layers == 0:
        return 0
    wants_gpu = device == "cuda" or gpu_layers is not None
    offload = llama_gpu_offload() if gpu_offload is None else gpu_offload
    if wants_gpu and not offload:
        from exaone_edge.llama import gpu_backends, log_since

        raise no_llama_gpu(gpu_backends(), log_since(0))
    if not offload:
        return 0
    return ALL_LAYERS if gpu_layers is None else gpu_layers


def no_llama_gpu(backends: list[str], log: list[str]) -> DeviceUnavailable:
    """Why llama.cpp offers no GPU: a build without a GPU backend, or one whose backend (CUDA) found no device, the
    driver's own error being llama.cpp's last logged line (ggml_cuda_init: failed to initialize CUDA: ...)."""
    if not backends:
        return DeviceUnavailable("the decoder's runtime, llama.cpp (llama-cpp-python), was built without a GPU backend",
                                 fix=f"Rebuild it with CUDA: {LLAMA_GPU_INSTALL} (needs the CUDA toolkit's nvcc), "
                                     "or use --device cpu.")
    said = f" ({log[-1]})" if log else ""
    return DeviceUnavailable(f"llama.cpp's {'/'.join(backends)} backend found no usable GPU{said}",
                             fix="Check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu.")


def gpu_layer_split(gpu_layers: int, num_layers: int, head_blocks: int = 0) -> tuple[int, int, bool]:
    """(repeating layers on the GPU, MTP blocks on the GPU, whether the output layer is) for llama.cpp's
    n_gpu_layers = `gpu_layers`, when the GGUF file holds `head_blocks` MTP blocks after the `num_layers` layers.

    llama.cpp (llama-cpp-python 0.3.36's vendor tree), src/llama-model.cpp, `load_tensors`: block indices
    0..n_layer_all-1 are the file's blocks (the MTP blocks last: block_count counts them) and index n_layer_all the
    output layer; `i_gpu_start = max(n_layer_all + 1 - n_gpu_layers, 0)`, and index il goes to a GPU when
    il >= i_gpu_start (a negative n_gpu_layers counts as n_layer_all + 1). So N > 0 puts the output layer first, then
    the MTP blocks (placed whether or not they are loaded), then the last repeating layers; the input layer
    (token_embd) never goes there (`dev_input` is the CPU).
    """
    if gpu_layers < 0 or gpu_layers > num_layers + head_blocks:
        return num_layers, head_blocks, True
    behind_output = max(gpu_layers - 1, 0)
    head = min(behind_output, head_blocks)
    return behind_output - head, head, gpu_layers > 0


def describe_gpu_layers(gpu_layers: int, num_layers: int, head_blocks: int = 0) -> str:
    """What llama.cpp's n_gpu_layers = `gpu_layers` puts on the GPU, in words (gpu_layer_split's order)."""
    if gpu_layers == 0:
        return "no layer"
    repeating, head, _ = gpu_layer_split(gpu_layers, num_layers, head_blocks)
    if repeating == num_layers and head == head_blocks:
        return "every layer"
    blocks = f", the MTP block{'s' if head > 1 else ''}" if head else ""
    return f"the output layer{blocks} and {repeating} repeating layers"


def predicted_placement(device: str = "auto", gpu_layers: int | None = None, vision_provider: str = "auto", *,
                        has_vision: bool = True) -> Placement:
    """What `choose_placement` decides on a GPU box set up as the README says (`plan`'s assumption)."""
    return choose_placement(device, gpu_layers, vision_provider, has_vision=has_vision,
                            providers=GPU_BOX_PROVIDERS, gpu_offload=True)
