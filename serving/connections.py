"""HTTP connections that must send each request head in time: a slow or stalled client cannot hold one open.

aiohttp waits for a request line and headers as long as a client keeps the socket open (64 connections
sending a header byte at a time stayed open indefinitely). `HeadTimeoutSite` serves an aiohttp runner
like `web.SockSite`, each connection wrapped in a `_HeadDeadline`: from the moment a connection opens,
or the first byte of its next request arrives after a response, the whole head (request line and
headers, up to the blank line) must arrive within `seconds`, else the connection is aborted. Bodies
have their own timeout (serving.rest); idle kept-alive connections are aiohttp's (`keepalive_timeout`).
Requests aiohttp's HTTP parser refuses before any handler runs (a bad request line, header or chunk
size) are answered as every other error, `{"error": ...}` JSON, not aiohttp's text page.

    deadlines = HeadDeadlines(10.0)
    app.on_response_prepare.append(deadlines.on_response_prepare)   # before the runner's setup()
    await HeadTimeoutSite(runner, listener, deadlines).start()
"""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving.json_tensor import error_body

logger = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"


class _HeadDeadline(asyncio.Protocol):
    """aiohttp's protocol of one connection, wrapped: aborts the connection when a request head takes too long."""

    def __init__(self, inner: asyncio.Protocol, deadlines: "HeadDeadlines"):
        self._inner, self._deadlines = inner, deadlines
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._between_requests = False  # a response started: the next bytes begin a new request
        self._tail = b""  # the last bytes of a head in progress, to find its end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._deadlines.opened(transport, self)
        self._start_timer()
        self._inner.connection_made(transport)

    def response_started(self) -> None:
        """The current request is answered (its body was read first): what arrives next is a new request."""
        self._between_requests = True

    def _start_timer(self) -> None:
        self._tail = b""
        self._timer = asyncio.get_running_loop().call_later(self._deadlines.seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            logger.info("Closed the connection from %s: no complete request head within %g s "
                        "(--rest_api_header_timeout_seconds)", self._transport.get_extra_info("peername"),
                        self._deadlines.seconds)
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._between_requests:
            self._between_requests = False
            self._start_timer()
        if self._timer is not None:
            seen = self._tail + data
            if _HEAD_END in seen:
                self._timer.cancel()
                self._timer, self._tail = None, b""
            else:
                self._tail = seen[-(len(_HEAD_END) - 1):]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.closed(self._transport)
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _JsonErrors(RequestHandler):
    """aiohttp's protocol whose own error pages (malformed HTTP) are TF Serving's error JSON."""

    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        page = super().handle_error(request, status, exc, message)  # logs, and refuses when a response started
        text = " ".join((message or getattr(page, "text", "") or "").split())[:200] or f"HTTP {status}"
        response = web.Response(status=page.status, body=error_body(f"Malformed HTTP request: {text}"),
                                content_type="application/json")
        response.force_close()
        return response


class HeadDeadlines:
    """The open connections of a site and the time each request head may take."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._connections: dict[asyncio.BaseTransport, _HeadDeadline] = {}

    def opened(self, transport: asyncio.BaseTransport, connection: _HeadDeadline) -> None:
        self._connections[transport] = connection

    def closed(self, transport: asyncio.BaseTransport | None) -> None:
        self._connections.pop(transport, None)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's on_response_prepare signal: the connection's next bytes start a new request."""
        connection = self._connections.get(request.transport)
        if connection is not None:
            connection.response_started()


class HeadTimeoutSite(web.SockSite):
    """`web.SockSite` whose connections must send each request head within `deadlines.seconds`."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, deadlines: HeadDeadlines):
        super().__init__(runner, sock)
        self._deadlines = deadlines

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner, as SockSite.start does
        handler_factory = self._runner.server

        def connection() -> _HeadDeadline:
            handler = handler_factory()
            if type(handler) is RequestHandler:  # same layout (no slots of its own): only the error pages change
                handler.__class__ = _JsonErrors
            return _HeadDeadline(handler, self._deadlines)

        self._server = await asyncio.get_running_loop().create_server(connection, sock=self._sock,
                                                                      backlog=self._backlog)
