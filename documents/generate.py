"""Synthetic business documents with known answers: the built-in calibration and evaluation set."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from exaone_edge.documents import kinds_business, kinds_charts, kinds_finance
from exaone_edge.documents.blocks import Built, Ctx
from exaone_edge.documents.canvas import Canvas, Scan, page_text, rasterize
from exaone_edge.documents.langs import LANGS, lang_fonts, pick
from exaone_edge.documents.model import Document, DocumentSet, files_hash
from exaone_edge.documents.written import SET_KIND
from exaone_edge.errors import InputError

GENERATOR_VERSION = 1  # bump when the same seed would draw different pages
PARALLEL_FROM = 24  # documents; below this, worker start-up costs more than it saves
MAX_WORKERS = 4


@dataclass(frozen=True)
class Kind:
    build: Callable[[Ctx], Built]
    description: str


KINDS: dict[str, Kind] = {
    "invoice": Kind(kinds_business.invoice, "invoice with line items, VAT and total"),
    "receipt": Kind(kinds_business.receipt, "till receipt on an 80 mm roll"),
    "balance_sheet": Kind(kinds_finance.balance_sheet, "balance sheet, two years, with footnotes"),
    "income_statement": Kind(kinds_finance.income_statement, "income statement, two years, with footnotes"),
    "annual_report": Kind(kinds_finance.annual_report, "two pages: balance sheet and income statement of one year"),
    "table": Kind(kinds_finance.merged_table, "table with merged year headers"),
    "bar_chart": Kind(kinds_charts.bar_chart, "bar chart with value labels"),
    "line_chart": Kind(kinds_charts.line_chart, "line chart with value labels"),
    "pie_chart": Kind(kinds_charts.pie_chart, "pie chart with a percentage legend"),
    "form": Kind(kinds_business.form, "filled account-opening form with a checkbox"),
}


@dataclass
class Generated:
    document: Document
    pages: list[Canvas]  # the layout, for a PDF with a text layer (canvas.write_pdf)
    scans: list[Scan]


def _scan(rng: random.Random) -> Scan:
    noisy = rng.random() < 0.35
    return Scan(
        dpi=rng.choice([100, 110, 120, 130, 144]),
        rotation=round(rng.uniform(-1.5, 1.5), 2) if rng.random() < 0.5 else 0.0,
        blur=round(rng.uniform(0.4, 0.9), 2) if rng.random() < 0.3 else 0.0,
        noise=round(rng.uniform(2, 6), 1) if noisy else 0.0,
        speckles=rng.randint(100, 800) if noisy else 0,
        paper=rng.choice([(255, 255, 255), (250, 248, 242), (244, 244, 244)]),
        seed=rng.randrange(2**32),
    )


def parse_langs(langs: list[str] | str) -> list[str]:
    codes = [c.strip() for c in (langs.split(",") if isinstance(langs, str) else langs) if c.strip()]
    unknown = [c for c in codes if c not in LANGS]
    if unknown or not codes:
        raise InputError(f"unknown language(s) {', '.join(unknown) or '(none)'}; known: {', '.join(LANGS)}")
    return codes


def generate_documents(n: int, langs: list[str] | str, seed: int) -> list[Generated]:
    """n documents cycling through languages and kinds, each drawn from its own seeded generator."""
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    codes = parse_langs(langs)
    return [generate_document(i, codes, seed) for i in range(n)]


def generate_document(i: int, codes: list[str], seed: int) -> Generated:
    code = codes[i % len(codes)]
    names = list(KINDS)
    kind = names[(i // len(codes) + seed) % len(names)]
    rng = random.Random(f"exaone-edge-docs/{GENERATOR_VERSION}/{seed}/{i}")
    font, bold = pick(rng, LANGS[code], lang_fonts(LANGS[code]))
    built = KINDS[kind].build(Ctx(rng, LANGS[code], font, bold, rng.choice([9.0, 10.0, 10.5, 11.0, 12.0])))
    scans = [_scan(rng) for _ in built.pages]
    pages = built.pages
    text = "\n\n".join(page_text(p.ops) for p in pages)

    def render(index: int) -> Image.Image:
        return rasterize(pages[index], scans[index])

    document = Document(f"doc-{i:04d}", kind, code, len(pages), text, built.qa, f"synthetic seed {seed}", render)
    return Generated(document, pages, scans)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # fixed settings, no metadata: same pixels, same bytes
    return buffer.getvalue()


def page_name(doc_id: str, page: int) -> str:
    return f"pages/{doc_id}-p{page + 1}.png"


def _pngs_in_process(job: tuple[int, list[str], int]) -> list[bytes]:
    document = generate_document(*job).document
    return [png_bytes(document.page_image(p)) for p in range(document.page_count)]


def _page_pngs(documents: list[Document], codes: list[str], seed: int) -> Iterator[list[bytes]]:
    """Encoded pages per document; large sets render in worker processes (pages are rebuilt from the seed)."""
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if len(documents) < PARALLEL_FROM or workers < 2:
        for document in documents:
            yield [png_bytes(document.page_image(p)) for p in range(document.page_count)]
        return
    jobs = [(int(d.id.split("-")[1]), codes, seed) for d in documents]
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_pngs_in_process, jobs, chunksize=4)


def set_files(documents: list[Document], codes: list[str], seed: int, progress: bool = False
              ) -> Iterator[tuple[str, bytes]]:
    """Every file of the written set except manifest.json, in a fixed order."""
    from exaone_edge.progress import track

    records, questions = [], []
    encoded = _page_pngs(documents, codes, seed)
    items = track(documents, "docs: rendering pages", total=len(documents)) if progress else documents
    for document, pngs in zip(items, encoded):
        pages = [page_name(document.id, p) for p in range(document.page_count)]
        for name, data in zip(pages, pngs):
            yield name, data
        records.append({"id": document.id, "kind": document.kind, "lang": document.lang, "pages": pages,
                        "text": document.text, "source": document.source})
        questions += [{"doc": document.id, "image": pages[qa.page], "page": 1, "question": qa.question,
                       "answers": list(qa.answers)} for qa in document.qa]
    yield "documents.jsonl", _jsonl(records)
    yield "qa.jsonl", _jsonl(questions)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode("utf-8")


def generate_set(n: int, langs: list[str] | str, seed: int, out: Path | None = None, *,
                 overwrite: bool = False, pdf: bool = False) -> DocumentSet:
    """n synthetic documents in memory (pages render on demand), or written to `out` with a manifest
    (and with `pdf`, each document also as a PDF with a text layer under pdf/)."""
    if out is not None:
        from exaone_edge.files import check_output_dir

        check_output_dir(Path(out), overwrite=overwrite, kind=SET_KIND)  # before the documents are made
    generated = generate_documents(n, langs, seed)
    documents = [g.document for g in generated]
    codes = parse_langs(langs)
    source = f"synthetic (n={n}, langs={','.join(codes)}, seed={seed})"
    if out is None:
        def content_hash() -> str:
            return files_hash((name, hashlib.sha256(data).hexdigest()) for name, data in set_files(documents, codes, seed))

        return DocumentSet(documents, source, hasher=content_hash)
    from exaone_edge.files import atomic_dir
    from exaone_edge.documents.canvas import write_pdf
    from exaone_edge.manifest import Manifest, write_manifest
    from exaone_edge.progress import track

    with atomic_dir(Path(out), overwrite=overwrite, kind=SET_KIND) as tmp:
        for name, data in set_files(documents, codes, seed, progress=True):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if pdf:
            (tmp / "pdf").mkdir()
            for item in track(generated, "docs: writing PDFs"):
                write_pdf(item.pages, tmp / "pdf" / f"{item.document.id}.pdf")
        manifest = Manifest(kind=SET_KIND, inputs={"generator": GENERATOR_VERSION, "seed": seed, "langs": codes, "n": n,
                                                      "pdf": pdf})
        digest = files_hash((name, hashlib.sha256((tmp / name).read_bytes()).hexdigest())
                            for name in _listing(tmp))
        manifest.details = {
            "content_hash": digest, "documents": n, "pages": sum(d.page_count for d in documents),
            "questions": sum(len(d.qa) for d in documents), "source": source,
            "kinds": dict(sorted(Counter(d.kind for d in documents).items())),
            "langs": dict(sorted(Counter(d.lang for d in documents).items())),
        }
        write_manifest(tmp, manifest)
    return DocumentSet(documents, source, _hash=digest)


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
