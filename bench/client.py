"""The clients' HTTP connections: one keep-alive connection per client process, two ways.

- `RawConnection` (the default): HTTP/1.1 written and read directly on a socket (TCP_NODELAY,
  the body sent with the head in one `sendmsg`, answers read into reused buffers). It costs the
  client ~0.05 ms of CPU per request, so the load generator, which shares the machine's 2 cores
  with the server under test, takes as little of them as possible.
- `HttpxConnection`: the same requests through `httpx.Client`, ~0.4-0.9 ms of client CPU per
  request. `--client httpx` runs the benchmark with it, to check that the numbers do not depend
  on the client.

Both ask for `Accept-Encoding: identity`: Orthanc gzips answers for clients that accept it
(httpx does by default) and the generated pixel data compresses far better than real images, so
compression would measure the data generator rather than the server.
"""

from __future__ import annotations

import socket
import urllib.parse
from typing import Protocol

import httpx

TIMEOUT = 300.0
_SCRATCH = 1 << 20


class Connection(Protocol):
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Answer:
        """Send one request and read the whole answer into memory."""
        ...

    def download(self, path: str) -> tuple[int, int]:
        """`GET path`, reading the body without keeping it: (status, body length)."""
        ...

    def close(self) -> None: ...


class Answer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class HttpError(RuntimeError):
    """The server answered something this client cannot read."""


class _Closed(HttpError):
    """The connection was found closed before any byte of the answer."""


class RawConnection:
    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._host = f"{self._address[0]}:{self._address[1]}".encode()
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._scratch = bytearray(_SCRATCH)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._address, timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._buf.clear()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, method: str, path: str, body: bytes | None, content_type: str | None) -> socket.socket:
        sock = self._connect()
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), b"Host: ", self._host, b"\r\nAccept-Encoding: identity\r\n"]
        if body is not None:
            if content_type:
                head.append(f"Content-Type: {content_type}\r\n".encode())
            head.append(f"Content-Length: {len(body)}\r\n".encode())
        head.append(b"\r\n")
        views = [memoryview(b"".join(head))]
        if body:
            views.append(memoryview(body))
        # Head and body in one system call, without copying the body; a socket with a timeout may
        # take only part of it, so carry on from where it stopped.
        while views:
            sent = sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views:
                views[0] = views[0][sent:]
        return sock

    def _fill(self, sock: socket.socket) -> None:
        n = sock.recv_into(self._scratch)
        if n == 0:
            raise HttpError("the server closed the connection")
        self._buf += memoryview(self._scratch)[:n]

    def _line(self, sock: socket.socket, marker: bytes) -> bytes:
        while True:
            at = self._buf.find(marker)
            if at >= 0:
                out = bytes(self._buf[:at])
                del self._buf[: at + len(marker)]
                return out
            self._fill(sock)

    def _exact(self, sock: socket.socket, size: int, keep: bool) -> bytes:
        """`size` body bytes: kept (returned) or only consumed (an empty result)."""
        if len(self._buf) >= size:
            out = bytes(self._buf[:size]) if keep else b""
            del self._buf[:size]
            return out
        parts = [bytes(self._buf)] if keep else []
        missing = size - len(self._buf)
        self._buf.clear()
        view = memoryview(self._scratch)
        while missing > 0:
            n = sock.recv_into(view, min(missing, _SCRATCH))
            if n == 0:
                raise HttpError("the server closed the connection in the middle of an answer")
            if keep:
                parts.append(bytes(view[:n]))
            missing -= n
        return b"".join(parts)

    def _answer(self, sock: socket.socket, keep: bool) -> tuple[int, bytes, int]:
        if not self._buf:
            try:
                self._fill(sock)
            except HttpError:
                raise _Closed("the server closed the connection before answering") from None
        head = self._line(sock, b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            body = self._exact(sock, length, keep)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            length = 0
            while True:
                size = int(self._line(sock, b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._line(sock, b"\r\n"):  # trailers, up to the empty line
                        pass
                    break
                chunks.append(self._exact(sock, size, keep))
                length += size
                self._line(sock, b"\r\n")
            body = b"".join(chunks)
        else:
            raise HttpError(f"an answer without Content-Length nor chunked encoding: {head[0]}")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body, length

    def _exchange(
        self, method: str, path: str, body: bytes | None, content_type: str | None, keep: bool
    ) -> tuple[int, bytes, int]:
        # A server may close a keep-alive connection that stayed idle (Orthanc does after a few
        # seconds): as any HTTP client, retry once on a new connection when a reused one turns out
        # closed before the answer started.
        reused = self._sock is not None
        try:
            sock = self._send(method, path, body, content_type)
            return self._answer(sock, keep)
        except (BrokenPipeError, ConnectionResetError, _Closed):
            if not reused:
                raise
        self.close()
        sock = self._send(method, path, body, content_type)
        return self._answer(sock, keep)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Answer:
        status, data, _ = self._exchange(method, path, body, content_type, keep=True)
        return Answer(status, data)

    def download(self, path: str) -> tuple[int, int]:
        status, _, length = self._exchange("GET", path, None, None, keep=False)
        return status, length


class HttpxConnection:
    def __init__(self, url: str) -> None:
        self._client = httpx.Client(
            base_url=url,
            timeout=TIMEOUT,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"Accept-Encoding": "identity"},
        )

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Answer:
        headers = {"Content-Type": content_type} if content_type else None
        answer = self._client.request(method, path, content=body, headers=headers)
        return Answer(answer.status_code, answer.content)

    def download(self, path: str) -> tuple[int, int]:
        total = 0
        with self._client.stream("GET", path) as answer:
            for chunk in answer.iter_raw():
                total += len(chunk)
        return answer.status_code, total

    def close(self) -> None:
        self._client.close()


def connect(kind: str, url: str) -> Connection:
    if kind == "raw":
        return RawConnection(url)
    if kind == "httpx":
        return HttpxConnection(url)
    raise ValueError(f"unknown client kind {kind!r}")
