"""Image and PDF loading: formats, orientation, transparency, page selection, pixel budget, bombs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from exaone_edge.errors import InputError
from exaone_edge.images import (
    DocumentLimits,
    load_document,
    open_image,
    parse_pages,
    render_pdf,
    render_scale,
)
from exaone_edge.errors import ImageRejected


def _noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8).squeeze(), mode=mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_image_formats_decode_to_rgb(tmp_path, fmt):
    path = tmp_path / f"page.{fmt.lower()}"
    _noise(120, 80).save(path, format=fmt)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (120, 80)
    assert load_document(path, max_pixels=10_000)[0].size == (120, 80)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    _noise(120, 80).save(path, exif=exif.tobytes())
    assert open_image(path).size == (80, 120)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    image = open_image(buffer.getvalue())
    assert image.getpixel((5, 5)) == (255, 255, 255)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(10_000, 10_000), (50_000, 50_000)])
def test_decompression_bombs_are_rejected_before_decoding(size):
    with pytest.raises(ImageRejected, match="pixels exceeds the limit|decompression bomb"):
        open_image(_png_header_only(*size))


def test_pixel_limit_is_configurable():
    buffer = io.BytesIO()
    _noise(200, 200).save(buffer, format="PNG")
    with pytest.raises(ImageRejected, match="40,000 pixels exceeds the limit of 10,000"):
        open_image(buffer.getvalue(), DocumentLimits(max_image_pixels=10_000))


@pytest.mark.parametrize("data", [b"not an image at all", b"GIF89a" + b"\0" * 40, b"\x89PNG\r\n\x1a\ntruncated"])
def test_non_images_are_rejected(data):
    with pytest.raises(ImageRejected, match="not a readable image"):
        open_image(data)


def test_parse_pages():
    assert parse_pages("1-3,5", 6) == [0, 1, 2, 4]
    assert parse_pages(None, 3) == [0, 1, 2]
    assert parse_pages("2, 2-3", 3) == [1, 2]
    for bad in ("0", "4", "3-2", "x", "1-"):
        with pytest.raises(InputError):
            parse_pages(bad, 3)


@pytest.fixture()
def pdf_path(tmp_path):
    pages = [_noise(850, 1100), _noise(1100, 850), _noise(850, 1100)]
    path = tmp_path / "report.pdf"
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=100.0)  # 8.5×11 in
    return path


def test_pdf_pages_render_within_the_pixel_budget(pdf_path):
    budget = 262_144
    images = render_pdf(pdf_path, "1-2", max_pixels=budget)
    assert len(images) == 2
    for image in images:
        assert image.mode == "RGB"
        assert budget * 0.97 <= image.width * image.height <= budget
    assert images[0].height > images[0].width and images[1].width > images[1].height
    assert len(load_document(pdf_path, None, max_pixels=budget)) == 3


def test_pdf_dpi_is_capped_for_large_budgets():
    assert render_scale(612, 792, 10**9) == pytest.approx(300 / 72)


def test_pdf_page_limits_and_errors(pdf_path, tmp_path):
    with pytest.raises(InputError, match="outside 1-3"):
        render_pdf(pdf_path, "4", max_pixels=10_000)
    with pytest.raises(InputError, match="limit is 2"):
        render_pdf(pdf_path, "1-3", max_pixels=10_000, limits=DocumentLimits(max_pdf_pages=2))
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\nnothing else")
    with pytest.raises(ImageRejected, match="not a readable PDF"):
        load_document(broken, max_pixels=10_000)
    with pytest.raises(InputError, match="not found"):
        load_document(tmp_path / "missing.png", max_pixels=10_000)
