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


class DeviceUnavailable(MissingDependency):
    """A GPU was asked for but the runtime that would use it has no GPU build here."""


def onnxruntime_providers() -> tuple[str, ...]:
    """ONNX Runtime's execution providers in this environment (none when onnxruntime is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


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
        layers = {0: "CPU", ALL_LAYERS: "GPU, every layer"}.get(self.gpu_layers, f"GPU, {self.gpu_layers} layers (rest on CPU)")
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
        if wanted == "cuda":
            fix = f"Install the GPU build: {ORT_GPU_INSTALL} (it also needs the CUDA and cuDNN libraries it was built for)."
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
        raise DeviceUnavailable("the decoder's runtime, llama.cpp (llama-cpp-python), was built without a GPU backend",
                                fix=f"Rebuild it with CUDA: {LLAMA_GPU_INSTALL} (needs the CUDA toolkit's nvcc), "
                                    "or use --device cpu.")
    if not offload:
        return 0
    return ALL_LAYERS if gpu_layers is None else gpu_layers


def predicted_placement(device: str = "auto", gpu_layers: int | None = None, vision_provider: str = "auto", *,
                        has_vision: bool = True) -> Placement:
    """What `choose_placement` decides on a GPU box set up as the README says (`plan`'s assumption)."""
    return choose_placement(device, gpu_layers, vision_provider, has_vision=has_vision,
                            providers=GPU_BOX_PROVIDERS, gpu_offload=True)
