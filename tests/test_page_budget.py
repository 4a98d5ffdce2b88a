"""`--image-max-tokens`: a runtime page budget for run, serve, bench and plan, without editing the bundle.

The tiny model's pages are 4 to 256 rows (min_pixels 4·28·28, max_pixels 256·28·28); a budget of 16 rows must
bound the encoder's resize, the PDF render and the server's pages alike, and a bad value is one clear line.
"""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import run_cli
from exaone_edge.errors import InputError
from exaone_edge.runtime.generation import GenerationParams, collect
from exaone_edge.spec import ImageSpec
from exaone_edge.vision.preprocess import rows_for, with_image_max_tokens
from runtime_bundle_fixture import build_tiny_bundle
from runtime_fixtures import noise_image
from server_fixtures import data_url, openai_client, pdf_bytes, serve_in_process, text_page, user

BUDGET = 16
TOKEN = 28 * 28  # pixels of one image row: (patch 14 × merge 2)²
TINY = ImageSpec(min_pixels=4 * TOKEN, max_pixels=256 * TOKEN, patch_size=14, merge_size=2, temporal_patch_size=2,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
LARGE_PAGE = (1240, 1754)  # an A4 scan at 150 dpi: the bundle's own limit makes it 247 rows


def test_the_budget_lowers_max_pixels_and_only_lowers_it():
    assert with_image_max_tokens(TINY, None) is TINY
    assert with_image_max_tokens(TINY, BUDGET).max_pixels == BUDGET * TOKEN
    assert with_image_max_tokens(TINY, 4).max_pixels == 4 * TOKEN  # the fewest a page has here
    assert with_image_max_tokens(TINY, 100_000).max_pixels == TINY.max_pixels  # above the bundle's limit: unchanged
    assert rows_for(LARGE_PAGE, TINY) == 247 and rows_for(LARGE_PAGE, with_image_max_tokens(TINY, BUDGET)) <= BUDGET
    for bad in (3, 0, -1):
        with pytest.raises(InputError, match=rf"--image-max-tokens {bad} is outside the allowed range: at least 4 ") as info:
            with_image_max_tokens(TINY, bad)
        assert "the model's own page limit is 256 tokens" in str(info.value)


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_vision_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("page-budget") / "bundle", vision_dir=tiny_vision_dir)


@pytest.fixture(scope="module")
def engine(bundle):
    from exaone_edge.runtime.engine import Engine

    engine = Engine.load(bundle, n_ctx=1024, n_threads=1, image_max_tokens=BUDGET)
    yield engine
    engine.close()


def _page(image, question="What is the total?"):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_an_engine_with_a_budget_encodes_a_large_page_into_at_most_n_rows(engine):
    assert engine.image.max_pixels == engine.vision.image.max_pixels == BUDGET * TOKEN
    assert engine.image_max_tokens == BUDGET and engine.bundle.image.max_pixels == 256 * TOKEN  # the bundle is untouched
    page = noise_image(*LARGE_PAGE, seed=3)
    rows = engine.vision.encode(page)
    assert 0 < len(rows) <= BUDGET and len(rows) == engine.vision.rows_for(page.size)
    result = collect(engine.generate(_page(page), GenerationParams(max_tokens=4)))
    assert result.usage.image_rows == len(rows) and result.usage.completion_tokens >= 1
    assert engine.check(_page(page)) == result.usage.prompt_tokens


def test_run_renders_pdf_pages_within_the_budget(bundle, tmp_path):
    pdf = tmp_path / "a4.pdf"
    pdf.write_bytes(pdf_bytes([text_page("TOTAL 1,250", size=LARGE_PAGE)]))
    args = ("run", str(bundle), "What is the total?", "--pdf", str(pdf), "--max-tokens", "2", "--threads", "1", "--json")
    default = json.loads(run_cli(*args, check=True).stdout)
    budget = json.loads(run_cli(*args, "--image-max-tokens", str(BUDGET), check=True).stdout)
    assert default["usage"]["image_rows"] > BUDGET >= budget["usage"]["image_rows"] > 0


@pytest.mark.parametrize("value", ["0", "-2", "3"])
def test_cli_refuses_a_budget_below_the_smallest_page(bundle, tmp_path, value):
    image = tmp_path / "page.png"
    text_page("x").save(image)
    result = run_cli("run", str(bundle), "What?", "--image", str(image), "--image-max-tokens", value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--image-max-tokens {value} is outside the allowed range: at least 4" in result.stderr
    served = run_cli("serve", str(bundle), "--port", "0", env={"EXAONE_EDGE_IMAGE_MAX_TOKENS": value})
    assert served.returncode == 2 and served.stderr.strip().count("\n") == 0
    assert f"--image-max-tokens {value} is outside the allowed range" in served.stderr


def test_server_settings_carry_the_budget_to_the_engine():
    from exaone_edge.runtime.server.settings import ServerSettings

    settings = ServerSettings.resolve({}, {"EXAONE_EDGE_IMAGE_MAX_TOKENS": "1280"})
    assert settings.engine.image_max_tokens == 1280
    flagged = ServerSettings.resolve({}, {"EXAONE_EDGE_IMAGE_MAX_TOKENS": "1280"}, engine={"image_max_tokens": 64})
    assert flagged.engine.image_max_tokens == 64  # the flag wins over the variable
    assert ServerSettings().engine.image_max_tokens is None


def test_the_server_bounds_pages_and_reports_the_budget(engine):
    from exaone_edge.runtime.server import ServerSettings, create_app

    with serve_in_process(create_app(engine, ServerSettings())) as url:
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["image_max_tokens"] == BUDGET and health["image_max_pixels"] == BUDGET * TOKEN
        pdf = pdf_bytes([text_page("TOTAL 99", size=LARGE_PAGE)])
        part = {"type": "file", "file": {"file_data": data_url(pdf, "application/pdf")}}
        answer = openai_client(url).chat.completions.create(model=engine.model_id, messages=user(part), max_tokens=2)
        assert 0 < answer.model_extra["timings"]["image_rows"] <= BUDGET
