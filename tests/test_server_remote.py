"""Remote URL fetching (`--allow-remote-urls`): the address classifier, every resolved address and every
redirect hop checked, the connection made to the checked address, proxies ignored, errors that do not
echo the upstream. Nothing here leaves the machine: fake resolvers, and local servers on 127.0.0.2."""

from __future__ import annotations

import ipaddress

import pytest

from exaone_edge.errors import ImageRejected
from exaone_edge.runtime.server.errors import NotAllowed
from exaone_edge.runtime.server.prepare import Deadline, DeadlineExceeded
from exaone_edge.runtime.server.remote import fetch, refusal
from server_fixtures import LocalWeb

REFUSED = {
    "127.0.0.1": "loopback", "127.9.9.9": "loopback", "::1": "loopback", "0.0.0.0": "unspecified", "::": "unspecified",
    "169.254.169.254": "link-local", "fe80::1": "link-local", "10.1.2.3": "private", "172.16.0.1": "private",
    "192.168.1.1": "private", "fc00::1": "private", "224.0.0.1": "multicast", "224.0.1.1": "multicast",
    "ff02::1": "multicast", "100.64.0.1": "non-public", "192.0.0.8": "non-public", "240.0.0.1": "private",
    "255.255.255.255": "private", "::ffff:127.0.0.1": "loopback", "::ffff:169.254.169.254": "link-local",
    "2002:7f00:1::": "loopback", "64:ff9b::a9fe:a9fe": "link-local", "198.18.0.1": "private",
    "fec0::1": "site-local", "feff:ffff::1": "site-local",  # fec0::/10: Python calls it global
}
PUBLIC = ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "1.1.1.1")


@pytest.mark.parametrize("address", list(REFUSED))
def test_non_public_addresses_are_refused(address):
    assert refusal(ipaddress.ip_address(address)) == REFUSED[address]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_an_allowed_network_opens_only_itself():
    allowed = (ipaddress.ip_network("10.0.0.0/8"),)
    assert refusal(ipaddress.ip_address("10.9.9.9"), allowed) is None
    assert refusal(ipaddress.ip_address("192.168.0.1"), allowed) == "private"
    assert refusal(ipaddress.ip_address("::1"), allowed) == "loopback"


@pytest.fixture(scope="module")
def web():
    server = LocalWeb("127.0.0.2")  # the "allowed intranet" in these tests
    yield server
    server.close()


def get(url: str, resolver=None, allowed=("127.0.0.2/32",), seconds: float = 10.0, **kwargs) -> bytes:
    options = dict(max_bytes=1 << 20, timeout_s=5.0, max_redirects=3, deadline=Deadline(seconds), allowed_networks=allowed)
    if resolver is not None:
        options["resolver"] = resolver
    return fetch(url, **{**options, **kwargs})


class FakeDNS:
    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def test_every_resolved_address_must_be_public(web):
    dns = FakeDNS(["93.184.216.34", "127.0.0.1"])  # one public, one loopback: refused, nothing connects
    with pytest.raises(NotAllowed, match="loopback"):
        get("http://files.example/page.png", resolver=dns)
    dns = FakeDNS(["169.254.169.254"])
    with pytest.raises(NotAllowed, match="link-local"):
        get("http://metadata.example/latest/meta-data/", resolver=dns)
    assert web.hits == []


def test_connects_to_the_checked_address_not_a_second_lookup(web):
    # Rebinding: a second lookup would answer 127.0.0.1. The fetch resolves once and connects to that answer,
    # with the name only in the Host header ("files.example" has no real DNS entry: a second lookup would fail).
    dns = FakeDNS(["127.0.0.2"], ["127.0.0.1"])
    data = get(f"http://files.example:{web.port}/page.png", resolver=dns)
    assert data.startswith(b"\x89PNG") and dns.calls == ["files.example"]
    assert web.hits[-1] == ("/page.png", f"files.example:{web.port}")


def test_each_redirect_hop_is_checked(web):
    hits = len(web.hits)
    for target in ("http://127.0.0.1:9/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/"):
        with pytest.raises(NotAllowed):
            get(f"{web.url}/to?u={target}")
    assert len(web.hits) == hits + 3  # only the first hops reached a server
    with pytest.raises(ImageRejected, match="redirected more than 3 times"):
        get(f"{web.url}/loop")
    with pytest.raises(ImageRejected, match="only http and https"):
        get(f"{web.url}/to?u=file:///etc/passwd")


def test_errors_do_not_echo_the_upstream(web):
    with pytest.raises(ImageRejected) as info:
        get(f"{web.url}/missing")
    assert "404" not in str(info.value) and "secret" not in str(info.value) and "did not return a file" in str(info.value)
    with pytest.raises(ImageRejected, match="does not resolve"):
        get("http://no-such-host.invalid/x.png", resolver=FakeDNS([]))
    with pytest.raises(ImageRejected, match="larger than"):
        get(f"{web.url}/page.png", max_bytes=10)


def test_proxy_variables_are_ignored(web, monkeypatch):
    proxy = LocalWeb("127.0.0.2")
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert get(f"{web.url}/page.png").startswith(b"\x89PNG")
        assert proxy.hits == []
    finally:
        proxy.close()


def test_a_slow_upstream_hits_the_total_deadline(web):
    # /slow sends one byte every 0.2 s for 100 s (then hangs up short of its Content-Length): only the total
    # deadline can end this fetch with DeadlineExceeded, and "downloading" says it ended it mid-body (3 s leave
    # the client's setup far inside the budget, so the deadline always falls in the body).
    with pytest.raises(DeadlineExceeded, match=r"3 s limit \(stopped while downloading from 127\.0\.0\.2\)"):
        get(f"{web.url}/slow", seconds=3.0)


def test_a_compressed_body_is_refused_not_inflated_past_the_limit(web):
    # The server was asked for identity; a 0.1 kB gzip body of 100 kB must not be inflated past max_bytes (1 kB).
    with pytest.raises(ImageRejected, match="compressed"):
        get(f"{web.url}/gzip", max_bytes=1024)
    assert web.hits[-1][0] == "/gzip"
