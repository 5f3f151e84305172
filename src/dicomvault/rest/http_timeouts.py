"""`HttpRequestTimeout` on the wire: uvicorn's httptools protocol with a deadline on each request's
headers and on every pause of its body, so slow or stalled clients cannot hold connections (and
the handlers awaiting their bodies) forever. The composition root (`server.py`) hands the protocol
class to uvicorn.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def request_deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with `HttpRequestTimeout` enforced (0: no bound).

    uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a client that
    connects and sends nothing, or half a request line, or stops in the middle of a body, holds its
    connection (and, mid-body, the handler awaiting it) forever. Slow-loris clients could thus
    pile up until the process runs out of file descriptors. Here:

    * the request line and headers must arrive in full within `timeout` seconds of the connection
      (or of the first byte of a keep-alive request): a total, so dripping one byte at a time does
      not extend it;
    * a body may pause at most `timeout` seconds between two reads (as Orthanc's civetweb, whose
      `request_timeout_ms` is a per-read socket timeout), except while uvicorn itself paused
      reading because the handler has not consumed what came (back-pressure is not a stall).

    On expiry the connection is closed: a handler awaiting the body sees a disconnect.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class RequestDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _in_body = False

        def _arm(self) -> None:
            self._disarm()
            if timeout > 0:
                self._deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._in_body and self.flow.read_paused:
                self._arm()  # the handler is behind, not the client
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            phase = "its request body" if self._in_body else "a complete request header"
            logger.warning(
                "closing the HTTP connection of %s: it sent no %s within HttpRequestTimeout (%s s)",
                client,
                "more of " + phase if self._in_body else phase,
                timeout,
            )
            if not self._in_body and (self.cycle is None or self.cycle.response_complete):
                # No handler runs for this connection: answering is safe (Orthanc's civetweb
                # answers a 400 there; 408 says what happened).
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_body = False
            self._arm()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._in_body = True
            self._arm()

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_body = False
            self._disarm()

    return RequestDeadlineProtocol
