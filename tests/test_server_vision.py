"""The server answering about images and PDF pages, through the official `openai` client over loopback.

Here the engine's image encoder is the checkpoint's own vision tower (transformers, in this test
process) and the app runs under uvicorn in a thread, so these checks isolate the HTTP path, decoding,
limits and the engine from the ONNX export; test_server_onnx_vision.py runs `exaone-edge serve` on a
bundle with its ONNX export. Answers are compared with the engine called directly on the same pages.
"""

from __future__ import annotations

import openai
import pytest

from exaone_edge.images import open_image, render_pdf
from runtime_bundle_fixture import TransformersVisionRows, build_tiny_bundle
from server_fixtures import data_url, engine_answer, image_part, openai_client, pdf_bytes, png_bytes, serve_in_process, text_page, user

MODEL = "bundle"
QUESTION = "What is the total amount?"



@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    import torch
    from transformers import Exaone4_5_ForConditionalGeneration

    from exaone_edge.bundle import load_bundle
    from exaone_edge.engine_settings import EngineSettings
    from exaone_edge.runtime.engine import Engine

    bundle = build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("serve-vision") / MODEL)
    hf = Exaone4_5_ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    engine = Engine(load_bundle(bundle), EngineSettings(n_ctx=2048, n_threads=1, flash_attn=False),
                    vision=TransformersVisionRows(hf, tiny_model_dir))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pages")
    text_page("INVOICE 2026-117 TOTAL 4,310").save(directory / "invoice.png")
    return directory


@pytest.fixture(scope="module")
def url(engine, allowed):
    from exaone_edge.runtime.server import ServerSettings, create_app

    # Remote fetching is on here and tested against a loopback HTTP server, which only an explicitly allowed
    # network reaches; test_server.py tests the refusal with fetching off, test_server_hardening.py every non-public address.
    settings = ServerSettings(allow_dir=(allowed,), max_images=4, max_pdf_pages=2, allow_remote_urls=True,
                              allow_remote_network=("127.0.0.1/32",))
    with serve_in_process(create_app(engine, settings)) as base:
        yield base



def test_image_data_url_non_streaming_and_streaming(url, engine):
    png = png_bytes(text_page("RECEIPT 88 TOTAL 12.50"))
    messages = user(image_part(data_url(png, "image/png")), text=QUESTION)
    answer = openai_client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    timings = answer.model_extra["timings"]
    assert timings["image_rows"] > 0 and answer.usage.prompt_tokens > timings["image_rows"]
    assert answer.choices[0].message.content == engine_answer(engine, [open_image(png)], QUESTION)
    stream = openai_client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer.choices[0].message.content


def test_second_question_on_the_same_page_skips_the_vision_encoder(url, engine, allowed):
    path = f"file://{allowed / 'invoice.png'}"
    runs = engine.vision.runs
    first = openai_client(url).chat.completions.create(model=MODEL, messages=user(image_part(path), text=QUESTION), max_tokens=4)
    second = openai_client(url).chat.completions.create(
        model=MODEL, messages=user(image_part(path), text="Who issued it?"), max_tokens=4
    )
    t1, t2 = first.model_extra["timings"], second.model_extra["timings"]
    assert (t1["vision_runs"], t2["vision_runs"], engine.vision.runs) == (1, 0, runs + 1)
    # The saving is proven by what was skipped (no encoder run, the page's rows reused), not by comparing two
    # times a busy machine can reorder; the times are printed for the reader.
    assert second.usage.prompt_tokens_details.cached_tokens >= t2["image_rows"]
    print(f"TTFT over HTTP: first question {t1['ttft_s'] * 1e3:.0f} ms, second on the same page {t2['ttft_s'] * 1e3:.0f} ms")


@pytest.mark.parametrize("as_file_part", [True, False], ids=["file part", "image_url part"])
def test_pdf_page(url, engine, as_file_part):
    pdf = pdf_bytes([text_page("PAGE ONE"), text_page("PAGE TWO TOTAL 99", size=(120, 160))])
    source = data_url(pdf, "application/pdf")
    part = ({"type": "file", "file": {"file_data": source, "filename": "two.pdf", "pages": "2"}} if as_file_part
            else image_part(source, pages="2"))
    answer = openai_client(url).chat.completions.create(model=MODEL, messages=user(part, text=QUESTION), max_tokens=8)
    rendered = render_pdf(pdf, "2", max_pixels=engine.bundle.image.max_pixels)
    assert answer.model_extra["timings"]["image_rows"] == engine.vision.rows_for(rendered[0].size)
    assert answer.choices[0].message.content == engine_answer(engine, rendered, QUESTION)


def test_two_images_and_limits_on_a_vision_server(url):
    small = data_url(png_bytes(text_page("A")), "image/png")
    answer = openai_client(url).chat.completions.create(
        model=MODEL, messages=user(image_part(small), image_part(data_url(png_bytes(text_page("B")), "image/png"))), max_tokens=2
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError):  # 5 > max_images
        openai_client(url).chat.completions.create(model=MODEL, messages=user(*[image_part(small)] * 5), max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(url).chat.completions.create(
            model=MODEL, messages=user(image_part(data_url(b"GIF89a not really", "image/gif"))), max_tokens=2
        )
    assert info.value.code == "invalid_image"


@pytest.fixture(scope="module")
def http_files(allowed):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(allowed)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_remote_url_fetched_when_allowed(url, engine, allowed, http_files):
    answer = openai_client(url).chat.completions.create(
        model=MODEL, messages=user(image_part(f"{http_files}/invoice.png")), max_tokens=4
    )
    assert answer.choices[0].message.content == engine_answer(engine, [open_image(allowed / "invoice.png")],
                                                              "What is on this page?", max_tokens=4)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(url).chat.completions.create(model=MODEL, messages=user(image_part(f"{http_files}/absent.png")), max_tokens=2)
    assert info.value.code == "invalid_image" and "did not return a file" in info.value.message
    assert "404" not in info.value.message  # the upstream's status and body stay in the server log
