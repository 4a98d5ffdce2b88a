"""The user's own files as a document set: PDFs, images, multi-page TIFF, qa.jsonl, and bad input."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from exaone_edge.documents import generate_set, load_documents
from exaone_edge.documents.canvas import Canvas, write_pdf
from exaone_edge.documents.ingest import LoadOptions
from exaone_edge.errors import InputError

REAL_PDFS = [Path("/usr/share/debian-reference/debian-reference.en.pdf"),
             *sorted(Path("/usr/share/doc/debian-reference-en").rglob("*.pdf"))]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels but carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _two_page_pdf(path: Path) -> None:
    pages = []
    for number in (1, 2):
        canvas = Canvas(595, 842)
        canvas.text(60, 100, f"Quarterly report page {number}", "DejaVuSans.ttf", 14)
        canvas.text(60, 130, f"총액 {number * 1000:,}원", "NanumGothic.ttf", 12)
        pages.append(canvas)
    write_pdf(pages, path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "user"
    (root / "scans").mkdir(parents=True)
    _two_page_pdf(root / "report.pdf")
    Image.new("RGB", (300, 200), (200, 30, 30)).save(root / "photo.jpg", quality=90)
    Image.new("RGBA", (120, 80), (0, 0, 255, 128)).save(root / "scans" / "logo.png")
    frames = [Image.new("RGB", (100, 140), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(root / "scans" / "fax.tiff", save_all=True, append_images=frames[1:])
    with open(root / "qa.jsonl", "w") as handle:
        for row in ({"pdf": "report.pdf", "page": 2, "question": "What is the total?", "answers": ["2,000원"]},
                    {"image": "scans/fax.tiff", "page": 3, "question": "What is on page 3?", "answers": ["red"]},
                    {"image": "photo.jpg", "question": "What colour?", "answers": ["red"]}):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return root


def test_folder_of_pdfs_and_images(folder):
    documents = load_documents(folder, LoadOptions(max_pixels=595 * 842))  # A4 at 72 DPI
    by_id = {d.id: d for d in documents.documents}
    assert sorted(by_id) == ["photo.jpg", "report.pdf", "scans/fax.tiff", "scans/logo.png"]
    assert documents.skipped == []
    report = by_id["report.pdf"]
    assert report.page_count == 2 and "Quarterly report page 2" in report.text and "총액 2,000원" in report.text
    assert report.page_image(1).size == (595, 842) and report.page_image(1).mode == "RGB"
    assert [(q.page, q.answers) for q in report.qa] == [(1, ["2,000원"])]
    fax = by_id["scans/fax.tiff"]
    assert fax.page_count == 3 and fax.page_image(2).getpixel((5, 5)) == (160, 0, 0) and fax.qa[0].page == 2
    assert by_id["scans/logo.png"].page_image(0).getpixel((1, 1)) == (127, 127, 255)  # alpha onto white
    assert by_id["photo.jpg"].qa[0].page == 0
    with pytest.raises(InputError, match="page index 3"):
        fax.page_image(3)
    assert load_documents(folder, LoadOptions(max_pixels=1190 * 1684)).documents[1].page_image(0).size == (1190, 1684)


def test_content_hash_follows_the_files(folder):
    first = load_documents(folder).content_hash
    assert load_documents(folder).content_hash == first
    assert load_documents(folder, LoadOptions(max_pixels=10**6)).content_hash != first  # pages would differ
    Image.new("RGB", (300, 200), (0, 30, 30)).save(folder / "photo.jpg")
    assert load_documents(folder).content_hash != first


def test_bad_files_are_skipped_with_a_reason_and_counted(folder):
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + b"garbage" * 100)
    from fpdf import FPDF

    locked = FPDF()
    locked.add_page()
    locked.set_font("helvetica", size=12)
    locked.text(20, 20, "secret")
    locked.set_encryption(owner_password="owner", user_password="user")
    locked.output(str(folder / "locked.pdf"))
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    (folder / "truncated.jpg").write_bytes((folder / "photo.jpg").read_bytes()[:200])
    (folder / "notes.txt").write_text("not a document")
    with open(folder / "qa.jsonl", "a") as handle:
        handle.write(json.dumps({"image": "missing.png", "question": "Where?", "answers": ["nowhere"]}) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"pdf": "report.pdf", "page": 9, "question": "?", "answers": ["x"]}) + "\n")
        handle.write(json.dumps({"image": "bomb.png", "question": "Big?", "answers": ["yes"]}) + "\n")
    documents = load_documents(folder)
    assert len(documents.documents) == 4  # the good files are all still there
    reasons = {s.path: s.reason for s in documents.skipped}
    assert "not a readable PDF" in reasons["corrupt.pdf"]
    assert "encrypted" in reasons["locked.pdf"]
    assert "0 bytes" in reasons["empty.png"]
    assert "decompression bomb" in reasons["bomb.png"] and "900000000 pixels" in reasons["bomb.png"]
    (folder / "bomb.png").write_bytes(_png_header_only(9_000, 9_000))  # under Pillow's limit, over ours
    assert "9000×9000 = 81,000,000 pixels exceeds" in {s.path: s.reason for s in load_documents(folder).skipped}["bomb.png"]
    assert "truncated.jpg" in reasons
    assert "not a PDF or an image" in reasons["notes.txt"]
    assert "missing.png" in reasons["qa.jsonl line 4"]
    assert "not valid JSON" in reasons["qa.jsonl line 5"]
    assert "outside 1–2" in reasons["qa.jsonl line 6"]
    assert "bomb.png" in reasons["qa.jsonl line 7"]
    assert len(documents.skipped) == 10
    assert sum(len(d.qa) for d in documents.documents) == 3

    shown = run_cli("docs", "show", str(folder), "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["skipped"]) == 10
    assert "skipping bomb.png" in shown.stderr and "10 item(s) skipped" in shown.stderr


def test_folder_without_usable_files_is_an_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="no usable PDFs or images.*empty.png: empty file"):
        load_documents(tmp_path)
    result = run_cli("docs", "show", str(tmp_path / "nope"))
    assert result.returncode == 2 and "no such document set" in result.stderr and "Traceback" not in result.stderr


def test_split_of_a_user_folder_keeps_files_apart(folder):
    calib, evals = load_documents(folder).split(eval_fraction=0.5, seed=0)
    assert len(calib.documents) == len(evals.documents) == 2
    assert not {d.id for d in calib.documents} & {d.id for d in evals.documents}
    assert calib.content_hash != evals.content_hash


def test_generated_set_and_user_folder_share_the_interface(tmp_path):
    # A written set's pages and qa.jsonl also read as a plain folder once its manifest is removed.
    generate_set(2, "ko", 1, tmp_path / "set")
    (tmp_path / "set" / "manifest.json").unlink()
    (tmp_path / "set" / "documents.jsonl").unlink()
    plain = load_documents(tmp_path / "set")
    assert len(plain.documents) == 2 and all(d.qa for d in plain.documents) and plain.skipped == []


@pytest.mark.skipif(not any(p.is_file() for p in REAL_PDFS),
                    reason="debian-reference-en is not installed (apt-get install debian-reference-en)")
def test_real_multipage_pdf(tmp_path):
    source = next(p for p in REAL_PDFS if p.is_file())
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / source.name).symlink_to(source)
    documents = load_documents(tmp_path / "real", LoadOptions(max_pixels=900_000))
    document = documents.documents[0]
    assert document.page_count > 100
    assert "Debian" in document.text and "apt" in document.text
    page = np.asarray(document.page_image(document.page_count // 2))
    assert page.shape[0] > page.shape[1] > 500 and page.std() > 5  # a portrait page with something on it


def test_every_tiff_page_is_checked_against_the_pixel_limit(tmp_path):
    frames = [Image.new("L", (50, 50), 255), Image.new("L", (200, 200), 0)]
    frames[0].save(tmp_path / "mixed.tif", save_all=True, append_images=frames[1:])
    Image.new("L", (60, 60), 128).save(tmp_path / "small.tif")
    documents = load_documents(tmp_path, LoadOptions(max_pixels=100 * 100))
    assert [d.id for d in documents.documents] == ["small.tif"]
    assert documents.skipped[0].path == "mixed.tif" and "(page 2) exceeds the limit of 10,000" in documents.skipped[0].reason
