"""Hardening of `exaone-edge serve`, against a real server process with no API key: every bad request gets
a 4xx with the OpenAI error shape, and a valid request is answered right after it.

Categories: body parsing (numbers, nesting, Unicode, template arguments), request limits, media type,
Host and Origin (no API key), remote URLs (--allow-remote-urls), the input-preparation deadline.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from runtime_bundle_fixture import build_tiny_bundle
from server_fixtures import LocalWeb, image_part, serve_process, user

MODEL = "bundle"
LIMITS = {"EXAONE_EDGE_MAX_MESSAGES": "8", "EXAONE_EDGE_MAX_CONTENT_PARTS": "6", "EXAONE_EDGE_MAX_TEXT_CHARS": "3000",
          "EXAONE_EDGE_MAX_STOP_CHARS": "32", "EXAONE_EDGE_MAX_TEMPLATE_KWARGS": "4"}


@pytest.fixture(scope="module")
def intranet():
    web = LocalWeb("127.0.0.2")  # the one non-public network this server may fetch from
    yield web
    web.close()


@pytest.fixture(scope="module")
def proxy():
    web = LocalWeb("127.0.0.2")  # HTTP(S)_PROXY point here: the server must never use it
    yield web
    web.close()


SERVER_ARGS = ("--ctx", "512", "--threads", "1", "--default-max-tokens", "2", "--max-stop", "4",
               "--allow-remote-urls", "--allow-remote-network", "127.0.0.2/32", "--max-preparing", "1")


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory):
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("hardening") / MODEL)


@pytest.fixture(scope="module")
def server(bundle, intranet, proxy):
    # A preparation deadline and fetch timeout far beyond any wait here, so that a held upstream holds its request
    # until the test releases it, and only the deadline test's own server ever hits a deadline.
    args = (*SERVER_ARGS, "--prepare-timeout", "120", "--remote-timeout", "120", "--allow-host", "docs.example",
            "--allow-origin", "http://app.example")
    env = {**LIMITS, "HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "ALL_PROXY": proxy.url, "NO_PROXY": ""}
    with serve_process(bundle, *args, env=env) as (url, _):
        yield url


def body(**overrides) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, **overrides}


def post(url: str, content: bytes | dict, headers: dict | None = None, timeout: float = 120) -> httpx.Response:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=raw,
                      headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


def assert_error(response: httpx.Response, status: int, code: str | None, *, contains: str = "", param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code, error
    assert error["type"] == ("permission_error" if status == 403 else "invalid_request_error")
    assert contains in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param, error


def assert_still_serving(url: str) -> None:
    response = post(url, body())
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def raw(text: str) -> bytes:
    return text.encode()


HI = '"messages": [{"role": "user", "content": "Hi"}]'
# name → (body, extra headers, status, code, text the message must contain, param)
PARSING = {
    "integer of 5000 digits": (raw(f'{{"model": "bundle", {HI}, "max_tokens": {"9" * 5000}}}'), 400, "invalid_request", "limit is 20", None),
    "float beyond double": (raw(f'{{"model": "bundle", {HI}, "temperature": 1e999}}'), 400, "invalid_request", "too large", None),
    "NaN": (raw(f'{{"model": "bundle", {HI}, "temperature": NaN}}'), 400, "invalid_request", "not a JSON number", None),
    "nesting 50000 deep": (raw(f'{{"model": "bundle", {HI}, "junk": {"[" * 50000}{"]" * 50000}}}'), 400, "invalid_request", "deeper than 32", None),
    "nesting 40 deep": (raw(f'{{"model": "bundle", {HI}, "junk": {"[" * 40}{"]" * 40}}}'), 400, "invalid_request", "deeper than 32", None),
    "invalid UTF-8 bytes": (b'{"model": "bundle", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_request", "not valid UTF-8", None),
    "lone surrogate": (raw(f'{{"model": "bundle", "messages": [{{"role": "user", "content": "a\\ud800b"}}]}}'), 400, "invalid_request",
                       "not valid Unicode", "messages.0.content"),
    "lone surrogate in a part": (raw('{"model": "bundle", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'),
                                 400, "invalid_request", "not valid Unicode", "messages.0.content.0.text"),
    **{f"chat_template_kwargs.{name}": (body(chat_template_kwargs={name: value}), 400, "invalid_request", "cannot be overridden",
                                        f"chat_template_kwargs.{name}")
       for name, value in (("messages", []), ("add_generation_prompt", False), ("tools", [{"x": 1}]), ("bos_token", "<x>"),
                           ("eos_token", ""), ("raise_exception", 1))},
}
LIMIT_CASES = {
    "5 stop strings (limit 4)": (body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_request", "limit is 4", "stop"),
    "a 33-character stop string": (body(stop="x" * 33), 400, "invalid_request", "limit is 32", "stop"),
    "9 messages (limit 8)": (body(messages=[{"role": "user", "content": "hi"}] * 9), 400, "invalid_request", "limit is 8", "messages"),
    "7 content parts (limit 6)": (body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * 7}]), 400,
                                  "invalid_request", "limit is 6", "messages"),
    "3001 characters of text": (body(messages=[{"role": "user", "content": "a" * 1600}, {"role": "user", "content": "b" * 1401}]),
                                400, "invalid_request", "limit is 3,000", "messages"),
    "max_tokens beyond the context": (body(max_tokens=100_000), 400, "invalid_request", "context of 512", "max_tokens"),
    "max_completion_tokens beyond the context": (body(max_completion_tokens=513), 400, "invalid_request", "context of 512",
                                                 "max_completion_tokens"),
    "n = 2": (body(n=2), 400, "invalid_request", "", "n"),
    "a 300-character model name": (body(model="m" * 300), 400, "invalid_request", "256", "model"),
    "seed beyond 64 bits": (body(seed=2**64), 400, "invalid_request", "", "seed"),
    "top_k beyond int32": (body(top_k=2**40), 400, "invalid_request", "", "top_k"),
    "5 chat_template_kwargs (limit 4)": (body(chat_template_kwargs={f"k{i}": i for i in range(5)}), 400, "invalid_request",
                                         "limit is 4", "chat_template_kwargs"),
    "a 9000-character link": (body(messages=user(image_part("https://example.com/" + "a" * 9000))), 400, "invalid_request",
                              "limit is 8,192", "messages.0.content.0.image_url.url"),
    "a 300-character PDF page selection": (body(messages=user(image_part("data:application/pdf;base64,", pages="1," * 150))),
                                           400, "invalid_request", "", None),
}


@pytest.mark.parametrize("case", list(PARSING) + list(LIMIT_CASES))
def test_bad_bodies_get_400_and_the_server_keeps_serving(server, case):
    content, status, code, contains, param = {**PARSING, **LIMIT_CASES}[case]
    assert_error(post(server, content), status, code, contains=contains, param=param)
    assert_still_serving(server)


def test_template_kwargs_that_do_not_collide_still_work(server):
    response = post(server, body(chat_template_kwargs={"enable_thinking": False, "custom_flag": 1}))
    assert response.status_code == 200, response.text


MEDIA = {
    "text/plain (a cross-site form can send it)": {"Content-Type": "text/plain"},
    "form-urlencoded": {"Content-Type": "application/x-www-form-urlencoded"},
    "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
    "no Content-Type": {"Content-Type": ""},
    "JSON in latin-1": {"Content-Type": "application/json; charset=latin-1"},
}


@pytest.mark.parametrize("case", list(MEDIA))
def test_only_json_is_parsed(server, case):
    assert_error(post(server, body(), headers=MEDIA[case]), 415, "unsupported_media_type", contains="application/json")
    assert_still_serving(server)


def test_json_with_utf8_charset_is_fine(server):
    assert post(server, body(), headers={"Content-Type": "Application/JSON; charset=UTF-8"}).status_code == 200


BROWSER = {  # no API key on this server
    "a rebinding Host name": ({"Host": "attacker.example"}, "host_not_allowed"),
    "a rebinding Host name with a port": ({"Host": "attacker.example:8000"}, "host_not_allowed"),
    "a cross-site Origin": ({"Origin": "http://attacker.example"}, "origin_not_allowed"),
    "a cross-site Origin on loopback Host": ({"Origin": "http://localhost:1234"}, "origin_not_allowed"),
    "the null Origin": ({"Origin": "null"}, "origin_not_allowed"),
}


@pytest.mark.parametrize("case", list(BROWSER))
def test_web_pages_cannot_drive_a_keyless_server(server, case):
    headers, code = BROWSER[case]
    assert_error(post(server, body(), headers=headers), 403, code)
    assert_error(httpx.get(f"{server}/v1/models", headers=headers, timeout=120), 403, code)
    assert_still_serving(server)


def test_allowed_hosts_and_origins_are_served(server):
    port = server.rsplit(":", 1)[1]
    for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"}, {"Host": "docs.example"},
                    {"Origin": server}, {"Origin": "http://app.example"}):
        assert post(server, body(), headers=headers).status_code == 200, headers
    allowed = post(server, body(), headers={"Origin": "http://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    preflight = httpx.options(f"{server}/v1/chat/completions", timeout=120, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]


REMOTE = {  # --allow-remote-urls with only 127.0.0.2/32 allowed
    "loopback": ("http://127.0.0.1:{port}/page.png", 403, "not_allowed", "loopback"),
    "localhost by name": ("http://localhost:{port}/page.png", 403, "not_allowed", "loopback"),
    "IPv6 loopback": ("http://[::1]:{port}/page.png", 403, "not_allowed", "loopback"),
    "IPv4-mapped loopback": ("http://[::ffff:127.0.0.1]:{port}/page.png", 403, "not_allowed", "loopback"),
    "cloud metadata": ("http://169.254.169.254/latest/meta-data/", 403, "not_allowed", "link-local"),
    "unspecified": ("http://0.0.0.0:{port}/page.png", 403, "not_allowed", "unspecified"),
    "multicast": ("http://224.0.0.1/x.png", 403, "not_allowed", "multicast"),
    "private": ("http://10.0.0.1/x.png", 403, "not_allowed", "private"),
    "redirect to loopback": ("{intranet}/to?u=http://127.0.0.1:{port}/page.png", 403, "not_allowed", "loopback"),
    "redirect to metadata": ("{intranet}/to?u=http://169.254.169.254/latest/meta-data/", 403, "not_allowed", "link-local"),
    "redirect loop": ("{intranet}/loop", 400, "invalid_image", "redirected more than 3"),
    "upstream 404 (not echoed)": ("{intranet}/missing", 400, "invalid_image", "did not return a file"),
    "a scheme other than http": ("ftp://127.0.0.2/x.png", 400, "invalid_image", "unsupported image URL scheme"),
}


@pytest.mark.parametrize("case", list(REMOTE))
def test_remote_urls_reach_only_public_or_allowed_addresses(server, intranet, proxy, case):
    target, status, code, contains = REMOTE[case]
    victim = LocalWeb("127.0.0.1")  # what a refused URL would reach
    try:
        url = target.format(port=victim.port, intranet=intranet.url)
        response = post(server, body(messages=user(image_part(url))))
        assert_error(response, status, code, contains=contains)
        assert "404" not in response.json()["error"]["message"] and "secret" not in response.text
        assert victim.hits == [] and proxy.hits == []
    finally:
        victim.close()
    assert_still_serving(server)


def test_an_allowed_network_is_fetched_directly_not_through_the_proxy(server, intranet, proxy):
    response = post(server, body(messages=user(image_part(f"{intranet.url}/page.png"))))
    # Fetched and decoded; this bundle has no vision encoder, so the engine refuses the image itself.
    assert_error(response, 400, None, contains="no vision encoder")
    assert intranet.hits[-1][0] == "/page.png" and proxy.hits == []


def in_background(function, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args)), daemon=True)
    thread.start()
    return thread, result


def test_text_requests_never_wait_for_image_preparation(server, intranet):
    # Causal, not timed: the image request holds the only preparation turn (--max-preparing 1) for as long as
    # the upstream holds its fetch, which is until this test releases it; the text request is answered before that.
    intranet.hold()
    image, result = in_background(post, server, body(messages=user(image_part(f"{intranet.url}/held.png"))))
    try:
        assert intranet.arrived.wait(120), "the image request never reached its upstream"
        assert_still_serving(server)  # a text-only request, answered while the image request holds the turn
        assert image.is_alive() and not intranet.gone.is_set(), "the image request ended before the upstream answered"
    finally:
        intranet.release.set()
    image.join(120)
    # Released, the upstream sends the PNG: it is decoded, then refused by this text-only bundle.
    assert_error(result["value"], 400, None, contains="no vision encoder")
    assert_still_serving(server)


@pytest.fixture(scope="module")
def hasty_server(bundle, intranet):
    with serve_process(bundle, *SERVER_ARGS, "--prepare-timeout", "3") as (url, _):
        yield url


def test_input_preparation_has_a_deadline_that_frees_its_turn(hasty_server, intranet):
    intranet.hold()
    try:
        response = post(hasty_server, body(messages=user(image_part(f"{intranet.url}/held.png"))))
        # /held.png sends nothing until released (below): this answer came from the deadline, not the upstream.
        assert intranet.arrived.is_set(), "the image request never reached its upstream"
        assert_error(response, 408, "input_timeout", contains="3 s limit")
        # The fetch itself ends too (the upstream sees it hang up), and with it the request's preparation turn.
        assert intranet.gone.wait(120), "the fetch went on after the deadline"
    finally:
        intranet.release.set()
    hits = len(intranet.hits)
    # The turn is free again: the next image request is fetched (a 404 upstream, so no file is decoded).
    assert_error(post(hasty_server, body(messages=user(image_part(f"{intranet.url}/missing")))), 400,
                 "invalid_image", contains="did not return a file")
    assert intranet.hits[hits:] == [("/missing", intranet.url.removeprefix("http://"))]
    assert_still_serving(hasty_server)


def test_preparation_pool_deadline_covers_the_wait_and_an_overrunning_step():
    import asyncio

    from exaone_edge.runtime.server.prepare import DeadlineExceeded, Preparation

    release = threading.Event()

    def render(held, deadline):  # one step that cannot be interrupted (a page render), held until the test releases it
        if held:
            release.wait(120)
        return "done"

    async def scenario():
        pool = Preparation(concurrency=1, timeout_s=1.0)
        try:
            results = await asyncio.gather(pool.run(render, True), pool.run(render, False), return_exceptions=True)
            busy = pool.running  # the overrunning step still holds its turn until it really ends
            release.set()
            for _ in range(12_000):  # its end gives the turn back (waited for, not timed)
                if not pool.running:
                    break
                await asyncio.sleep(0.01)
            return results, busy, await pool.run(render, False)
        finally:
            release.set()
            pool.close()

    (first, second), busy, after = asyncio.run(scenario())
    assert isinstance(first, DeadlineExceeded) and "1 s limit" in str(first)
    assert isinstance(second, DeadlineExceeded) and "waited 1 s for its turn" in str(second)
    assert busy == 1 and after == "done"
