"""Calibration prompts keep whole pages: never a cut through an image's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exaone_edge.errors import InputError
from exaone_edge.quantize.calibration import PAGE_TEXT_ALLOWANCE, CalibrationSample, PromptBuilder, build_prompts


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir: Path):
    from exaone_edge.checkpoint import open_checkpoint

    return open_checkpoint(tiny_model_dir)


def _page_rows(rows: int, width: int):
    def vision(image) -> np.ndarray:  # a real 33B page: up to 4,096 rows (the tiny tower stops at 64)
        return np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    return vision


def test_a_large_page_keeps_every_image_row(checkpoint, capsys):
    rows = 3000  # beyond the 1,024-position KL limit that used to cut it
    builder = PromptBuilder(checkpoint, _page_rows(rows, checkpoint.spec.decoder.hidden_size))
    page = Image.new("RGB", (64, 64), "white")
    long_answer = "total amount due " * 400  # text after the page: may be shortened, the page may not
    samples = [CalibrationSample(page, "What is the total?", long_answer, "big p1"),
               CalibrationSample(None, "A text-only prompt.", None, "text")]
    prompts = build_prompts(builder, samples, max_positions=1024)
    assert len(prompts) == 2
    images = [s for s in prompts[0] if isinstance(s, np.ndarray)]
    assert len(images) == 1 and images[0].shape[0] == rows
    assert np.array_equal(images[0], _page_rows(rows, checkpoint.spec.decoder.hidden_size)(page))
    whole = builder.segments(samples[0])
    assert sum(len(s) for s in prompts[0]) == rows + PAGE_TEXT_ALLOWANCE < sum(len(s) for s in whole)
    assert prompts[0][0] == whole[0]  # the chat header before the page is never cut either
    assert "raised from 1024 to 3512" in " ".join(capsys.readouterr().err.split())


class _Segments:
    """A builder stub: each sample's question names its segments."""

    def segments(self, sample):
        return sample.question


def test_a_page_that_cannot_fit_whole_drops_its_sample_with_a_reason(capsys):
    rows = np.zeros((100, 4), np.float32)
    fits = CalibrationSample(None, [list(range(20)), rows, list(range(5000))], source="fits")
    crowded = CalibrationSample(None, [list(range(700)), rows, list(range(5))], source="crowded")
    prompts = build_prompts(_Segments(), [fits, crowded], max_positions=64)
    limit = 100 + PAGE_TEXT_ALLOWANCE  # sized from the largest page, not the 64 asked for
    assert len(prompts) == 1 and prompts[0][1] is rows and sum(len(s) for s in prompts[0]) == limit
    logged = " ".join(capsys.readouterr().err.split())  # the log wraps long lines
    assert "crowded dropped: 700 text positions before its page leave no room for the page in 612" in logged


def test_no_prompt_fits_is_a_clear_error():
    sample = CalibrationSample(None, [list(range(2000)), np.zeros((10, 4), np.float32)])
    with pytest.raises(InputError, match="no calibration prompt fits"):
        build_prompts(_Segments(), [sample], max_positions=1024)
