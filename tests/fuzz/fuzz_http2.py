"""Fuzz the HTTP/2 codecs (worker/codecs/http2.py), both sides.

    .venv/bin/python tests/fuzz/fuzz_http2.py --count 1000000 [--seed N] [--jobs 2] [--h2lib]

The server side is the codec the proxy uses (http2.Http2ServerCodec: h2server.py's lean one);
--h2lib fuzzes the h2-based server codec (http2.H2LibServerCodec) instead.

Each input is one connection's worth of bytes from a peer, made structure-aware: a sequence
of HTTP/2 frames of every type with random flags, stream ids, lengths and payloads, header
blocks HPACK-encoded from a pool of good and bad fields (pseudo-headers missing, repeated or
misplaced, upper case, connection-specific, CR/LF, bad content-length, huge, cookies, ...),
then sometimes mutated (bytes flipped, cut, spliced) and always fed in random-sized chunks.
A driver answers what the codec reports (responses, resets, trailers, consumed(), GOAWAY) so
the sending paths run under the same input.

What must hold: receive() never raises, the codec never records an internal error, every
event is one of the codec events, and a connection-level ProtocolError leaves `closed` set.
A failing input is written to tests/fuzz/corpus/http2/<sha1>.bin (first byte: "s" server or
"c" client; chunks separated by CHUNK_SEP) and replayed by tests/unit/test_http2_codec.py.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import random
import struct
import sys
import time
import traceback

from hpack import Encoder

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if os.path.dirname(ROOT) not in sys.path:       # the repo root is the package `baton`
    sys.path.insert(0, os.path.dirname(ROOT))

from baton.worker.codecs.events import (Body, GoAway, HeadersRefused,  # noqa: E402
                                        ProtocolError, RequestHead, ResponseHead, StreamReset,
                                        Trailers, WindowOpen)
from baton.worker.codecs.http2 import (H2_PREFACE,  # noqa: E402
                                       Http2ClientCodec, Http2ServerCodec, StreamUnavailable)
from baton.tests.reference.h2lib_server import H2LibServerCodec  # noqa: E402
from baton.worker.codecs.message import Headers, Request, Response  # noqa: E402

CORPUS = os.path.join(HERE, "corpus", "http2")
CHUNK_SEP = b"\x00CHUNK\x00"
SERVER_CODECS = (Http2ServerCodec, H2LibServerCodec)
server_codec = Http2ServerCodec      # which one new_codec() makes (--h2lib: H2LibServerCodec)
EVENTS = (RequestHead, ResponseHead, Body, Trailers, StreamReset, GoAway, WindowOpen,
          ProtocolError, HeadersRefused)

# -- the system under test, driven the same way by the fuzzer and by the regression test --------


def new_codec(side: bytes):
    """A codec as the fuzzer starts it: small limits so that limits are reached."""
    if side == b"s":
        codec = server_codec(max_header_bytes=2048, max_headers=30, max_concurrent_streams=8,
                             initial_stream_window=70_000, initial_connection_window=100_000)
        codec.initiate()
    else:
        codec = Http2ClientCodec(max_header_bytes=2048, initial_stream_window=70_000,
                                 initial_connection_window=100_000)
        codec.initiate()
        for i in range(3):     # streams 1, 3, 5 are ours; 5 still sending its body
            codec.send_head(Request("POST" if i == 2 else "GET", f"/{i}", "a.example",
                                    Headers([("x-i", str(i))])), i != 2)
    codec.data_to_send()
    return codec


def drive(codec, events: list, step: int) -> list:
    """Check `events` and act on them as a proxy would; the problems found."""
    problems = []
    server = isinstance(codec, SERVER_CODECS)
    for event in events:
        if not isinstance(event, EVENTS):
            problems.append(f"unexpected event {event!r}")
            continue
        sid = event.stream_id if not isinstance(event, GoAway) else 0
        if isinstance(event, ProtocolError) and sid == 0 and not codec.closed:
            problems.append("connection-level ProtocolError but the codec is not closed")
        if server and isinstance(event, RequestHead):
            kind = sid % 7
            if kind == 0:
                codec.reset(sid)
            elif kind == 1:
                codec.send_head(sid, Response(100, Headers()), False)
                codec.send_head(sid, Response(200, Headers([("connection", "x"), ("x", "y")])),
                                False)
                codec.send_body(sid, b"b" * 150_000, False)
                codec.send_trailers(sid, Headers([("grpc-status", "0")]))
            else:
                codec.send_head(sid, Response(200, Headers()), kind == 2)
                codec.send_body(sid, b"ok" * kind, True)
        elif server and isinstance(event, ProtocolError) and sid:
            codec.send_head(sid, Response(event.status, Headers()), True)
        elif isinstance(event, Body):
            codec.consumed(sid, len(event.data))
            if not server and sid == 5:
                codec.send_body(5, b"u" * 80_000, event.end_stream)
        elif not server and isinstance(event, ResponseHead) and sid == 3:
            codec.send_trailers(3, Headers([("x-t", "1")]))
        codec.pending(sid)
    if step == 5:
        codec.goaway()
    if not server and step == 3:
        try:
            codec.send_head(Request("GET", "/late", "a", Headers()), True)
        except StreamUnavailable:
            pass
    codec.data_to_send()
    return problems


def replay(data: bytes) -> list:
    """Feed one recorded input to a fresh codec; the problems found (empty: it passed)."""
    side, chunks = data[:1], data[1:].split(CHUNK_SEP)
    codec = new_codec(side)
    problems = []
    for step, chunk in enumerate(chunks):
        try:
            events = codec.receive(chunk)
            problems += drive(codec, events, step)
        except Exception:
            problems.append(traceback.format_exc())
            break
        if codec.internal_error is not None:
            err = codec.internal_error
            problems.append("".join(traceback.format_exception(type(err), err,
                                                               err.__traceback__)))
            break
    return problems


# -- input generation ----------------------------------------------------------------------------

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

REQUEST_PSEUDO = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"),
                  (b":path", b"/p")]
ODD_FIELDS = [
    (b":method", b"POST"), (b":method", b"CONNECT"), (b":method", b"HEAD"),
    (b":method", b"G T"), (b":path", b""), (b":path", b"*"), (b":path", b"/a\r\nb"),
    (b":path", b"x"), (b":scheme", b"https"), (b":scheme", b"1x"), (b":authority", b""),
    (b":authority", b"a b"), (b":status", b"200"), (b":status", b"1"), (b":status", b"101"),
    (b":status", b"100"), (b":status", b"abc"), (b":protocol", b"websocket"), (b":", b""),
    (b"host", b"h.example"), (b"Host", b"upper"), (b"content-length", b"0"),
    (b"content-length", b"5"), (b"content-length", b"-1"), (b"content-length", b"1e3"),
    (b"content-length", b"99999999999999999999999"), (b"connection", b"close"),
    (b"te", b"trailers"), (b"te", b"gzip"), (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"), (b"keep-alive", b"1"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
    (b"expect", b"100-continue"), (b"x-cr", b"a\rb"), (b"x-nul", b"\x00"), (b"x-sp", b" a"),
    (b"", b"empty-name"), (b"x y", b"1"), (b"x-\xff", b"1"), (b"x-v", b"\xff\xfe"),
    (b"x-big", b"v" * 2100), (b"set-cookie", b"s=1"), (b"grpc-status", b"0"),
]


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    # 24-bit length | 8-bit type | 8-bit flags | R + 31-bit stream id | payload (RFC 9113 4.1)
    length = len(payload)
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, kind, flags,
                       stream_id & 0xFFFFFFFF) + payload


class _Peer:
    """Stream ids the fuzzed peer uses: mostly a coherent conversation (new streams in
    increasing order, frames on streams that exist), sometimes anything."""

    def __init__(self, side: bytes):
        self.side = side
        self.next_id = 1
        self.open = [1, 3, 5] if side == b"c" else []

    def new_stream(self, rng: random.Random) -> int:
        if self.side == b"c":        # responses come on our streams 1, 3, 5
            return self.existing(rng)
        if rng.random() < 0.05:
            return self.any(rng)
        stream_id = self.next_id
        self.next_id += rng.choice((2, 2, 2, 4))
        self.open.append(stream_id)
        return stream_id

    def existing(self, rng: random.Random) -> int:
        if self.open and rng.random() < 0.9:
            return rng.choice(self.open)
        return self.any(rng)

    def any(self, rng: random.Random) -> int:
        roll = rng.random()
        if roll < 0.7:
            return rng.choice((1, 3, 5, 7, 9, 11, 13) if self.side == b"s" else (1, 3, 5, 7, 2))
        if roll < 0.85:
            return 0
        return rng.choice((2, 4, 2**31 - 1, 2**31 + 1, rng.getrandbits(32)))


def _fields(rng: random.Random, side: bytes) -> list:
    if side == b"s":
        base = [f for f in REQUEST_PSEUDO if rng.random() > 0.02]
    else:
        base = [(b":status", rng.choice((b"200", b"204", b"404", b"503", b"100")))]
        if rng.random() < 0.05:
            base = []
    extra = [rng.choice(ODD_FIELDS) for _ in range(rng.choice((0, 0, 0, 0, 1, 1, 2, 8)))]
    fields = base + [(b"x-n", str(rng.randrange(1000)).encode())] * rng.randrange(3) + extra
    if rng.random() < 0.2:
        rng.shuffle(fields)
    if rng.random() < 0.02:
        fields += [(b"x-many", b"1")] * 40
    return fields


def _header_frames(rng: random.Random, encoder: Encoder, stream_id: int, fields: list,
                   end_stream: bool) -> list:
    block = encoder.encode(fields, huffman=rng.random() < 0.2)
    flags = 0x1 if end_stream else 0
    out = []
    if rng.random() < 0.2 and len(block) > 2:
        cut = rng.randrange(1, len(block))
        out.append(_frame(HEADERS, flags, stream_id, block[:cut]))
        out.append(_frame(CONTINUATION, 0x4, stream_id if rng.random() < 0.9 else 3,
                          block[cut:]))
    else:
        payload = block
        if rng.random() < 0.1:        # PADDED and/or PRIORITY
            pad = rng.randrange(0, 20)
            payload = bytes([pad]) + block + b"\x00" * pad
            flags |= 0x8
        if rng.random() < 0.1:
            payload = struct.pack(">LB", rng.choice((stream_id, 0, 1)), 16) + payload \
                if not flags & 0x8 else payload
            flags |= 0x20 if not flags & 0x8 else 0
        out.append(_frame(HEADERS, flags | 0x4, stream_id, payload))
    return out


def _random_frame(rng: random.Random, encoder: Encoder, peer: _Peer) -> list:
    side = peer.side
    kind = rng.choices(range(11), weights=(30, 25, 2, 4, 4, 1, 3, 2, 6, 1, 2))[0]
    if kind == HEADERS:
        trailers = peer.open and rng.random() < 0.3
        sid = peer.existing(rng) if trailers else peer.new_stream(rng)
        fields = _fields(rng, side) if not trailers or rng.random() < 0.2 else \
            [(b"x-trailer", b"1")] + [rng.choice(ODD_FIELDS)] * (rng.random() < 0.3)
        return _header_frames(rng, encoder, sid, fields, trailers or rng.random() < 0.4)
    sid = peer.existing(rng)
    if kind == DATA:
        data = rng.randbytes(rng.choice((0, 1, 10, 500, 16384, rng.randrange(20000))))
        flags = 0x1 if rng.random() < 0.4 else 0
        if rng.random() < 0.1:
            pad = rng.randrange(256)
            data = bytes([pad]) + data + b"\x00" * min(pad, 300)
            flags |= 0x8
        return [_frame(DATA, flags, sid, data)]
    if kind == CONTINUATION:
        return [_frame(CONTINUATION, rng.choice((0, 4)), sid,
                       encoder.encode(_fields(rng, side), huffman=False))]
    if kind == PRIORITY:
        dep = rng.choice((0, sid, 1, 3))
        return [_frame(PRIORITY, 0, sid, struct.pack(">LB", dep, rng.randrange(256))
                       [:rng.choice((5,) * 19 + (4, 6))])]
    if kind == RST_STREAM:
        return [_frame(RST_STREAM, 0, sid, struct.pack(">L", rng.choice((0, 1, 2, 7, 8, 99)))
                       [:rng.choice((4,) * 19 + (3,))])]
    if kind == SETTINGS:
        if rng.random() < 0.3:
            return [_frame(SETTINGS, 0x1, 0, b"" if rng.random() < 0.9 else b"\x00")]
        body = b"".join(struct.pack(">HL", rng.choice((1, 2, 3, 4, 5, 6, 8, 9, 0x99)),
                                    rng.choice((0, 1, 100, 16383, 16384, 65535, 2**24,
                                                2**31 - 1, 2**31, 2**32 - 1)))
                        for _ in range(rng.randrange(4)))
        return [_frame(SETTINGS, 0, rng.choice((0,) * 19 + (1,)), body)]
    if kind == PUSH_PROMISE:
        block = encoder.encode(_fields(rng, b"s"), huffman=False)
        return [_frame(PUSH_PROMISE, 0x4, sid, struct.pack(">L", 2) + block)]
    if kind == PING:
        return [_frame(PING, rng.choice((0, 0, 1)), rng.choice((0,) * 19 + (1,)),
                       rng.randbytes(rng.choice((8,) * 19 + (7, 9))))]
    if kind == GOAWAY:
        return [_frame(GOAWAY, 0, rng.choice((0,) * 19 + (1,)),
                       struct.pack(">LL", rng.choice((0, 1, 3, 2**31 - 1)),
                                   rng.choice((0, 0, 1, 2, 11))) + rng.randbytes(
                                       rng.randrange(5)))]
    if kind == WINDOW_UPDATE:
        return [_frame(WINDOW_UPDATE, 0, rng.choice((0, sid)),
                       struct.pack(">L", rng.choice((0, 1, 1000, 65535, 2**31 - 1, 2**31)))
                       [:rng.choice((4,) * 19 + (3,))])]
    return [_frame(0x10 + rng.randrange(0xEF), rng.randrange(256), sid,   # unknown type
                   rng.randbytes(rng.randrange(20)))]


def _mutate(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randrange(1, 4)):
        if not data:
            return
        roll = rng.random()
        pos = rng.randrange(len(data))
        if roll < 0.5:
            data[pos] ^= 1 << rng.randrange(8)
        elif roll < 0.7:
            data[pos] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif roll < 0.85:
            del data[pos:pos + rng.randrange(1, 10)]
        else:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 10))


def generate(rng: random.Random) -> bytes:
    """One recorded input: side byte + chunks."""
    side = b"s" if rng.random() < 0.6 else b"c"
    roll = rng.random()
    if roll < 0.05:         # raw random bytes, sometimes after a good preface
        head = H2_PREFACE if side == b"s" and rng.random() < 0.7 else b""
        stream = bytearray(head + rng.randbytes(rng.randrange(1, 200)))
    else:
        encoder = Encoder()
        peer = _Peer(side)
        parts = []
        if side == b"s":
            parts.append(H2_PREFACE if rng.random() < 0.98 else H2_PREFACE[:-3] + b"XYZ")
        parts.append(_frame(SETTINGS, 0, 0, b""))
        if side == b"s" and rng.random() < 0.95:     # a conversation starts with a request
            parts += _header_frames(rng, encoder, peer.new_stream(rng), _fields(rng, side),
                                    rng.random() < 0.5)
        for _ in range(rng.choice((1, 2, 3, 5, 8, 15, 30))):
            parts += _random_frame(rng, encoder, peer)
        stream = bytearray(b"".join(parts))
        if roll < 0.2:
            _mutate(rng, stream)
    chunks = []
    pos = 0
    while pos < len(stream):
        size = rng.choice((1, 7, 9, 100, 1000, len(stream)))
        chunks.append(bytes(stream[pos:pos + size]))
        pos += size
    return side + CHUNK_SEP.join(chunks)


# -- the run -------------------------------------------------------------------------------------

def _save(data: bytes) -> str:
    os.makedirs(CORPUS, exist_ok=True)
    path = os.path.join(CORPUS, hashlib.sha1(data).hexdigest()[:16] + ".bin")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _worker(args) -> tuple:
    global server_codec
    seed, count, h2lib = args
    if h2lib:
        server_codec = H2LibServerCodec
    rng = random.Random(seed)
    failures = []
    for _ in range(count):
        data = generate(rng)
        problems = replay(data)
        if problems:
            failures.append((_save(data), problems[0].strip().splitlines()[-1]))
            if len(failures) >= 50:
                break
    return count, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--replay", nargs="*", help="replay corpus files instead of fuzzing")
    parser.add_argument("--h2lib", action="store_true",
                        help="fuzz the h2-based server codec instead of the lean one")
    args = parser.parse_args()
    if args.replay is not None:
        paths = args.replay or [os.path.join(CORPUS, n) for n in sorted(os.listdir(CORPUS))]
        bad = 0
        for path in paths:
            with open(path, "rb") as f:
                problems = replay(f.read())
            print(f"{'FAIL' if problems else 'ok  '} {path}")
            for problem in problems:
                print(problem)
            bad += bool(problems)
        return 1 if bad else 0
    started = time.monotonic()
    batch = 5_000
    tasks = []
    left = args.count
    seed = args.seed * 1_000_003
    while left > 0:
        tasks.append((seed, min(batch, left), args.h2lib))
        seed += 1
        left -= batch
    done = 0
    failures = []
    with multiprocessing.Pool(args.jobs) as pool:
        for count, found in pool.imap_unordered(_worker, tasks):
            done += count
            failures += found
            if done % 100_000 < batch:
                rate = done / (time.monotonic() - started)
                print(f"{done} inputs, {len(failures)} failing, {rate:.0f}/s", flush=True)
    elapsed = time.monotonic() - started
    print(f"{done} inputs in {elapsed:.0f}s ({done / elapsed:.0f}/s), "
          f"{len(failures)} failing")
    for path, line in failures[:20]:
        print(f"  {path}: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
