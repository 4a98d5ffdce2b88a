"""The validation checklist: the exported graph against HF PyTorch on pages of several shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from exaone_edge.metrics import row_cosines


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None  # relative to max(1, largest |reference| value); None: not checked
    min_row_cosine: float | None  # the worst row
    mean_row_cosine: float


# fp16 rounds every weight and activation to 11 bits; int8/int8w/int4 are judged on direction (cosine) only.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_row_cosine=0.9999, mean_row_cosine=0.9999),
    "fp16": Tolerance(max_abs=2e-2, min_row_cosine=0.999, mean_row_cosine=0.9995),
    "int8": Tolerance(max_abs=None, min_row_cosine=None, mean_row_cosine=0.99),
    "int8w": Tolerance(max_abs=None, min_row_cosine=0.999, mean_row_cosine=0.9995),
    "int4": Tolerance(max_abs=None, min_row_cosine=None, mean_row_cosine=0.98),
}


def page_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A page-like test image: light background, dark text-like strokes, a coloured block, some noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    page = np.full((height, width, 3), 245, dtype=np.float32)
    line = max(2, height // 40)
    for top in range(line, height - line, 2 * line):
        ends = rng.integers(width // 3, width, endpoint=True)
        page[top:top + max(1, line // 2), width // 20:ends] = rng.integers(0, 80)
    page[height // 2:height // 2 + height // 6, width // 10:width // 2] = rng.integers(0, 256, 3)
    page += rng.normal(0, 8, page.shape)
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class PageCheck:
    page: str
    size: tuple[int, int]
    grid: tuple[int, int, int]
    rows: int
    max_abs: float
    reference_max: float
    min_row_cosine: float
    mean_row_cosine: float
    ok: bool


def compare(name: str, size: tuple[int, int], grid: tuple[int, int, int], got: np.ndarray, want: np.ndarray,
            tolerance: Tolerance) -> PageCheck:
    if got.shape != want.shape:
        return PageCheck(name, size, grid, int(want.shape[0]), float("inf"), 0.0, -1.0, -1.0, False)
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    max_abs = float(np.abs(got64 - want64).max())
    scale = max(1.0, float(np.abs(want64).max()))
    cosine = row_cosines(want64, got64)
    ok = cosine.mean() >= tolerance.mean_row_cosine
    if tolerance.min_row_cosine is not None:
        ok = ok and cosine.min() >= tolerance.min_row_cosine
    if tolerance.max_abs is not None:
        ok = ok and max_abs <= tolerance.max_abs * scale
    return PageCheck(name, size, grid, int(want.shape[0]), max_abs, float(np.abs(want64).max()),
                     float(cosine.min()), float(cosine.mean()), bool(ok))


def summary(precision: str, checks: list[PageCheck]) -> dict:
    tolerance = TOLERANCES[precision]
    return {
        "reference": "transformers Exaone4_5_VisionModel (float32, CPU) pooler_output",
        "precision": precision,
        "tolerance": asdict(tolerance),
        "passed": all(check.ok for check in checks),
        "pages": [asdict(check) for check in checks],
    }


def format_line(check: PageCheck) -> str:
    mark = "✓" if check.ok else "✗"
    return (f"{mark} {check.page:<16} {check.size[0]}x{check.size[1]} grid {check.grid[1]}x{check.grid[2]} "
            f"rows {check.rows}: max|Δ| {check.max_abs:.1e} (ref {check.reference_max:.2f}) "
            f"cos min {check.min_row_cosine:.6f} mean {check.mean_row_cosine:.6f}")
