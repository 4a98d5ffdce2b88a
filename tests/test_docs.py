"""The synthetic document generator: answers on the page, real Hangul, determinism, disjoint splits."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pypdfium2 as pdfium
import pytest

from conftest import run_cli
from exaone_edge.documents import KINDS, generate_set, load_documents
from exaone_edge.documents import fonts as fonts_module
from exaone_edge.documents import generate as generate_module
from exaone_edge.documents.canvas import Canvas, Scan, Text, measure, rasterize, write_pdf
from exaone_edge.documents.fonts import FontMissing, covers, font_index
from exaone_edge.documents.generate import generate_documents
from exaone_edge.documents.langs import LANGS, lang_fonts
from exaone_edge.errors import ArtifactError, InputError

EVERY_KIND = 2 * len(KINDS)  # documents cycle languages, then kinds: this many cover every kind in ko and en


@pytest.fixture(scope="module")
def generated():
    return generate_documents(EVERY_KIND, "ko,en", 5)


def test_every_kind_in_both_languages_has_questions(generated):
    seen = {(g.document.kind, g.document.lang) for g in generated}
    assert any(g.document.page_count == 2 and {q.page for q in g.document.qa} == {0, 1} for g in generated)
    assert seen == {(kind, lang) for kind in KINDS for lang in ("ko", "en")}
    for item in generated:
        assert item.document.qa, item.document.kind
        for qa in item.document.qa:
            assert qa.question and qa.answers and all(isinstance(a, str) and a for a in qa.answers)
            assert 0 <= qa.page < item.document.page_count


def test_answers_are_in_the_text_layer_of_the_generated_pdf(generated, tmp_path):
    # The PDF is drawn from the same layout as the PNG, so its text layer is what the page shows.
    for item in generated:
        path = tmp_path / f"{item.document.id}.pdf"
        write_pdf(item.pages, path)
        pdf = pdfium.PdfDocument(path)
        texts = [pdf[i].get_textpage().get_text_bounded() for i in range(len(pdf))]
        pdf.close()
        assert len(texts) == item.document.page_count
        for qa in item.document.qa:
            found = [a for a in qa.answers if a in texts[qa.page]]
            assert found, f"{item.document.kind}/{item.document.lang}: {qa.answers} not on page: {texts[qa.page][:300]!r}"
            assert any(a in item.document.text for a in qa.answers)


def test_answer_text_is_drawn_on_the_raster_page(generated):
    # Removing an answer's text from the layout changes the rendered page where the answer is (and
    # nearly nowhere else). Unskewed so that the layout box is exactly where the pixels are.
    for item in generated[:8]:
        page, scan = item.pages[0], dataclasses.replace(item.scans[0], rotation=0.0)
        full = np.asarray(rasterize(page, scan).convert("L"), dtype=np.float32)
        scale = scan.dpi / 72
        answer_ops = [op for op in page.ops if isinstance(op, Text)
                      and any(a in op.text for qa in item.document.qa for a in qa.answers)]
        assert answer_ops, item.document.kind
        for op in answer_ops[:3]:
            without = Canvas(page.width, page.height, [o for o in page.ops if o is not op])
            blank = np.asarray(rasterize(without, scan).convert("L"), dtype=np.float32)
            y0, y1 = int((op.y - op.size) * scale) - 2, int((op.y + op.size * 0.3) * scale) + 2
            x0, x1 = int(op.x * scale) - 2, int((op.x + measure(op.text, op.font, op.size)) * scale) + 2
            region = (slice(max(0, y0), y1), slice(max(0, x0), x1))
            assert np.abs(full[region] - blank[region]).max() > 100, (item.document.kind, op.text)
            assert np.abs(full - blank).sum() == pytest.approx(np.abs(full[region] - blank[region]).sum(), rel=0.02)


def _glyphs(font: str, text: str) -> list[np.ndarray]:
    out = []
    for char in text:
        canvas = Canvas(40, 40)
        canvas.ops.append(Text(8, 30, char, font, 24))
        out.append(np.asarray(rasterize(canvas, Scan(dpi=72)).convert("L")))
    return out


def test_korean_renders_as_hangul_not_boxes(generated):
    word = "세금계산서"
    with_hangul = _glyphs("NanumGothic.ttf", word)
    without = _glyphs("DejaVuSans.ttf", word)  # DejaVu has no Hangul: every syllable is the same box
    assert all(np.array_equal(without[0], g) for g in without)
    assert len({g.tobytes() for g in with_hangul}) == len(word)
    assert not np.array_equal(with_hangul[0], without[0])
    assert not covers(font_index()["DejaVuSans.ttf"], "가") and covers(font_index()["NanumGothic.ttf"], "가힣")
    # Every font a Korean page was drawn with really has every Hangul syllable on it.
    for item in generated:
        if item.document.lang != "ko":
            continue
        for op in item.pages[0].ops:
            if isinstance(op, Text):
                hangul = "".join(sorted({c for c in op.text if "가" <= c <= "힣"}))
                assert not hangul or covers(font_index()[op.font], hangul), (op.font, op.text)


def test_missing_hangul_font_fails_naming_the_package(monkeypatch):
    only_dejavu = {k: v for k, v in font_index().items() if k.startswith("DejaVu")}
    monkeypatch.setattr(fonts_module, "font_index", lambda: only_dejavu)
    with pytest.raises(FontMissing, match="fonts-nanum"):
        lang_fonts(LANGS["ko"])


def test_page_sizes_and_resolution_are_realistic(generated):
    for item in generated:
        width, height = item.document.page_image(item.document.page_count - 1).size
        canvas = item.pages[-1]
        dpi = item.scans[-1].dpi
        assert 100 <= dpi <= 150
        assert (width, height) == (round(canvas.width * dpi / 72), round(canvas.height * dpi / 72))
        if item.document.kind != "receipt":
            assert abs(max(width, height) / min(width, height) - 2 ** 0.5) < 0.01  # A4, either way round


def test_same_seed_gives_byte_identical_sets(tmp_path):
    first = generate_set(4, "ko,en", 7, tmp_path / "a")
    second = generate_set(4, "ko,en", 7, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) >= 7
    for name in files:
        if name.name != "manifest.json":  # holds the creation time; its content hash is compared below
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("a", "b")]
    assert manifests[0]["details"]["content_hash"] == manifests[1]["details"]["content_hash"] == first.content_hash
    assert second.content_hash == first.content_hash
    assert generate_set(4, "ko,en", 7).content_hash == first.content_hash  # in memory: the hash its files would have
    assert generate_set(4, "ko,en", 8).content_hash != first.content_hash


def test_worker_processes_render_the_same_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(generate_module, "PARALLEL_FROM", 2)
    monkeypatch.setattr(generate_module.os, "cpu_count", lambda: 2)  # two workers even on a one-core machine
    parallel = generate_set(5, "ko,en", 3, tmp_path / "set")
    monkeypatch.setattr(generate_module, "PARALLEL_FROM", 10**9)
    assert generate_set(5, "ko,en", 3).content_hash == parallel.content_hash


def test_written_set_loads_back_and_detects_tampering(tmp_path):
    made = generate_set(4, "ko,en", 2, tmp_path / "set")
    loaded = load_documents(tmp_path / "set")
    assert loaded.content_hash == made.content_hash
    for before, after in zip(made.documents, loaded.documents):
        assert (after.id, after.kind, after.lang, after.text, after.qa) == (before.id, before.kind, before.lang,
                                                                          before.text, before.qa)
        assert np.array_equal(np.asarray(after.page_image(0)), np.asarray(before.page_image(0)))
    page = next((tmp_path / "set" / "pages").iterdir())
    page.write_bytes(page.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="checksum"):
        load_documents(tmp_path / "set")


def test_written_set_with_remade_manifest_around_a_bad_qa_line_is_refused(tmp_path):
    from exaone_edge.documents.model import files_hash
    from exaone_edge.manifest import read_manifest, write_manifest

    generate_set(2, "en", 2, tmp_path / "set")
    qa = tmp_path / "set" / "qa.jsonl"
    rows = [json.loads(line) for line in qa.read_text().splitlines()]
    rows[0]["image"] = "pages/doc-0000-p9.png"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = write_manifest(tmp_path / "set", read_manifest(tmp_path / "set", verify=False))  # new checksums
    manifest.details["content_hash"] = files_hash((n, e["sha256"]) for n, e in manifest.files.items())
    write_manifest(tmp_path / "set", manifest)
    with pytest.raises(ArtifactError, match="does not match the set's pages"):
        load_documents(tmp_path / "set")


def test_split_never_shares_a_document():
    documents = generate_set(40, "ko,en", 0)  # pages are not rendered: splitting needs none
    for fraction in (0.1, 0.25, 0.5, 0.9):
        for seed in (0, 1):
            calib, evals = documents.split(eval_fraction=fraction, seed=seed)
            calib_ids, eval_ids = {d.id for d in calib.documents}, {d.id for d in evals.documents}
            assert not calib_ids & eval_ids
            assert calib_ids | eval_ids == {d.id for d in documents.documents}
            assert len(eval_ids) == round(40 * fraction)
            again = documents.split(eval_fraction=fraction, seed=seed)[1]
            assert [d.id for d in again.documents] == [d.id for d in evals.documents]
    a, b = documents.split(0.5, seed=0)[1], documents.split(0.5, seed=1)[1]
    assert {d.id for d in a.documents} != {d.id for d in b.documents}
    small = generate_set(2, "en", 0).split(eval_fraction=0.1)
    assert len(small[0].documents) == 1 and len(small[1].documents) == 1  # both sides keep a document
    with pytest.raises(InputError):
        documents.split(eval_fraction=1.5)


def test_cli_make_and_show(tmp_path):
    made = run_cli("docs", "make", str(tmp_path / "set"), "--n", "3", "--lang", "en", "--seed", "4", "--json", check=True)
    summary = json.loads(made.stdout)
    assert summary["documents"] == 3 and summary["langs"] == {"en": 3} and summary["questions"] > 0
    shown = run_cli("docs", "show", str(tmp_path / "set"), "--json", check=True)
    assert json.loads(shown.stdout)["content_hash"] == summary["content_hash"]
    text = run_cli("docs", "show", str(tmp_path / "set"), check=True).stdout
    assert "questions:" in text and summary["content_hash"] in text
    bad = run_cli("docs", "make", str(tmp_path / "other"), "--n", "2", "--lang", "fr")
    assert bad.returncode == 2 and "unknown language" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "other").exists()
    again = run_cli("docs", "make", str(tmp_path / "set"), "--n", "2")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_docs_package_imports_without_torch():
    code = ("import sys; from exaone_edge.documents import generate_set; generate_set(1, 'ko', 0).documents[0].page_image(0); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(','.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"imported {result.stdout.strip()}: {result.stderr[-500:]}"
