"""Load a document set: one written by `exaone-edge docs make`, or a folder of the user's PDFs and images.

Every unusable file is skipped with a warning that names it and says why; the set records what was
skipped. Image sizes are read from the header, and refused above a pixel limit, before decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from exaone_edge.documents.model import QA, Document, DocumentSet, Skipped, files_hash
from exaone_edge.errors import ImageRejected, InputError
from exaone_edge.images import MAX_RENDER_DPI, DocumentLimits, frame_sizes, open_image, render_page
from exaone_edge.files import sha256_file
from exaone_edge.progress import log

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
QA_NAME = "qa.jsonl"


@dataclass(frozen=True)
class LoadOptions:
    # Per image or rendered page (an 8000×8000 scan); bombs are far larger. PDF pages are rendered by the one rule
    # (exaone_edge/images.py render_page): as large as this allows, at most 300 DPI; the vision preprocessing fits them.
    max_pixels: int = 64_000_000
    max_pdf_pages: int = 2000
    max_file_bytes: int = 2**30  # per image file (a multi-page TIFF scan can be large)


def load_documents(path: Path | str, options: LoadOptions = LoadOptions()) -> DocumentSet:
    path = Path(path)
    if not path.exists():
        raise InputError("no such document set or folder", path=path, fix="Pass a folder made by `exaone-edge docs make` "
                         "or a folder of PDFs/images.")
    if path.is_file():
        raise InputError("expected a folder, got a file", path=path, fix="Put the PDFs/images in a folder and pass that.")
    if (path / "manifest.json").is_file():
        from exaone_edge.documents.written import load_written_set

        return load_written_set(path)
    return load_folder(path, options)


def documents_or_builtin(path: Path | str | None, *, builtin: int, seed: int) -> tuple[DocumentSet, str]:
    """The set at `path`, or `builtin` generated documents (Korean and English) when none is given; and a
    description of which, for logs and manifests."""
    if path is not None:
        return load_documents(path), str(path)
    from exaone_edge.documents.generate import generate_set

    return generate_set(builtin, ["en", "ko"], seed), f"generated document set ({builtin} documents, en+ko, seed {seed})"


def load_folder(root: Path, options: LoadOptions = LoadOptions()) -> DocumentSet:
    documents: dict[str, Document] = {}
    skipped: list[Skipped] = []
    hashes: list[tuple[str, str]] = [("render", f"{options.max_pixels} pixels, at most {MAX_RENDER_DPI:g} DPI")]
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        name = file.relative_to(root).as_posix()
        if name == QA_NAME or any(part.startswith(".") for part in file.relative_to(root).parts):
            continue
        suffix = file.suffix.lower()
        try:
            if suffix == ".pdf":
                documents[name] = _pdf_document(file, name, options)
            elif suffix in IMAGE_SUFFIXES:
                documents[name] = _image_document(file, name, IMAGE_SUFFIXES[suffix], options)
            else:
                raise _Skip("not a PDF or an image (PNG, JPEG, TIFF)")
        except _Skip as why:
            _skip(skipped, name, str(why))
            continue
        hashes.append((name, sha256_file(file)))
    if (root / QA_NAME).is_file():
        _attach_questions(root / QA_NAME, documents, skipped)
        hashes.append((QA_NAME, sha256_file(root / QA_NAME)))
    if not documents:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        raise InputError(f"no usable PDFs or images ({len(skipped)} file(s) skipped{': ' + reasons if reasons else ''})",
                         path=root, fix="Add PDF, PNG, JPEG or TIFF files.")
    if skipped:
        log(f"docs: {len(skipped)} item(s) skipped in {root} (see above)")
    digest = files_hash(hashes)
    return DocumentSet(list(documents.values()), str(root), skipped, _hash=digest)


class _Skip(Exception):
    pass


def _skip(skipped: list[Skipped], name: str, reason: str) -> None:
    log(f"docs: skipping {name}: {reason}")
    skipped.append(Skipped(name, reason))


def _pdf_document(file: Path, name: str, options: LoadOptions) -> Document:
    import pypdfium2 as pdfium

    if file.stat().st_size == 0:
        raise _Skip("empty file (0 bytes)")
    try:
        pdf = pdfium.PdfDocument(file)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower() or "security" in reason.lower():
            raise _Skip("encrypted PDF (needs a password); decrypt it first") from None
        raise _Skip(f"not a readable PDF ({reason})") from None
    try:
        count = len(pdf)
        if count == 0:
            raise _Skip("the PDF has no pages")
        if count > options.max_pdf_pages:
            raise _Skip(f"{count} pages, more than the limit of {options.max_pdf_pages}")
        texts = []
        for index in range(count):
            page = pdf[index]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_bounded().replace("\r\n", "\n").strip())
            textpage.close()
            page.close()
    finally:
        pdf.close()
    text = "\n\n".join(texts).strip() or None

    def render(index: int) -> Image.Image:
        document = pdfium.PdfDocument(file)
        try:
            return render_page(document, index, options.max_pixels, str(file))
        finally:
            document.close()

    return Document(name, "pdf", None, count, text, [], name, render)


def _image_document(file: Path, name: str, fmt: str, options: LoadOptions) -> Document:
    if file.stat().st_size == 0:
        raise _Skip("empty file (0 bytes)")
    # every TIFF page has its own header and size; sizes are read before anything is decoded
    limits = DocumentLimits(max_image_pixels=options.max_pixels, max_file_bytes=options.max_file_bytes)
    try:
        frames = len(frame_sizes(file, limits, formats=(fmt,)))
        open_image(file, limits, formats=(fmt,))  # a truncated file fails here, at load, not halfway through a stage
    except ImageRejected as exc:
        raise _Skip(exc.what.removeprefix(f"{file}: ")) from None

    def render(index: int) -> Image.Image:
        try:
            return open_image(file, limits, frame=index, formats=(fmt,))
        except ImageRejected as exc:
            raise InputError(f"page {index + 1} could not be decoded ({exc.what})", path=file) from None

    return Document(name, "image", None, frames, None, [], name, render)


def _attach_questions(path: Path, documents: dict[str, Document], skipped: list[Skipped]) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{QA_NAME} line {number}"
        try:
            row = json.loads(line)
            target = row.get("pdf") or row.get("image") if isinstance(row, dict) else None
            if not target:
                raise _Skip("needs an 'image' or 'pdf' field naming a file in the folder")
            question, answers = row.get("question"), row.get("answers")
            if not isinstance(question, str) or not question.strip():
                raise _Skip("needs a non-empty 'question'")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise _Skip("'answers' must be a non-empty list of strings")
            document = documents.get(str(target))
            if document is None:
                raise _Skip(f"names '{target}', which is not a usable file in the folder")
            page = row.get("page", 1)
            if not isinstance(page, int) or not 1 <= page <= document.page_count:
                raise _Skip(f"page {page!r} is outside 1–{document.page_count} of '{target}'")
        except json.JSONDecodeError as exc:
            _skip(skipped, where, f"not valid JSON ({exc.msg})")
            continue
        except _Skip as why:
            _skip(skipped, where, str(why))
            continue
        document.qa.append(QA(question, list(answers), page - 1))
