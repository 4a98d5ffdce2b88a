"""Where `plan`'s sizes come from: a bundle (measured file sizes) or a checkpoint folder, of which only config.json
is needed (or `exaone-4.5-33b`, the released config built in), and the page size the vision activations are sized
for (the preprocessor's max_pixels, or `--image-max-tokens` as run/serve enforce it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from exaone_edge import bundle as bundle_format
from exaone_edge.checkpoint import read_json
from exaone_edge.errors import ArtifactError, CheckpointError
from exaone_edge.manifest import MANIFEST_NAME, read_manifest, typed_details
from exaone_edge.spec import RELEASED_33B_CONFIG, ModelSpec, image_spec, model_spec
from exaone_edge.vision.contract import FUSED_ATTENTION, KIND as VISION_KIND, PREPROCESSOR_FILE, VisionDetails
from exaone_edge.vision.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, budget_max_pixels

# Names `plan` takes instead of a folder: the released 33B's config.json, built in (exaone_edge/data/).
RELEASED_NAMES = ("exaone-4.5-33b", "lgai-exaone/exaone-4.5-33b")


@dataclass(frozen=True)
class Source:
    spec: ModelSpec
    max_pixels: int
    pixels_from: str
    min_pixels: int
    token_side: int  # pixels a side of one image token (patch × merge)
    fused: bool
    decoder_params: int
    vision_params: int
    measured_level: str | None
    measured_decoder_bytes: int | None
    measured_vision_bytes: int | None
    measured_embedding_bytes: int | None  # token_embd in decoder.gguf
    measured_output_bytes: int | None = None  # output.weight in decoder.gguf (None: tied, or not read)
    measured_mtp_bytes: int | None = None  # the MTP head's tensors in decoder.gguf (blk.<num_layers>.*)
    drafting: bool = False  # --draft mtp: the head is loaded, with an MTP context of its own


def _pixels(directory: Path, spec: ModelSpec) -> tuple[int, int, int, str]:
    """min_pixels, max_pixels, pixels a side of an image token, and where they came from."""
    path = directory / PREPROCESSOR_FILE
    if path.is_file():
        image = image_spec(read_json(path, "image processor config"), path)
        return image.min_pixels, image.max_pixels, image.patch_size * image.merge_size, str(path)
    side = spec.vision.patch_size * spec.vision.spatial_merge_size
    return DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, side, f"no {PREPROCESSOR_FILE}: transformers' EXAONE 4.5 default"


def _gguf_sizes(path: Path, head_block: int) -> tuple[int | None, int | None, int | None]:
    """(token_embd, output.weight, MTP head) bytes in a GGUF file, the head being block `head_block`; Nones without
    the gguf package (the conversion extra), then estimated."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None, None, None
    try:
        tensors = GGUFReader(str(path)).tensors
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"not a readable GGUF file ({exc})", path=path, fix="Re-create the bundle.") from None
    sizes = {tensor.name: int(tensor.n_bytes) for tensor in tensors if tensor.name in ("token_embd.weight", "output.weight")}
    if "token_embd.weight" not in sizes:
        raise ArtifactError("the GGUF file has no token_embd.weight", path=path, fix="Re-create the bundle.")
    head = sum(int(t.n_bytes) for t in tensors if t.name.startswith(f"blk.{head_block}."))
    return sizes["token_embd.weight"], sizes.get("output.weight"), head


def _read_spec(config_path: Path) -> ModelSpec:
    config = read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object", path=config_path)
    return model_spec(config, config_path)


def load_source(path: Path) -> Source:
    """A bundle (measured file sizes) or a checkpoint folder, of which only config.json is needed."""
    path = Path(path)
    built_in = not path.exists() and str(path).lower() in RELEASED_NAMES  # plan before downloading anything
    if not built_in and not path.is_dir():
        raise CheckpointError("not a directory" if path.exists() else "directory does not exist", path=path,
                              fix="Pass a checkpoint folder (config.json is enough), a bundle, or exaone-4.5-33b "
                                  "(the released config, built in).")
    spec = _read_spec(RELEASED_33B_CONFIG if built_in else path / "config.json")
    min_pixels, max_pixels, token_side, pixels_from = _pixels(RELEASED_33B_CONFIG.parent if built_in else path, spec)
    if built_in:
        pixels_from = f"{path}: transformers' EXAONE 4.5 default"
    params = spec.decoder.body_params + spec.decoder.embedding_params
    if (path / MANIFEST_NAME).is_file():  # a bundle, read through its format
        bundle = bundle_format.load_bundle(path, verify=False)
        vision_bytes = sum(f.stat().st_size for f in bundle.vision_dir.glob("vision.onnx*")) if bundle.has_vision else 0
        fused = False  # a graph exported before fused attention (or with none recorded) holds the scores
        if bundle.has_vision:
            vision_manifest = read_manifest(bundle.vision_dir, kind=VISION_KIND, verify=False)
            details = typed_details(VisionDetails, vision_manifest, bundle.vision_dir / MANIFEST_NAME)
            fused = details.attention == FUSED_ATTENTION
        embedding, output, head = _gguf_sizes(bundle.decoder_path, spec.decoder.num_layers)
        return Source(
            spec, max_pixels, pixels_from, min_pixels, token_side, fused, params, spec.vision.params,
            bundle.details.decoder.level, bundle.decoder_path.stat().st_size, vision_bytes or None, embedding, output,
            head,
        )
    # A checkpoint: planned as `exaone-edge export` writes its vision graph, full attention fused.
    return Source(spec, max_pixels, pixels_from, min_pixels, token_side, True, params, spec.vision.params,
                   None, None, None, None)


def with_draft(source: Source, draft: str | None) -> Source:
    """The source as `run`/`serve --draft` load it (the MTP head and its context counted)."""
    return replace(source, drafting=draft is not None)


def with_page_budget(source: Source, image_max_tokens: int | None) -> Source:
    """Pages of at most `image_max_tokens` rows, as run/serve --image-max-tokens enforce them."""
    if image_max_tokens is None:
        return source
    side = source.token_side
    max_pixels = budget_max_pixels(image_max_tokens, side, source.min_pixels, source.max_pixels)
    if max_pixels < source.max_pixels:
        pixels_from = (f"--image-max-tokens {image_max_tokens:,} × {side}×{side}; "
                       f"{source.pixels_from} allows {source.max_pixels:,}")
    else:
        pixels_from = f"{source.pixels_from}; --image-max-tokens {image_max_tokens:,} allows more"
    return replace(source, max_pixels=max_pixels, pixels_from=pixels_from)
