"""Tools of the hostile-input tests (test_hostile_input.py): hostile payloads, a raw HTTP client that can
send what no polite client would, and a `python -m serving.server` subprocess whose memory is watched.

Payloads are built small and fast: the image bombs are PNGs of a few KB whose header declares
20000x20000 pixels, the compression bombs are 1 MB bodies that inflate to 1 GiB of zeros.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# ---- images ---------------------------------------------------------------------------------------------

def small_png(size: int = 16, seed: int = 0) -> bytes:
    """A real RGB PNG of `size` x `size` pixels (a few hundred bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def png_of_about(size_bytes: int, seed: int = 0) -> bytes:
    """A real RGB PNG of noise of at least `size_bytes` bytes (noise does not compress)."""
    side = max(4, int((size_bytes / 3) ** 0.5) + 1)
    return small_png(side, seed)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG of `width` x `height` black pixels, 1-bit greyscale: about 50 KB on the wire, 50 MB of
    zlib data inflated, and width*height*3 bytes (1.2 GB at 20000x20000) once decoded to RGB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows_per_feed = max(1, (1 << 20) // len(row))
    feed = row * rows_per_feed
    parts, left = [], height
    while left > 0:
        n = min(left, rows_per_feed)
        parts.append(compressor.compress(feed if n == rows_per_feed else row * n))
        left -= n
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def png_bomb_header_only(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose IHDR declares `width` x `height` 8-bit RGB pixels followed by a tiny zlib stream: a
    decoder that allocates the declared image before reading the data allocates 1.2 GB for 100 bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


# ---- compression bombs --------------------------------------------------------------------------------

def _zero_deflate_blocks(total: int, chunk: int = 1 << 20) -> tuple[bytes, bytes]:
    """Raw deflate data of `total` zero bytes (a multiple of `chunk`), built from one repeated block (each
    block is flushed with Z_FULL_FLUSH, so every block after the first is the same bytes); and the end."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = b"\x00" * chunk
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (total // chunk), compressor.flush()


def gzip_bomb(total: int = 1 << 30) -> bytes:
    """A gzip member of `total` zero bytes (1 GiB -> about 1 MB), CRC and length correct."""
    blocks, end = _zero_deflate_blocks(total)
    crc, zeros = 0, b"\x00" * (1 << 20)
    for _ in range(total >> 20):
        crc = zlib.crc32(zeros, crc)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + blocks + end + struct.pack("<II", crc, total & 0xFFFFFFFF)


def deflate_bomb(total: int = 1 << 30) -> bytes:
    """HTTP `deflate` (a zlib stream) of `total` zero bytes (1 GiB -> about 1 MB), Adler-32 correct."""
    blocks, end = _zero_deflate_blocks(total)
    adler, zeros = 1, b"\x00" * (1 << 20)
    for _ in range(total >> 20):
        adler = zlib.adler32(zeros, adler)
    return b"\x78\xda" + blocks + end + struct.pack(">I", adler)


# ---- raw HTTP -------------------------------------------------------------------------------------------

@dataclass
class HttpAnswer:
    """What a raw HTTP exchange got: a status and body, or `closed` (no response before the server closed
    the connection), with the seconds it took."""

    status: int | None
    body: bytes
    headers: Mapping[str, str]
    seconds: float
    closed: bool = False
    error: str = ""

    def describe(self) -> str:
        if self.status is None:
            return f"no response ({self.error or 'connection closed'}) after {self.seconds:.1f} s"
        return f"HTTP {self.status} after {self.seconds:.1f} s: {self.body[:200]!r}"


def build_request(method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                  content_length: bool = True) -> bytes:
    """An HTTP/1.1 request as bytes (Host, Connection: close and, unless told not to, Content-Length added)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    given = {k.lower() for k in (headers or {})}
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body is not None and content_length and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    if body is not None and "content-type" not in given:
        lines.append("Content-Type: application/json")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def chunked(body: bytes, size: int = 1 << 16) -> bytes:
    """`body` in HTTP/1.1 chunked transfer coding."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def exchange(port: int, raw: bytes, timeout: float = 30.0, method: str = "POST") -> HttpAnswer:
    """Sends `raw` to 127.0.0.1:`port` and reads one response. The bytes are sent from a second thread while
    the answer is read, so that an early answer (a 413 before the whole body is sent) is read before the
    server's close can reset the connection; a send the server cut short is not an error."""
    started = time.monotonic()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return HttpAnswer(None, b"", {}, time.monotonic() - started, error=f"cannot connect: {e}")

    def send() -> None:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # the server answered and closed early, or hung up: what it said is read below

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                http.client.IncompleteRead) as e:
            return HttpAnswer(None, b"", {}, time.monotonic() - started, closed=True, error=type(e).__name__)
        except (socket.timeout, TimeoutError):
            return HttpAnswer(None, b"", {}, time.monotonic() - started, error=f"no answer within {timeout} s")
        except http.client.HTTPException as e:
            return HttpAnswer(None, b"", {}, time.monotonic() - started, error=f"unreadable answer: {e!r}")
        return HttpAnswer(response.status, body, {k.lower(): v for k, v in response.getheaders()},
                          time.monotonic() - started)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a send blocked on a server that stopped reading
        except OSError:
            pass
        sock.close()
        sender.join(5)


def wait_closed(sock: socket.socket, until: float) -> tuple[bool, bytes]:
    """Reads from `sock` until the server closes it or `until` (monotonic) passes; returns (closed, data)."""
    data = b""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False, data
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False, data
        except (ConnectionResetError, OSError):
            return True, data
        if not piece:
            return True, data
        data += piece


def parse_response(data: bytes) -> tuple[int | None, bytes]:
    """The status and body of a raw HTTP response (None when `data` holds none)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n", data)
    if not match:
        return None, data
    _, _, body = data.partition(b"\r\n\r\n")
    return int(match.group(1)), body


# ---- the server process -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_status_kb(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """Resets the process's VmHWM to its current RSS (Linux: `echo 5 > /proc/<pid>/clear_refs`)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclass
class ServerProcess:
    """`python -m serving.server` with `flags`, its ports read from its log."""

    flags: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    grpc_port: int = 0
    rest_port: int = 0
    crashes: list[str] = field(default_factory=list)

    def start(self, timeout: float = 180.0) -> None:
        self.rest_port = free_port()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        log.write(f"\n==== starting {' '.join(self.flags)}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--port=0", f"--rest_api_port={self.rest_port}", *self.flags],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        offset = self.log_path.stat().st_size
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            grpc_match = re.search(r"Running gRPC ModelServer at [^\s]*:(\d+)", text)
            rest_match = re.search(r"Exporting HTTP/REST API at:[^\s]*:(\d+)", text)
            if grpc_match and rest_match:
                self.grpc_port, self.rest_port = int(grpc_match.group(1)), int(rest_match.group(1))
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} at start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start within {timeout} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kb(self) -> int:
        return read_status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return read_status_kb(self.pid, "VmHWM")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")

    def stop(self, kill: bool = False) -> None:
        """Stops the server: SIGTERM (it finishes in-flight requests), or SIGKILL when `kill`."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
