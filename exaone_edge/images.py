"""The one image and PDF decoder: files and bytes into RGB PIL images, with limits that stop
decompression bombs early. Used by `run`/`serve`, document sets and preprocessing alike.

Pixel counts are checked from the file header before any pixel is decoded. PDF pages are rendered
at the resolution the vision encoder will use anyway (its `max_pixels` budget, lowered by
`--image-max-tokens` where given), never more.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from exaone_edge.errors import ImageRejected, InputError

IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
PDF_MAGIC = b"%PDF-"
MAX_RENDER_DPI = 300.0  # beyond this a page only gets bigger, not sharper for the encoder
POINTS_PER_INCH = 72.0


@dataclass(frozen=True)
class DocumentLimits:
    max_image_pixels: int = 64_000_000  # decoded pixels per image (a 8000×8000 scan); bombs are far larger
    max_pdf_pages: int = 32  # pages per PDF request
    max_file_bytes: int = 256 * 2**20


def open_image(source: Path | bytes, limits: DocumentLimits = DocumentLimits(), *, name: str = "image",
               frame: int = 0, formats: tuple[str, ...] = IMAGE_FORMATS) -> Image.Image:
    """Decode one frame of a PNG/JPEG/TIFF/WebP to RGB (EXIF orientation applied, transparency on white, as
    HF does); its size is checked against the limit from the header first."""
    data = _read(source, limits)
    label = str(source) if isinstance(source, Path) else name
    with _opened(data, label, formats) as image:
        try:
            image.seek(frame)
            _check_size(image.size, limits.max_image_pixels, label)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except ImageRejected:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's errors for truncated or corrupt files
            raise ImageRejected(f"{label}: not a readable image (damaged: {exc})", fix="Re-export or re-scan it.") from None


def frame_sizes(source: Path | bytes, limits: DocumentLimits = DocumentLimits(), *, name: str = "image",
                formats: tuple[str, ...] = IMAGE_FORMATS) -> list[tuple[int, int]]:
    """(width, height) of every frame (a multi-page TIFF has one per page), read from the headers only;
    each is checked against the pixel limit."""
    data = _read(source, limits)
    label = str(source) if isinstance(source, Path) else name
    with _opened(data, label, formats) as image:
        sizes = []
        try:
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                sizes.append(image.size)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected(f"{label}: not a readable image (damaged: {exc})") from None
    for index, size in enumerate(sizes):
        _check_size(size, limits.max_image_pixels, label, f" (page {index + 1})" if len(sizes) > 1 else "")
    return sizes


@contextmanager
def _opened(data: bytes, label: str, formats: tuple[str, ...]) -> Iterator[Image.Image]:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the guard; Pillow's warning threshold would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # beyond Pillow's own limit
        raise ImageRejected(f"{label}: rejected as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(
            f"{label}: not a readable image (not {', '.join(formats)})", fix="Use one of these formats, or a PDF."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"{label}: not a readable image (damaged: {exc})", fix="Re-export or re-scan it.") from None
    with image:
        yield image


def _check_size(size: tuple[int, int], max_pixels: int, label: str, where: str = "") -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(f"{label}: {width}×{height} = {width * height:,} pixels{where} exceeds the limit of "
                            f"{max_pixels:,}", fix="Downscale the image, or raise the pixel limit if it is trusted.")
    if width == 0 or height == 0:
        raise ImageRejected(f"{label}: the image is empty ({width}×{height}){where}")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparency is composited onto white, as the reference processor does."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def is_pdf(source: Path | bytes) -> bool:
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            return handle.read(len(PDF_MAGIC)) == PDF_MAGIC
    return source[: len(PDF_MAGIC)] == PDF_MAGIC


def parse_pages(spec: str | None, page_count: int, max_pages: int | None = None) -> list[int]:
    """'1-3,5' → [0, 1, 2, 4] (1-based in, 0-based out); None → every page.

    The selection is sized by arithmetic before any list is built, so '1-2000000000' (or a PDF whose page
    tree claims billions of pages) costs nothing; more than `max_pages` pages is an InputError.
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        ranges = [(0, page_count - 1)] if page_count > 0 else []
    else:
        ranges = []
        for part in spec.split(","):
            match = re.fullmatch(r"\s*(\d{1,12})\s*(?:-\s*(\d{1,12})\s*)?", part)
            if not match:
                raise InputError(f"page selection {spec[:64]!r} is not like '1-3,5'")
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) else first
            if first < 1 or last < first or last > page_count:
                raise InputError(f"pages {part.strip()} are outside 1-{page_count} (the document has {page_count} pages)")
            ranges.append((first - 1, last - 1))
    selected = sum(last - first + 1 for first, last in ranges)  # an upper bound: overlaps count twice
    if max_pages is not None and selected > max_pages:
        raise InputError(f"{selected:,} pages selected, the limit is {max_pages}", fix="Choose fewer pages (e.g. --pages 1-3).")
    return list(dict.fromkeys(page for first, last in ranges for page in range(first, last + 1)))


def render_pdf(
    source: Path | bytes,
    pages: str | None = None,
    *,
    max_pixels: int,
    limits: DocumentLimits = DocumentLimits(),
    name: str = "document.pdf",
    pixel_budget: int | None = None,
) -> list[Image.Image]:
    """Render the chosen pages at a DPI that fills, but does not exceed, the vision pixel budget.

    With `pixel_budget`, the pages' rendered sizes are added up from the page sizes first, and a selection
    that would exceed it is refused before any page is rendered."""
    import pypdfium2 as pdfium

    data = _read(source, limits)
    label = str(source) if isinstance(source, Path) else name
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise ImageRejected(f"{label}: not a readable PDF ({exc})") from None
    try:
        try:
            selected = parse_pages(pages, len(pdf), limits.max_pdf_pages)
        except InputError as exc:
            raise InputError(f"{label}: {exc.what}", fix=exc.fix) from None
        if pixel_budget is not None:
            total = sum(_rendered_pixels(pdf, index, max_pixels, label) for index in selected)
            if total > pixel_budget:
                raise ImageRejected(f"{label}: the {len(selected)} selected pages hold {total:,} pixels, more than the "
                                    f"{pixel_budget:,} left for this request", fix="Send fewer or smaller pages.")
        return [render_page(pdf, index, max_pixels, label) for index in selected]
    finally:
        pdf.close()


def render_page(pdf, index: int, max_pixels: int, label: str) -> Image.Image:
    """Page `index` of an open pypdfium2 document as RGB, by the one rule every PDF page is rendered by: as large as
    `max_pixels` allows, at most MAX_RENDER_DPI (run, serve, and document sets for calibration and evaluation)."""
    import pypdfium2 as pdfium

    try:
        page = pdf[index]
    except pdfium.PdfiumError as exc:  # a page tree that lies about its pages
        raise ImageRejected(f"{label}: page {index + 1} cannot be read ({exc})", fix="Repair or re-export the PDF.") from None
    try:
        width_pt, height_pt = page.get_size()
        return to_rgb(page.render(scale=render_scale(width_pt, height_pt, max_pixels)).to_pil())
    except pdfium.PdfiumError as exc:
        raise ImageRejected(f"{label}: page {index + 1} cannot be rendered ({exc})", fix="Repair or re-export the PDF.") from None
    finally:
        page.close()


def _rendered_pixels(pdf, index: int, max_pixels: int, label: str) -> int:
    import pypdfium2 as pdfium

    try:
        width_pt, height_pt = pdf.get_page_size(index)
    except pdfium.PdfiumError as exc:
        raise ImageRejected(f"{label}: page {index + 1} cannot be read ({exc})", fix="Repair or re-export the PDF.") from None
    scale = render_scale(width_pt, height_pt, max_pixels)
    return math.ceil(width_pt * scale) * math.ceil(height_pt * scale)


def render_scale(width_pt: float, height_pt: float, max_pixels: int, max_dpi: float = MAX_RENDER_DPI) -> float:
    """Pixels per point so the rendered page holds at most `max_pixels` (and at most `max_dpi`)."""
    if width_pt <= 0 or height_pt <= 0:
        raise ImageRejected(f"a PDF page has no area ({width_pt}×{height_pt} pt)")
    scale = min(max_dpi / POINTS_PER_INCH, math.sqrt(max_pixels / (width_pt * height_pt)))
    # pdfium rounds the bitmap size up; step down until the rounded size is inside the budget.
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > max_pixels and scale > 0:
        scale *= 0.999
    return scale


def load_document(
    path: Path, pages: str | None = None, *, max_pixels: int, limits: DocumentLimits = DocumentLimits()
) -> list[Image.Image]:
    """An image file → one image; a PDF → its chosen pages."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    if is_pdf(path):
        return render_pdf(path, pages, max_pixels=max_pixels, limits=limits)
    if pages is not None:
        raise InputError("--pages applies to PDFs only", path=path)
    return [open_image(path, limits)]


def _read(source: Path | bytes, limits: DocumentLimits) -> bytes:
    if isinstance(source, Path):
        size = source.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageRejected(f"{source}: {size:,} bytes exceeds the limit of {limits.max_file_bytes:,}")
        return source.read_bytes()
    if len(source) > limits.max_file_bytes:
        raise ImageRejected(f"{len(source):,} bytes exceeds the limit of {limits.max_file_bytes:,}")
    return bytes(source)
