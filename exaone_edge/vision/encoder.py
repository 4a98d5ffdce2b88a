"""The deployed vision encoder: page image → decoder rows, with ONNX Runtime and numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from exaone_edge.errors import ArtifactError, MissingDependency
from exaone_edge.manifest import MANIFEST_NAME, read_manifest, typed_details
from exaone_edge.progress import log
from exaone_edge.spec import VisionSpec, image_spec, vision_spec
from exaone_edge.vision.contract import GRAPH_FILE, INPUT_NAMES, KIND, OUTPUT_NAME, PREPROCESSOR_FILE, VisionDetails
from exaone_edge.vision.geometry import Grid, graph_inputs, rope_theta
from exaone_edge.vision.preprocess import preprocess, rows_for, with_image_max_tokens


# Ops ONNX Runtime places on the CPU beside a GPU provider on purpose (shape arithmetic, a few elements each).
SHAPE_OPS = frozenset({"Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Slice", "Cast", "Range",
                       "ConstantOfShape", "Constant", "Equal", "Where", "Expand", "Div", "Mul", "Add", "Sub"})


def session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An ORT session with full graph optimization for whichever execution provider runs it. On a GPU provider: the
    CUDA options of exaone_edge.device.ORT_PROVIDER_OPTIONS, warnings shown (why a provider did not start, nodes not
    assigned to it), and the graph's per-provider assignment recorded for `cpu_nodes`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependency(
            "the vision encoder needs onnxruntime", fix="pip install 'exaone-edge[runtime]'"
        ) from None
    from exaone_edge.device import ORT_GPU_INSTALL, ORT_PROVIDER_OPTIONS, DeviceUnavailable

    wanted = list(providers or ["CPUExecutionProvider"])
    gpu = wanted[0] != "CPUExecutionProvider"
    severity = 2 if gpu else 3  # CPU sessions stay quiet; on a GPU, ORT's warnings are the only trace of a fallback
    ort.set_default_logger_severity(severity)  # graph loading logs through the default logger, not the session's
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = severity
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if threads:
        options.intra_op_num_threads = threads
    configured = [(name, ORT_PROVIDER_OPTIONS[name]) if name in ORT_PROVIDER_OPTIONS else name for name in wanted]
    fix = f"Check the CUDA and cuDNN libraries onnxruntime-gpu needs ({ORT_GPU_INSTALL}), or use --device cpu."
    try:  # no silent fallback (ORT would print to stdout and retry on the CPU)
        created = ort.InferenceSession(str(path), options, providers=configured, enable_fallback=0)
    except (RuntimeError, ValueError) as exc:
        if not gpu:
            raise
        raise DeviceUnavailable(f"onnxruntime could not start {wanted[0]} for the vision encoder ({exc})", fix=fix) from None
    # ONNX Runtime falls back to the CPU, with only a log line, when a GPU provider's CUDA/cuDNN libraries are missing.
    if wanted[0] not in created.get_providers():
        raise DeviceUnavailable(f"onnxruntime could not start {wanted[0]} for the vision encoder "
                                f"(running on {', '.join(created.get_providers())})", fix=fix)
    return created


def cpu_nodes(created) -> dict[str, int]:
    """Compute nodes (op type → count) ONNX Runtime assigned to the CPU although the session's first provider is a GPU
    one, e.g. a MatMulNBits width its CUDA kernel lacks: `get_providers()` still lists CUDA, only this tells."""
    if created.get_providers()[0] == "CPUExecutionProvider":
        return {}
    return cpu_assigned(created.get_provider_graph_assignment_info())


def cpu_assigned(assignment) -> dict[str, int]:
    """Op type → count of the non-shape nodes in ORT's graph assignment (`get_provider_graph_assignment_info()`, with
    session.record_ep_graph_assignment_info on) that went to the CPU provider."""
    counts: dict[str, int] = {}
    for subgraph in assignment:
        if subgraph.ep_name == "CPUExecutionProvider":
            for node in subgraph.get_nodes():
                if node.op_type not in SHAPE_OPS:
                    counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class VisionEncoder:
    """`encode(image)` → [rows, out_hidden] float32; one ONNX graph serves every page size."""

    def __init__(self, export_dir: Path | str, providers: list[str] | None = None, *, verify: bool = True,
                 threads: int | None = None, image_max_tokens: int | None = None) -> None:
        """`image_max_tokens` lowers the page size to that many rows an image (None: the export's max_pixels)."""
        self.path = Path(export_dir)
        self.manifest = read_manifest(self.path, kind=KIND, verify=verify)
        details = typed_details(VisionDetails, self.manifest, self.path / MANIFEST_NAME)
        self.vision, self.theta = _vision_spec(details.spec, self.path / MANIFEST_NAME)
        preprocessor = self.path / PREPROCESSOR_FILE
        image = image_spec(json.loads(preprocessor.read_text(encoding="utf-8")), preprocessor)
        self.image = with_image_max_tokens(image, image_max_tokens)  # a bad value fails before the session loads
        self.precision = details.precision
        self.session = session(self.path / GRAPH_FILE, providers, threads)
        self.providers = tuple(self.session.get_providers())  # what ONNX Runtime actually runs it on
        self.cpu_nodes = cpu_nodes(self.session)  # nodes left on the CPU under a GPU provider
        if self.cpu_nodes:
            listed = ", ".join(f"{op} ×{count}" for op, count in sorted(self.cpu_nodes.items()))
            log(f"vision: nodes run on the CPU beside {self.providers[0]} ({self.precision} graph): {listed}")
        names = [i.name for i in self.session.get_inputs()]
        if tuple(names) != INPUT_NAMES:
            raise ArtifactError(f"graph inputs are {names}, expected {list(INPUT_NAMES)}",
                                path=self.path / GRAPH_FILE, fix="Re-export with this toolkit version.")

    @property
    def out_hidden(self) -> int:
        return self.vision.out_hidden_size

    def rows_for(self, image_size: tuple[int, int]) -> int:
        """Rows `encode` returns for an image of `image_size` = (width, height)."""
        return rows_for(image_size, self.image)

    def inputs_for(self, patches: np.ndarray, grids: Grid | list[Grid]) -> dict[str, np.ndarray]:
        """Graph feeds for preprocessed images (patches of several images concatenated, in grid order)."""
        grids = [grids] if isinstance(grids, tuple) else list(grids)
        feeds = {"pixel_patches": np.ascontiguousarray(patches, dtype=np.float32)}
        feeds.update(graph_inputs(grids, self.vision, self.theta))
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (rows,) = self.session.run([OUTPUT_NAME], feeds)
        return rows.astype(np.float32, copy=False)

    def encode(self, image: Image.Image) -> np.ndarray:
        patches, grid = preprocess(image, self.image)
        return self.run(self.inputs_for(patches, grid))


def _vision_spec(config: object, source: Path) -> tuple[VisionSpec, float]:
    """The tower's sizes and rope theta from the checkpoint's vision_config, as recorded in the manifest."""
    if isinstance(config, dict) and isinstance(config.get("vision"), dict):  # {"vision": fields, "rope_theta": x}
        fields = dict(config["vision"])
        fields["fullatt_block_indexes"] = tuple(fields.get("fullatt_block_indexes") or ())
        try:
            return VisionSpec(**fields), float(config["rope_theta"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ArtifactError(f"manifest.json has an unusable vision spec ({exc!r})", path=source) from None
    if not isinstance(config, dict):
        raise ArtifactError("manifest.json has no vision spec (details.spec)", path=source,
                            fix="Re-export with `exaone-edge export`.")
    return vision_spec(config, source), rope_theta(config)
