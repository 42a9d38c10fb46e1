"""A recording HTTP/1.1 upstream for the differential tests, run as its own process.

    python recorder.py NAME [NAME ...]

Listens on one free port per NAME (all in this process, sharing state) and prints
"ready PORT [PORT ...]" once listening. Every request is answered (keep-alive) with a JSON
body that describes exactly what arrived, so a test can compare what Envoy and Baton sent:

    {"upstream": NAME, "method": ..., "path": <raw target>, "version": "HTTP/1.1",
     "headers": [[lower-case name, value], ...] in arrival order,
     "framing": "content-length" | "chunked" | "none",
     "body_length": N, "body_sha256": hex, "attempt": <requests seen so far with this x-test-key>}

Request headers steer the answer, so one upstream serves every case:

    x-test-key: K              state (attempt counts) is kept per K; Envoy and Baton runs use
                               different keys so they never disturb each other
    x-test-fail-first: N       the failure below applies only to the first N requests with key K
                               (without it, it applies to every request)
    x-test-fail-on: NAME       ... and only on the upstream called NAME (the others answer)
    x-test-status: S           failure = answer status S (the body is still the record)
    x-test-reset: 1 | close    failure = abort the connection without answering: "1" sends a
                               TCP RST (SO_LINGER 0), "close" a FIN
    x-test-delay-ms: MS        failure = wait MS before answering (combines with status)
    x-test-response-header: n:v    add a response header (repeatable; always applied)
    x-test-body-size: N        answer N bytes of a fixed pattern instead of the record
    x-test-bad-response: NAME  answer one of BAD_RESPONSES (a response a proxy must refuse, or
                               one at the edge of its limits) instead of the record
    x-test-events: N,MS        answer as a stream of server-sent events: the head at once, then
                               "data: i" for i in 0..N-1, one every MS ms, chunked (a long
                               response that a reload must not cut)

GET /__count/K sent straight to a port (not through a proxy) answers {"count": n}: how many
requests with key K arrived, including ones that were reset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import sys
import urllib.parse

PATTERN = bytes(range(256)) * 4096         # 1 MiB, sliced for x-test-body-size


def _head_of(size: int) -> bytes:
    """A 200 response head of exactly `size` bytes (status line to the empty line), padded
    with 1000-byte headers and one last header that takes the rest."""
    start, end = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n", b"\r\n"
    lines, left = [], size - len(start) - len(end)
    while left > 1000 + len(b"x-pad-000: \r\n") + len(b"x-last: \r\n"):
        line = b"x-pad-%03d: %s\r\n" % (len(lines), b"p" * 1000)
        lines.append(line)
        left -= len(line)
    lines.append(b"x-last: " + b"l" * (left - len(b"x-last: \r\n")) + b"\r\n")
    return start + b"".join(lines) + end


# Upstream answers that are not HTTP, or that pass or exceed a proxy's limits (Envoy 1.40: a
# response head of at most 80 KiB and 100 headers).
BAD_RESPONSES = {
    "status-line": b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok",
    "not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "headers-256k": b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"b" * (256 * 1024) + b"\r\n\r\nok",
    "headers-101": b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(100))
                   + b"content-length: 2\r\n\r\nok",
    "head-80k": _head_of(80 * 1024) + b"ok",
    "head-80k-plus-1": _head_of(80 * 1024 + 1) + b"ok",
}
ATTEMPTS: dict[str, int] = {}              # x-test-key -> requests seen


class BadRequest(Exception):
    pass


def parse_head(head: bytes):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(f"request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"header line {line!r}")
        headers.append([name.strip().lower(), value.strip(" \t")])
    return parts[0], parts[1], parts[2], headers


def first(headers, name):
    for n, v in headers:
        if n == name:
            return v
    return None


async def read_body(reader, writer, headers) -> tuple[str, bytes]:
    expect = (first(headers, "expect") or "").lower()
    te = (first(headers, "transfer-encoding") or "").lower()
    length = first(headers, "content-length")
    has_body = "chunked" in te or (length is not None and int(length) > 0)
    if expect == "100-continue" and has_body:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in te:
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailers
                    pass
                return "chunked", b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if length is not None:
        return "content-length", await reader.readexactly(int(length))
    return "none", b""


def reset(writer) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def stream_events(writer, count: int, interval: float) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    for i in range(count):
        await writer.drain()
        await asyncio.sleep(interval)
        event = b"data: %d\n\n" % i
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve(name: str, reader, writer) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method, target, version, headers = parse_head(head)
            if target.startswith("/__count/"):
                key = urllib.parse.unquote(target[len("/__count/"):])
                body = json.dumps({"count": ATTEMPTS.get(key, 0)}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                continue
            framing, body = await read_body(reader, writer, headers)
            events = first(headers, "x-test-events")
            if events is not None:
                count, interval = map(int, events.split(","))
                await stream_events(writer, count, interval / 1000)
                continue
            bad = first(headers, "x-test-bad-response")
            if bad is not None:
                writer.write(BAD_RESPONSES[bad])
                await writer.drain()
                continue
            key = first(headers, "x-test-key")
            attempt = 0
            if key is not None:
                attempt = ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
            fail_first = first(headers, "x-test-fail-first")
            failing = fail_first is None or attempt <= int(fail_first)
            failing = failing and first(headers, "x-test-fail-on") in (None, name)
            status = 200
            if failing:
                delay = first(headers, "x-test-delay-ms")
                if delay is not None:
                    await asyncio.sleep(int(delay) / 1000)
                how = first(headers, "x-test-reset")
                if how is not None:
                    if how == "close":
                        writer.close()
                    else:
                        reset(writer)
                    return
                if first(headers, "x-test-status") is not None:
                    status = int(first(headers, "x-test-status"))
            record = {"upstream": name, "method": method, "path": target, "version": version,
                      "headers": headers, "framing": framing, "body_length": len(body),
                      "body_sha256": hashlib.sha256(body).hexdigest(), "attempt": attempt}
            size = first(headers, "x-test-body-size")
            if size is not None:
                out_body = (PATTERN * (int(size) // len(PATTERN) + 1))[:int(size)]
                content_type = b"application/octet-stream"
            else:
                out_body = json.dumps(record).encode()
                content_type = b"application/json"
            close = ((first(headers, "connection") or "").lower() == "close"
                     or (version == "HTTP/1.0"
                         and (first(headers, "connection") or "").lower() != "keep-alive"))
            out = bytearray(b"HTTP/1.1 %d Recorded\r\n" % status)
            out += b"content-type: " + content_type + b"\r\n"
            out += b"x-recorder: " + name.encode() + b"\r\n"
            for n, v in headers:
                if n == "x-test-response-header":
                    hn, _, hv = v.partition(":")
                    out += f"{hn.strip()}: {hv.strip()}\r\n".encode("latin-1")
            if close:
                out += b"connection: close\r\n"
            out += b"content-length: %d\r\n\r\n" % len(out_body)
            if method != "HEAD":
                out += out_body
            writer.write(out)
            await writer.drain()
            if close:
                writer.close()
                return
    except (BadRequest, ValueError) as exc:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(str(exc)), str(exc).encode()))
        writer.close()
    except (ConnectionError, asyncio.IncompleteReadError):
        # The proxy gave up on this request (a timeout) or the client went away.
        writer.transport.abort()


async def main(names: list[str]) -> None:
    servers = []
    for name in names:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(4096)
        servers.append(await asyncio.start_server(
            lambda r, w, name=name: serve(name, r, w), sock=sock, limit=1 << 20))
    print("ready " + " ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        # The stdlib loop, as tests/integration/upstreams.py explains.
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
