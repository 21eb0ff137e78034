"""One HTTP exchange relayed to an upstream so the client sees what it would see talking to it directly.

What the router must never do is make a broken exchange look healthy. Once the response headers have
reached the client, a failure can only be shown the way the upstream showed it: the connection is cut,
so a Content-Length body ends short and a chunked body has no last chunk. Before the headers, a failure
is a 502 (504 for a timeout) whose body names the service and the cause.

Everything else passes through: bodies are streamed in both directions as they arrive (with back
pressure, so a 50 MB body is never held whole), response headers are sent on as soon as they arrive
(server-sent events, long polls), repeated headers keep every value, and only the hop-by-hop headers of
RFC 9110 section 7.6.1 are dropped: the fixed list plus every header the Connection header names.
`Expect: 100-continue` is answered by the router's own server (a gateway may do so, RFC 9110 section
10.1.1) and not forwarded, so no upstream that ignores it can stall the upload.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientResponse,
    ClientResponseError,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    TCPConnector,
    web,
)
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

log = logging.getLogger("agentloop.sandbox.router")

# RFC 9110 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade.
# Trailer goes too: trailers are not relayed, so announcing them would be a lie. Proxy-Authenticate and
# Proxy-Authorization are for a proxy the client chose, not for this gateway. Host is the upstream's own.
HOP_BY_HOP = frozenset(
    h.lower() for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host",
    )
)
_NOT_FORWARDED = frozenset({"expect"})  # answered here, see the module docstring
_SENT_BY_UPSTREAM = "agentloop.upstream_headers"
# Headers aiohttp's server fills in when a response lacks them; a relayed response keeps the upstream's
# choice. (Date stays: RFC 9110 6.6.1 asks a recipient with a clock to add it.)
_FILLED_IN = ("Content-Type", "Server")
DEFAULT_UPSTREAM_TIMEOUT = 300.0
CONNECT_TIMEOUT = 5.0


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """`headers` without the hop-by-hop ones (and `drop`), every repeated value kept in order."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    skip = HOP_BY_HOP | named | set(drop)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


@dataclass
class Outcome:
    """What happened to one exchange, for its request record."""

    status: int = 502
    error: str | None = None


class Relay:
    """A pooled upstream client and the relaying of one exchange through it."""

    def __init__(self, upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT) -> None:
        self.upstream_timeout = upstream_timeout
        self._session: ClientSession | None = None

    async def start(self) -> None:
        self._session = ClientSession(
            # An idle pooled connection is dropped after 1 s, before the common servers drop it (gunicorn
            # after 2 s, uvicorn and Node after 5 s): a request sent on a connection the service is just
            # closing fails, and one with a streamed body cannot be retried, a 502 the client would never
            # see talking to the service directly.
            connector=TCPConnector(limit=0, keepalive_timeout=1),
            timeout=ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def install(app: web.Application) -> None:
        """Let relayed responses keep the headers exactly as the upstream sent them."""
        app.on_response_prepare.append(_as_upstream_sent)

    async def forward(self, request: web.Request, upstream_url: str, who: str, outcome: Outcome) -> web.StreamResponse:
        """Relay `request` to `upstream_url`; `who` names the upstream in error bodies ("service 'x' (fork at …)")."""
        assert self._session is not None, "Relay.start() first"
        deadline = asyncio.timeout(self.upstream_timeout)
        try:
            async with deadline:
                upstream = await self._session.request(
                    request.method, URL(upstream_url + request.raw_path, encoded=True),
                    headers=end_to_end(request.headers, drop=_NOT_FORWARDED),
                    data=request.content if request.body_exists else None,
                    allow_redirects=False,
                )
        except (ClientError, OSError, TimeoutError) as exc:
            if request.content.exception() is not None:
                # The client's upload broke off, and the upstream connection was closed with it, so the
                # service never sees a request that looks complete.
                outcome.status = 400
                outcome.error = f"client closed mid-upload after {request.content.total_bytes} bytes"
                log.warning("%s %s: %s (%r)", request.method, request.path, outcome.error, request.content.exception())
                return web.Response(status=400, text=f"loop router: {outcome.error}; {who} got no complete request\n")
            outcome.status, cause = self._before_headers(exc, deadline.expired())
            outcome.error = f"upstream {cause}"
            log.warning("%s %s: %s %s (%r)", request.method, request.path, who, cause, exc)
            return web.Response(status=outcome.status, text=f"loop router: {who} {cause}\n")
        async with upstream:
            outcome.status = upstream.status
            return await _relay_body(request, upstream, outcome)

    def _before_headers(self, exc: BaseException, expired: bool) -> tuple[int, str]:
        """(status, cause) for a failure before the upstream's response headers."""
        if expired:
            return 504, f"sent no response headers within {self.upstream_timeout:g} s"
        if isinstance(exc, TimeoutError):  # only the connect timeout is set on the session
            return 504, f"did not accept the connection within {CONNECT_TIMEOUT:g} s"
        if isinstance(exc, ClientConnectorError):
            if isinstance(exc.os_error, ConnectionRefusedError):
                return 502, "refused the connection (is it running?)"
            return 502, f"could not be reached ({exc.os_error.strerror or exc.os_error})"
        if isinstance(exc, ServerDisconnectedError):
            return 502, "closed the connection before sending response headers"
        if isinstance(exc, ClientOSError | ConnectionResetError) and exc.errno == errno.ECONNRESET:
            return 502, "reset the connection before sending response headers"
        if isinstance(exc, ClientResponseError):
            return 502, f"sent an invalid HTTP response ({exc.message})"
        return 502, f"failed before sending response headers ({type(exc).__name__}: {exc})"


async def _relay_body(request: web.Request, upstream: ClientResponse, outcome: Outcome) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers))
    response[_SENT_BY_UPSTREAM] = upstream.headers
    sent = 0
    try:
        # A StreamResponse sends its headers at once: an event stream's client sees them before any event.
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (ClientError, OSError, TimeoutError) as exc:
                return _cut(request, response, outcome, f"upstream closed mid-body after {sent} bytes", exc)
            if not chunk:
                break
            await response.write(chunk)  # waits while the client is slower: back pressure, not buffering
            sent += len(chunk)
        await response.write_eof()
    except (ClientError, OSError) as exc:  # only writes to the client are left in here
        return _cut(request, response, outcome, f"client closed mid-body after {sent} bytes", exc)
    return response


def _cut(request: web.Request, response: web.StreamResponse, outcome: Outcome, error: str,
         exc: BaseException) -> web.StreamResponse:
    """End the client's connection where the body stopped, so the client sees the failure too: closing
    (not resetting) lets what was already sent arrive, and nothing more is ever written to it."""
    outcome.error = error
    log.warning("%s %s: %s (%r)", request.method, request.path, error, exc)
    response.force_close()
    if request.transport is not None:
        request.transport.close()
    return response


async def _as_upstream_sent(request: web.Request, response: web.StreamResponse) -> None:
    sent: CIMultiDictProxy[str] | None = response.get(_SENT_BY_UPSTREAM)
    if sent is None:
        return
    for name in _FILLED_IN:
        if name not in sent:
            response.headers.popall(name, None)
    # RFC 9110 8.6 lets a 304 carry the Content-Length of the representation; aiohttp drops it.
    if response.status == 304 and "Content-Length" in sent and "Content-Length" not in response.headers:
        response.headers["Content-Length"] = sent["Content-Length"]
