"""Page image → pixel patches, in numpy + Pillow, identical to transformers' Qwen2-VL image processor.

Every step copies the reference's arithmetic (dtypes included), so the patches agree bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image

from exaone_edge.errors import InputError
from exaone_edge.images import to_rgb
from exaone_edge.spec import ImageSpec

MAX_ASPECT = 200  # the reference refuses pages more elongated than this
# Page limits when a checkpoint has no preprocessor_config.json (its own file decides when present): transformers'
# EXAONE 4.5 image processor defaults, size {"shortest_edge": 56·56, "longest_edge": 28·28·1280}
# (Exaone4_5_ImageProcessor in src/transformers/models/exaone4_5/image_processing_exaone4_5.py; transformers 5.23
# maps exaone4_5 to Qwen2VLImageProcessor, same defaults), the only published values (shared/NOTES.md).
DEFAULT_MIN_PIXELS = 56 * 56  # 3,136
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # 1,003,520: 1,280 image tokens
RESCALE = 1 / 255


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with the pixel count inside [min, max]."""
    if min(height, width) < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InputError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is beyond {MAX_ASPECT}:1",
            fix="Crop the image into parts before sending it.",
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def budget_max_pixels(image_max_tokens: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """The page limit for `image_max_tokens` merged image tokens (decoder rows) a page, as llama.cpp's
    `--image-max-tokens`: min(max_pixels, tokens × factor²), where factor = patch × merge (28 for EXAONE 4.5)."""
    unit = factor * factor
    fewest = max(1, -(-min_pixels // unit))  # below this, smart_resize's lower bound would exceed the upper one
    if isinstance(image_max_tokens, bool) or not isinstance(image_max_tokens, int) or image_max_tokens < fewest:
        raise InputError(
            f"--image-max-tokens {image_max_tokens} is outside the allowed range: at least {fewest:,} "
            f"(min_pixels {min_pixels:,} at {factor}×{factor} pixels a token)",
            fix=f"Pass a whole number from {fewest:,} up; the model's own page limit is {max_pixels // unit:,} tokens "
                f"(max_pixels {max_pixels:,}), and larger values change nothing.",
        )
    return min(max_pixels, image_max_tokens * unit)


def with_image_max_tokens(spec: ImageSpec, image_max_tokens: int | None) -> ImageSpec:
    """`spec` with its max_pixels lowered to `image_max_tokens` image tokens a page (None: unchanged)."""
    if image_max_tokens is None:
        return spec
    factor = spec.patch_size * spec.merge_size
    return replace(spec, max_pixels=budget_max_pixels(image_max_tokens, factor, spec.min_pixels, spec.max_pixels))


def grid_for(image_size: tuple[int, int], spec: ImageSpec) -> tuple[int, int, int]:
    """Patch grid (t, h, w) of an image of `image_size` = (width, height)."""
    width, height = image_size
    resized_h, resized_w = smart_resize(
        height, width, spec.patch_size * spec.merge_size, spec.min_pixels, spec.max_pixels
    )
    return 1, resized_h // spec.patch_size, resized_w // spec.patch_size


def rows_for(image_size: tuple[int, int], spec: ImageSpec) -> int:
    """Decoder rows (image placeholders) an image of `image_size` = (width, height) becomes."""
    t, h, w = grid_for(image_size, spec)
    return t * h * w // spec.merge_size**2


def fit_page(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """The RGB image at the size the encoder sees it (smart_resize within spec's pixel limits, bicubic): fitting a
    page again, here or in transformers' processor, leaves it as it is."""
    rgb = to_rgb(image)
    _, grid_h, grid_w = grid_for(rgb.size, spec)
    return rgb.resize((grid_w * spec.patch_size, grid_h * spec.patch_size), resample=Image.Resampling.BICUBIC)


def preprocess(image: Image.Image, spec: ImageSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Pixel patches [n_patches, C*T*P*P] float32 and the grid (t, h, w) of one image."""
    resized = np.array(fit_page(image, spec))
    patch, merge, temporal = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    grid_h, grid_w = resized.shape[0] // patch, resized.shape[1] // patch
    scaled = (resized.astype(np.float64) * RESCALE).astype(np.float32)
    mean = np.array(spec.image_mean, dtype=np.float32)
    std = np.array(spec.image_std, dtype=np.float32)
    chw = np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))
    channels = chw.shape[0]
    patches = chw.reshape(channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], temporal, patch, patch))
    flat = patches.reshape(grid_h * grid_w, channels * temporal * patch * patch).astype(np.float32, copy=False)
    return np.ascontiguousarray(flat), (1, grid_h, grid_w)
