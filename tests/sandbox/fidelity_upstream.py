"""A small HTTP/1.1 upstream on loopback, written on raw sockets so it can misbehave on purpose.

Each connection is served by its own thread, keep-alive included. What it does depends on the request
path (see `Upstream._answer`): die mid-body, reset before answering, stream chunks as the test allows,
send 50 MB, answer HEAD/204/304, and so on. Every request it reads is kept in `received`, so a test can
see what reached the service (headers, body length and hash, whether the body was complete).
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

BIG = 50 * 1024 * 1024
_PIECE = 64 * 1024


def pattern(size: int) -> bytes:
    """Deterministic, non-repeating-per-piece bytes, so a body mixed up in transit shows in its hash."""
    return b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))[:size]


def big_body_digest() -> str:
    digest = hashlib.sha256()
    piece = pattern(_PIECE)
    for _ in range(BIG // _PIECE):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    length: int = 0
    sha256: str = ""
    complete: bool = True
    done: threading.Event = field(default_factory=threading.Event)  # set once the whole body is read

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """Listening on 127.0.0.1 from construction until `close`."""

    events: defaultdict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        for event in list(self.events.values()):
            event.set()  # release handlers still waiting for the test
        self._server.close()

    def last(self, path: str) -> Received:
        return [r for r in self.received if r.path == path][-1]

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        with conn:
            try:
                while not self._closing.is_set():
                    request = reader.request(conn, self.received.append)
                    if request is None:
                        return
                    if not request.complete or not self._answer(conn, request):
                        return
            except OSError:
                return

    def _answer(self, conn: socket.socket, request: Received) -> bool:
        """Reply to one request; False closes the connection."""
        path = request.path
        if path == "/mid-body-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"a" * 400)
            return False
        if path == "/mid-body-chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nfirst\r\n6\r\nsecond\r\n")
            return False
        if path == "/reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closing with linger 0 sends RST instead of FIN
        if path == "/no-answer":
            self.events["no-answer"].wait()
            return False
        if path == "/stream":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.events["stream-first"].wait()
            conn.sendall(_chunk(b"data: first\n\n"))
            self.events["stream-last"].wait()
            conn.sendall(_chunk(b"data: last\n\n") + b"0\r\n\r\n")
            return True
        if path.startswith("/big"):
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\r\n"
                         .encode())
            piece = pattern(_PIECE)
            try:
                for _ in range(BIG // _PIECE):
                    conn.sendall(piece)
            except OSError:
                self.events[f"{path} abandoned"].set()  # the reader went away mid-body
                raise
            return True
        if path == "/head" and request.method == "HEAD":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12345\r\n\r\n")
            return True
        if path == "/no-content":
            conn.sendall(b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n")
            return True
        if path == "/not-modified":
            # The length of the representation the 304 stands for (RFC 9110 8.6); no body follows.
            conn.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 7\r\n\r\n')
            return True
        if path == "/headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"  # and no Content-Type
                         b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\n"
                         b"Connection: keep-alive, X-Hop-Out\r\nX-Hop-Out: secret\r\nKeep-Alive: timeout=5\r\n"
                         b"X-End-To-End: kept\r\n\r\nok")
            return True
        body = f"{request.method} {path} {request.length} {request.sha256}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Reader:
    """Reads requests off one connection: head, then the body by Content-Length or chunked, hashed as it
    arrives so a 50 MB upload is never held whole."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def _more(self) -> bool:
        data = self._conn.recv(_PIECE)
        self._buffer += data
        return bool(data)

    def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            if not self._more():
                return None
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int, digest: hashlib._Hash) -> int:
        got = 0
        while got < size:
            if not self._buffer and not self._more():
                break
            take = self._buffer[: size - got]
            self._buffer = self._buffer[len(take):]
            digest.update(take)
            got += len(take)
        return got

    def request(self, conn: socket.socket, on_head: Callable[[Received], None]) -> Received | None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._more():
                return None
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        start, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = start.split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        request = Received(method, target.split("?", 1)[0], headers)
        on_head(request)
        try:
            self._body(conn, request)
        finally:
            request.done.set()
        return request

    def _body(self, conn: socket.socket, request: Received) -> None:
        if "100-continue" in [v.lower() for v in request.values("Expect")]:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        digest = hashlib.sha256()
        if "chunked" in ",".join(request.values("Transfer-Encoding")).lower():
            request.complete = self._chunked(request, digest)
        elif request.values("Content-Length"):
            declared = int(request.values("Content-Length")[0])
            request.length = self._exactly(declared, digest)
            request.complete = request.length == declared
        request.sha256 = digest.hexdigest()

    def _chunked(self, request: Received, digest: hashlib._Hash) -> bool:
        while True:
            line = self._line()
            if line is None:
                return False
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                return self._line() == b""  # no trailers are sent in these tests
            got = self._exactly(size, digest)
            request.length += got
            if got < size or self._line() != b"":
                return False
