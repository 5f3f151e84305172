"""Access control on every route, as an ASGI middleware: `RemoteAccessAllowed` (loopback only
when false) and HTTP basic authentication against `RegisteredUsers`.

It runs before routing, so unknown routes, file downloads and write routes are all covered.
The authenticated user name is put in the ASGI scope (`scope["state"]["username"]`) for the
`HttpUsername` metadata.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomvault.errors import ErrorCode
from dicomvault.rest.responses import error_body

logger = logging.getLogger(__name__)

REALM = 'Basic realm="Orthanc Secure Area"'


def is_loopback(host: str | None) -> bool:
    """Whether the TCP peer is this machine. An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, what a
    dual-stack socket reports) is judged by its IPv4 address."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_basic(header: str | None, users: Mapping[str, str]) -> str | None:
    """The user name if `header` carries valid credentials, else None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or user not in users:
        return None
    return user if hmac.compare_digest(users[user].encode(), password.encode()) else None


class AccessControl:
    def __init__(
        self, app: ASGIApp, remote_access_allowed: bool, authentication: bool, users: Mapping[str, str]
    ) -> None:
        self.app = app
        self.remote_access_allowed = remote_access_allowed
        self.authentication = authentication
        self.users = dict(users)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        host = client[0] if client else None
        if not self.remote_access_allowed and not is_loopback(host):
            # Orthanc 1.10.1 answers 401 with an empty body and a WWW-Authenticate challenge here
            # (checked); credentials would not help, so dicomvault says 403 with Orthanc's JSON body.
            logger.warning("refused a request from %s: RemoteAccessAllowed is false", host)
            await _refuse(scope, send, 403, ErrorCode.FORBIDDEN_ACCESS, "remote access is disabled", None)
            return
        username = ""
        if self.authentication:
            header = None
            for key, value in scope.get("headers", []):
                if key == b"authorization":
                    header = value.decode("latin-1")
                    break
            user = check_basic(header, self.users)
            if user is None:
                logger.info(
                    "refused %s %s from %s: missing or wrong credentials",
                    scope["method"],
                    scope["path"],
                    host,
                )
                await _refuse(scope, send, 401, ErrorCode.UNAUTHORIZED, None, REALM)
                return
            username = user
        scope.setdefault("state", {})["username"] = username
        await self.app(scope, receive, send)


async def _refuse(
    scope: Scope, send: Send, status: int, code: ErrorCode, details: str | None, realm: str | None
) -> None:
    body = orjson.dumps(error_body(scope["method"], scope["path"], status, code, details), option=orjson.OPT_SORT_KEYS)
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if realm:
        headers.append((b"www-authenticate", realm.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
