"""Connections that cannot be held open for free: a deadline for the request headers.

uvicorn closes an idle keep-alive connection, but not one that trickles its request line and headers a
byte at a time; a few hundred of those hold every connection slot (`--max-connections`, uvicorn's
`limit_concurrency`). The protocol below closes a connection whose headers are not complete within
`header_timeout_s` of its opening or of its previous response. (The body has its own deadline in the app.)
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def protocol_with_header_timeout(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class (its `http=` setting) with a deadline for each request's headers."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _headers_overdue(self) -> None:
            self._header_timer = None
            # IDLE: the client has not finished a request line and headers since the timer was armed.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
