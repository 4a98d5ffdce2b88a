"""Keep web pages from driving a server that has no API key: Host (DNS rebinding) and Origin (cross-site) checks.

Without a key, any page a local browser opens could POST to http://127.0.0.1:8000 (a cross-site
request) or point its own domain at 127.0.0.1 and call the server as same-origin (DNS rebinding).
So, when no key is set:
- the Host header must be an IP literal (a rebinding needs a name), `localhost` / `*.localhost`, or a
  name the operator allowed (`--allow-host`, `*` for any);
- a browser's Origin header, when present, must be the server's own origin or one the operator
  allowed (`--allow-origin`, `*` for any); `null` (sandboxed frames, files) is refused.
Allowed origins also get CORS headers, with or without a key, so a browser app can call the API.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from exaone_edge.runtime.server.errors import HostNotAllowed, OriginNotAllowed, error_body
from exaone_edge.runtime.server.settings import ServerSettings


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    if not host_header or "*" in allowed:
        return True
    if host_header.startswith("["):
        host = host_header[1 : host_header.find("]")] if "]" in host_header else ""
    else:
        host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host in {h.lower().rstrip(".") for h in allowed}:
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def origin_allowed(origin: str, host_header: str, allowed: tuple[str, ...]) -> bool:
    if "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return bool(host_header) and parts.netloc.lower() == host_header.lower()  # the server's own pages


class RequestGuard:
    """Pure ASGI: refuses before any route runs, so no handler ever sees such a request."""

    def __init__(self, app, settings: ServerSettings) -> None:
        self.settings = settings
        self.app = app
        if settings.allow_origin:
            self.app = CORSMiddleware(
                app, allow_origins=list(settings.allow_origin), allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"], max_age=600,
            )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.settings.api_key is None:
            error = self._refusal(Headers(scope=scope))
            if error is not None:
                status, body = error_body(error)
                return await JSONResponse(body, status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, headers: Headers) -> Exception | None:
        host = headers.get("host", "")
        if not host_allowed(host, self.settings.allow_host):
            return HostNotAllowed(
                f"the Host header {host[:100]!r} is not this server's (a web page may be reaching it by DNS rebinding)",
                fix="Use http://127.0.0.1 or http://localhost, start the server with --allow-host NAME, or set --api-key.",
            )
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, host, self.settings.allow_origin):
            return OriginNotAllowed(
                f"requests from the web origin {origin[:100]!r} are refused (cross-site)",
                fix="Start the server with --allow-origin ORIGIN, or set --api-key.",
            )
        return None
