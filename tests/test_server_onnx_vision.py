"""`exaone-edge serve` on a tiny bundle with its ONNX vision export: images and PDF pages over the `openai` client.

The served answers are compared with the same bundle's Engine called in this process on the same pages.
"""

from __future__ import annotations

import pytest

from exaone_edge.images import open_image, render_pdf
from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import data_url, engine_answer, image_part, openai_client, pdf_bytes, png_bytes, serve_process, text_page, user

MODEL = "vision-bundle"
QUESTION = "What is the total amount?"



@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("serve-onnx") / MODEL, vision_dir=tiny_vision_dir)


@pytest.fixture(scope="module")
def engine(bundle):
    from exaone_edge.runtime.engine import Engine

    engine = Engine.load(bundle, n_ctx=2048, n_threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("onnx-pages")
    text_page("INVOICE 7 TOTAL 1,250").save(allowed / "invoice.png")
    with serve_process(bundle, "--ctx", "2048", "--threads", "1", "--allow-dir", str(allowed)) as (url, _):
        yield url, allowed



def test_image_data_url_streaming_and_not(server, engine):
    url, _ = server
    png = png_bytes(text_page("RECEIPT 88 TOTAL 12.50"))
    messages = user(image_part(data_url(png, "image/png")), text=QUESTION)
    answer = openai_client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert answer.model_extra["timings"]["image_rows"] > 0
    assert answer.choices[0].message.content == engine_answer(engine, [open_image(png)], QUESTION)
    stream = openai_client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer.choices[0].message.content


def test_pdf_page(server, engine):
    url, _ = server
    pdf = pdf_bytes([text_page("PAGE ONE"), text_page("PAGE TWO TOTAL 99", size=(120, 160))])
    part = {"type": "file", "file": {"file_data": data_url(pdf, "application/pdf"), "pages": "2"}}
    answer = openai_client(url).chat.completions.create(model=MODEL, messages=user(part, text=QUESTION), max_tokens=8)
    rendered = render_pdf(pdf, "2", max_pixels=engine.bundle.image.max_pixels)
    assert answer.model_extra["timings"]["image_rows"] == engine.vision.rows_for(rendered[0].size)
    assert answer.choices[0].message.content == engine_answer(engine, rendered, QUESTION)


def test_second_question_on_the_same_page_runs_no_vision_encoder(server):
    url, allowed = server
    path = f"file://{allowed / 'invoice.png'}"
    first = openai_client(url).chat.completions.create(model=MODEL, messages=user(image_part(path), text=QUESTION), max_tokens=4)
    second = openai_client(url).chat.completions.create(
        model=MODEL, messages=user(image_part(path), text="Who issued it?"), max_tokens=4
    )
    t1, t2 = first.model_extra["timings"], second.model_extra["timings"]
    assert (t1["vision_runs"], t2["vision_runs"]) == (1, 0)
    print(f"TTFT over HTTP (ONNX vision): first question {t1['ttft_s'] * 1e3:.0f} ms, "
          f"second on the same page {t2['ttft_s'] * 1e3:.0f} ms")
