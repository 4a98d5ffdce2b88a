"""exaone_edge.vision: preprocessing and geometry against transformers, and the torch-free ONNX encoder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exaone_edge.checkpoint import open_checkpoint
from exaone_edge.errors import ArtifactError, InputError
from exaone_edge.spec import RELEASED_33B_CONFIG
from exaone_edge.vision import graph_inputs, grid_for, preprocess, rope_theta, rows_for

# (width, height): square, tall A4, wide, tiny (below min_pixels), large (above max_pixels), odd primes
SIZES = [(448, 448), (595, 842), (1024, 300), (20, 30), (2480, 3508), (333, 517), (97, 1201)]


def page(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[: size[1] // 2, :, :3] = 250  # a flat region next to noise: resampling at edges matters
    image = Image.fromarray(pixels, "RGBA")
    return image if mode == "RGBA" else image.convert(mode)


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir):
    return open_checkpoint(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_processor(tiny_model_dir):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**json.loads((tiny_model_dir / "preprocessor_config.json").read_text()))


@pytest.fixture(scope="module")
def hf_tower(checkpoint):
    from exaone_edge.torch_weights import load_vision_tower

    return load_vision_tower(checkpoint, attention="eager")


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_equals_hf_processor(checkpoint, hf_processor, size):
    image = page(size, seed=size[0])
    want = hf_processor(images=[image], return_tensors="np")
    patches, grid = preprocess(image, checkpoint.image)
    assert grid == tuple(want["image_grid_thw"][0])
    assert patches.dtype == np.float32 and patches.shape == want["pixel_values"].shape
    assert np.array_equal(patches, want["pixel_values"])  # bit for bit
    assert rows_for(size, checkpoint.image) == int(np.prod(grid)) // checkpoint.image.merge_size**2


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_preprocess_colour_modes_equal_hf_processor(checkpoint, hf_processor, mode):
    image = page((200, 150), seed=3, mode=mode)
    want = hf_processor(images=[image], return_tensors="np")["pixel_values"]
    patches, _ = preprocess(image, checkpoint.image)
    assert np.abs(patches - want).max() <= 1e-6


def test_preprocess_refuses_unusable_shapes(checkpoint):
    with pytest.raises(InputError, match="aspect ratio"):
        grid_for((5000, 20), checkpoint.image)
    with pytest.raises(InputError, match="no pixels"):
        grid_for((0, 20), checkpoint.image)


def test_grid_follows_the_checkpoint_patch_size(checkpoint):
    spec = checkpoint.image
    assert spec.patch_size == 14  # the tiny model, like the released EXAONE 4.5
    t, h, w = grid_for((640, 480), spec)
    assert (t, h % spec.merge_size, w % spec.merge_size) == (1, 0, 0)
    assert h * w * spec.patch_size**2 <= spec.max_pixels


@pytest.fixture(scope="module")
def patch16():
    """A tower and processor with patch 16 (and window 128): nothing may assume EXAONE 4.5's 14."""
    import torch
    from transformers.models.exaone4_5.configuration_exaone4_5 import Exaone4_5_VisionConfig
    from transformers.models.exaone4_5.modeling_exaone4_5 import Exaone4_5_VisionModel
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from exaone_edge.spec import ImageSpec, vision_spec

    vision = dict(depth=3, hidden_size=64, intermediate_size=96, num_heads=4, num_key_value_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=128, fullatt_block_indexes=[1],
                  out_hidden_size=48, hidden_act="silu")
    torch.manual_seed(0)
    config = Exaone4_5_VisionConfig(**vision)
    config._attn_implementation = "eager"
    tower = Exaone4_5_VisionModel._from_config(config, dtype=torch.float32).eval()
    size = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 200}
    processor = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, size=size)
    image = ImageSpec(size["shortest_edge"], size["longest_edge"], 16, 2, 2, tuple(processor.image_mean),
                      tuple(processor.image_std))
    return tower, processor, image, vision_spec(vision, Path("patch16"))


def test_another_patch_size_goes_through_the_same_code(patch16):
    """Preprocessing, window geometry and the export wrapper take the patch size from the configs only."""
    import torch

    from exaone_edge.export.graph import VisionGraph
    from exaone_edge.vision import INPUT_NAMES

    tower, processor, image_spec, spec = patch16
    graph = VisionGraph(tower).eval()
    for seed, size in enumerate([(595, 842), (333, 517), (1024, 300)]):
        picture = page(size, seed=seed)
        want = processor(images=[picture], return_tensors="np")
        patches, grid = preprocess(picture, image_spec)
        assert grid == tuple(want["image_grid_thw"][0]) and np.array_equal(patches, want["pixel_values"])
        feeds = {"pixel_patches": patches, **graph_inputs([grid], spec, 10000.0)}
        with torch.no_grad():
            expected = tower(torch.from_numpy(patches), grid_thw=torch.tensor([grid])).pooler_output.numpy()
            got = graph(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).numpy()
        assert np.abs(got - expected).max() <= 1e-5, size


def test_geometry_inputs_reproduce_hf_tower(checkpoint, hf_tower):
    """The export wrapper fed numpy geometry equals HF's own forward on pages of every shape."""
    import torch

    from exaone_edge.export.graph import VisionGraph
    from exaone_edge.vision import INPUT_NAMES

    graph = VisionGraph(hf_tower).eval()
    theta = rope_theta(checkpoint.config["vision_config"])
    batches = [[(448, 448)], [(595, 842)], [(20, 30)], [(1024, 300)], [(333, 517)], [(97, 1201)]]
    for sizes in batches:
        prepared = [preprocess(page(size, seed=i), checkpoint.image) for i, size in enumerate(sizes)]
        patches = np.concatenate([p for p, _ in prepared])
        grids = [g for _, g in prepared]
        feeds = {"pixel_patches": patches, **graph_inputs(grids, checkpoint.spec.vision, theta)}
        with torch.no_grad():
            want = hf_tower(torch.from_numpy(patches), grid_thw=torch.tensor(grids)).pooler_output.numpy()
            got = graph(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5, sizes


@pytest.mark.parametrize("config", ["tiny", "exaone45_33b"])
def test_geometry_equals_transformers_helpers(checkpoint, config):
    """Window order, window boundaries and rotary positions as transformers' vision_utils computes them,
    for the tiny tower and the released one (patch 14, window 112: 4×4 merge units per window)."""
    import torch
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    from exaone_edge.spec import vision_spec
    from exaone_edge.vision.geometry import position_ids, window_index

    path = RELEASED_33B_CONFIG
    spec = checkpoint.spec.vision if config == "tiny" else vision_spec(json.loads(path.read_text())["vision_config"], path)
    grids = [(1, 74, 52), (1, 6, 4), (1, 2, 2), (1, 12, 18), (1, 38, 26)]
    want_order, cu = get_vision_window_index(torch.tensor(grids), spec.spatial_merge_size, spec.window_size,
                                             spec.patch_size)
    order, lengths = window_index(grids, spec)
    assert np.array_equal(order, want_order.numpy())
    assert np.array_equal(np.unique(cu.numpy()), np.unique(np.concatenate([[0], np.cumsum(lengths * spec.spatial_merge_size**2)])))
    want_positions = get_vision_position_ids(torch.tensor(grids), spec.spatial_merge_size)
    assert np.array_equal(position_ids(grids, spec.spatial_merge_size), want_positions.numpy())


def test_geometry_windows_partition_every_patch(checkpoint):
    spec = checkpoint.spec.vision
    unit = spec.spatial_merge_size**2
    feeds = graph_inputs([(1, 38, 26)], spec, 10000.0)
    units, patches = 38 * 26 // unit, 38 * 26
    assert sorted(feeds["window_index"].tolist()) == list(range(units))
    assert np.array_equal(feeds["window_index"][feeds["reverse_index"]], np.arange(units))
    assert len(feeds["cos"]) == len(feeds["window_scatter"]) == patches
    gather = feeds["window_gather"]
    assert sorted(gather[gather >= 0].tolist()) == list(range(patches))  # each patch in exactly one window
    assert np.array_equal(gather.reshape(-1)[feeds["window_scatter"]], np.arange(patches))
    assert (gather >= 0).sum(1).min() > 0  # no window of padding only


def test_geometry_refuses_several_images_in_one_run(checkpoint):
    """Full-attention blocks span the whole run, so two pages in one run would attend to each other."""
    with pytest.raises(ValueError, match="one still image per run"):
        graph_inputs([(1, 38, 26), (1, 6, 4)], checkpoint.spec.vision, 10000.0)
    with pytest.raises(ValueError, match="one still image per run"):
        graph_inputs([(2, 38, 26)], checkpoint.spec.vision, 10000.0)


@pytest.fixture(scope="module")
def export_dir(tiny_model_dir, tmp_path_factory):
    from exaone_edge.export.vision import export_vision

    out = tmp_path_factory.mktemp("vision") / "export"
    export_vision(tiny_model_dir, out, pages=(("square", (64, 64)),))
    return out


def test_encoder_runs_without_torch_and_matches_hf_on_every_size(export_dir, checkpoint, hf_tower, tmp_path):
    """One graph, every page size; the runtime side never imports torch or transformers."""
    import torch

    sizes = SIZES[:6]
    for i, size in enumerate(sizes):
        page(size, seed=i).save(tmp_path / f"{i}.png")
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from PIL import Image
        from exaone_edge.vision import VisionEncoder
        encoder = VisionEncoder({str(export_dir)!r})
        for i, size in enumerate({sizes!r}):
            image = Image.open({str(tmp_path)!r} + f"/{{i}}.png")
            rows = encoder.encode(image)
            assert rows.shape == (encoder.rows_for(image.size), encoder.out_hidden), rows.shape
            np.save({str(tmp_path)!r} + f"/{{i}}.npy", rows)
        heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for i, size in enumerate(sizes):
        patches, grid = preprocess(Image.open(tmp_path / f"{i}.png"), checkpoint.image)
        with torch.no_grad():
            want = hf_tower(torch.from_numpy(patches), grid_thw=torch.tensor([grid])).pooler_output.numpy()
        got = np.load(tmp_path / f"{i}.npy")
        assert np.abs(got - want).max() <= 1e-4, size
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() >= 0.9999, size


def test_encoder_refuses_altered_or_foreign_artifacts(export_dir, tmp_path):
    import shutil

    from exaone_edge.vision import VisionEncoder

    with pytest.raises(ArtifactError, match="no manifest"):
        VisionEncoder(tmp_path)
    altered = tmp_path / "altered"
    shutil.copytree(export_dir, altered)
    with open(altered / "vision.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="checksum"):
        VisionEncoder(altered)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["kind"] = "bundle"
    foreign = tmp_path / "foreign"
    shutil.copytree(export_dir, foreign)
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="expected a 'vision-onnx'"):
        VisionEncoder(foreign)
