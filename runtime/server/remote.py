"""Remote image/PDF URLs (`--allow-remote-urls`), fetched so that a request cannot reach this machine's own network.

Every address a host name resolves to must be public (not private, loopback, link-local such as the
cloud metadata service 169.254.169.254, multicast, unspecified, reserved or shared), at every redirect
hop; the connection then goes to the address that was checked, with the name only in the Host header
and TLS SNI, so a DNS answer that changes between the check and the connect (rebinding) is never
used. Proxy variables are ignored. Sizes, redirects and time are bounded; errors name the host only,
never the upstream status or body (those go to the server log).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

from exaone_edge.errors import ImageRejected
from exaone_edge.runtime.server.errors import NotAllowed
from exaone_edge.runtime.server.prepare import Deadline

log = logging.getLogger("exaone_edge.serve")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) → IP address strings
REDIRECTS = (301, 302, 303, 307, 308)
# Not globally reachable, yet missing from (or global in) Python's tables (IANA special-purpose registry).
_EXTRA_NON_GLOBAL = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: Address, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> str | None:
    """Why a fetch from `address` is refused ("loopback", "link-local", …), or None when it is public or allowed."""
    if any(address.version == network.version and address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (mapped, 6to4, Teredo, NAT64) is judged by the IPv4 address it reaches.
        teredo = address.teredo
        embedded = address.ipv4_mapped or address.sixtofour or (teredo[1] if teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded, allowed)
    # is_site_local: fec0::/10, deprecated (RFC 3879) but still routed inside some sites, and global to Python.
    for attribute, kind in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                            ("is_link_local", "link-local"), ("is_site_local", "site-local"), ("is_multicast", "multicast"),
                            ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(address, attribute, False):
            return kind
    if not address.is_global or any(address.version == n.version and address in n for n in _EXTRA_NON_GLOBAL):
        return "non-public"
    return None


def parse_networks(specs: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def checked_addresses(host: str, port: int, allowed, resolver: Resolver, label: str) -> list[Address]:
    """Resolve `host`; refuse unless EVERY address is public (or inside an allowed network)."""
    try:
        literal = ipaddress.ip_address(host)
        addresses: list[Address] = [literal]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise ImageRejected(f"{label}: the host name does not resolve") from None
    if not addresses:
        raise ImageRejected(f"{label}: the host name does not resolve")
    for address in addresses:
        kind = refusal(address, allowed)
        if kind is not None:
            log.warning("refused to fetch from %s: %s resolves to %s (%s)", label, host, address, kind)
            raise NotAllowed(
                f"{label}: refused, the host resolves to a {kind} address; only public addresses are fetched",
                fix="Send the file as a data: URL (or ask the operator to allow that network with --allow-remote-network).",
            )
    return addresses


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    deadline: Deadline,
    allowed_networks: Sequence[str] = (),
    resolver: Resolver = system_resolver,
) -> bytes:
    """GET `url` (http or https) within the limits; redirects are followed by hand, each hop checked again."""
    import httpx

    allowed = parse_networks(allowed_networks)
    current = url
    # trust_env=False: HTTP(S)_PROXY, ALL_PROXY and .netrc are ignored; a proxy would connect by name.
    with httpx.Client(trust_env=False, follow_redirects=False, verify=True) as client:
        for _ in range(max_redirects + 1):
            parts = urlsplit(current)
            host = parts.hostname or ""
            label = f"the URL on {host or '?'}"
            if parts.scheme.lower() not in ("http", "https") or not host:
                raise ImageRejected(f"{label}: only http and https URLs are fetched")
            try:
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            except ValueError:
                raise ImageRejected(f"{label}: the port is not a number") from None
            addresses = checked_addresses(host, port, allowed, resolver, label)
            deadline.check(f"connecting to {host}")
            location, data = _get(client, parts, host, port, addresses, label, max_bytes, timeout_s, deadline)
            if location is None:
                return data
            current = urljoin(current, location)
    raise ImageRejected(f"the URL was redirected more than {max_redirects} times")


def _get(client, parts, host: str, port: int, addresses: list[Address], label: str, max_bytes: int,
         timeout_s: float, deadline: Deadline) -> tuple[str | None, bytes]:
    import httpx

    scheme = parts.scheme.lower()
    default_port = {"http": 80, "https": 443}[scheme]
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and port == default_port:
        host_header = f"[{host}]"
    elif ":" in host:
        host_header = f"[{host}]:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    last_error: Exception | None = None
    for address in addresses:  # the checked addresses, in the resolver's order, until one connects
        target = httpx.URL(scheme=scheme, host=str(address), port=port, raw_path=path.encode())
        timeout = httpx.Timeout(max(min(timeout_s, deadline.remaining()), 0.01))
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        try:
            # identity: a compressed body would be inflated past the byte limit; bytes are counted as received.
            with client.stream("GET", target, headers={"Host": host_header, "Accept-Encoding": "identity"},
                               timeout=timeout, extensions=extensions) as response:
                if response.status_code in REDIRECTS and response.headers.get("location"):
                    return response.headers["location"], b""
                if response.status_code != 200:
                    log.info("fetching from %s: upstream answered HTTP %d", label, response.status_code)
                    raise ImageRejected(f"{label}: the server did not return a file")
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    log.info("fetching from %s: upstream sent Content-Encoding %r", label, encoding)
                    raise ImageRejected(f"{label}: the server sent a compressed ({encoding[:32]}) body; only plain files "
                                        "are fetched")
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise ImageRejected(f"{label}: the file is larger than {max_bytes:,} bytes")
                data = bytearray()
                for block in response.iter_raw():
                    data += block
                    if len(data) > max_bytes:
                        raise ImageRejected(f"{label}: the file is larger than {max_bytes:,} bytes")
                    deadline.check(f"downloading from {host}")
                return None, bytes(data)
        except httpx.ConnectError as exc:
            last_error = exc
            continue
        except httpx.TimeoutException:
            deadline.check(f"downloading from {host}")
            raise ImageRejected(f"{label}: timed out after {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            log.info("fetching from %s failed: %r", label, exc)
            raise ImageRejected(f"{label}: could not be fetched ({type(exc).__name__})") from None
    log.info("fetching from %s: no address connected (%r)", label, last_error)
    raise ImageRejected(f"{label}: could not connect")
