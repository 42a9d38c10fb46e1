"""Fuzz the server side of Baton's TLS handshake: ClientHello parsing (worker/tls/hello.py)
and the accept path (worker/tls/accept.py: OpenSSL's handshake over memory BIOs, the
handover to the record layer, the SAN checks, the counters).

    .venv/bin/python tests/fuzz/fuzz_tls_handshake.py --count 1000000 [--seed N] [--seconds 3600]

Seeds are real client flights recorded from Python `ssl` clients against a TlsServer: TLS 1.3
and 1.2 ClientHellos with and without SNI, ALPN, a session ticket (PSK), a client certificate;
the first flight alone and followed by the client's later flights, which under a fresh
server's randoms are garbled records by construction; a TLS 1.2 hello offering only suites
the server refuses; an SSLv2-style hello. Each gets 0-4 mutations (byte flips, a handshake or
record length edit, truncation, garbage, duplicated or dropped records, a record split in two,
splicing with another seed) and is fed to a fresh ServerAccept in random-sized pieces, the
last with eof. The properties:

- hello_random() on every prefix returns None or 32 bytes, and raises nothing;
- ServerAccept.receive raises nothing but HandshakeRefused, whose counter is one of Envoy's
  listener ssl.* counters and whose bytes (an alert for the client) are bytes;
- once refused, the connection is over: the caller closes it (the fuzzer stops feeding);
- an input that completes the handshake yields a record layer (only unmutated or harmlessly
  mutated seeds can).

One input in ten is instead a live handshake: a real client whose flights are mutated on the
way 30% of the time, so the states after the ClientHello (Finished, the client's certificate
and its CertificateVerify, key shares) meet bad input too; those must end "done" or refused.

A failing input is written to tests/fuzz/corpus/tls_handshake/ and the script exits 1 (a live
input is saved as the pieces the server got; under new randoms its replay may differ);
tests/unit/test_tls_handshake_fuzz_regressions.py replays that directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import ssl
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent))

from baton.tests.tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf  # noqa: E402
from baton.worker.tls.accept import HandshakeRefused, ServerAccept  # noqa: E402
from baton.worker.tls.hello import CLIENT_HELLO, hello_random  # noqa: E402
from baton.worker.tls.records import split_records  # noqa: E402
from baton.worker.tls.server import SSL_COUNTERS, TlsServer  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "tls_handshake"
COUNTERS = frozenset(SSL_COUNTERS)


class Setup:
    """The servers the fuzz inputs go to (one plain, one mutual TLS) and their CA."""

    def __init__(self) -> None:
        self.ca = make_ca("ecdsa")
        pair = leaf(self.ca, "ecdsa")
        base = {"certificates": [{"chain": pair.cert_pem.decode(), "key": pair.key_pem.decode()}],
                "min_version": "TLSv1_2", "max_version": "TLSv1_3", "cipher_suites": None,
                "ecdh_curve": None, "alpn": ["h2", "http/1.1"], "trusted_ca": None,
                "san_matchers": [], "require_client_certificate": False, "handshake_timeout": 15.0,
                "session_ticket_keys": [bytes(range(80))]}
        self.servers = {
            "plain": TlsServer(base),
            "mtls": TlsServer({**base, "trusted_ca": self.ca.cert_pem.decode(),
                               "require_client_certificate": True,
                               "san_matchers": [{"type": "URI", "matcher": {
                                   "kind": "exact", "value": SPIFFE_ID,
                                   "ignore_case": False}}]}),
        }


def _client_context(setup: Setup, version=None, alpn=None, certificate=False, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=setup.ca.cert_pem.decode())
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if certificate:
        with tempfile.TemporaryDirectory() as tmp:
            ctx.load_cert_chain(*spiffe_leaf(setup.ca).write(tmp, "client"))
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def client_step(obj: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes | None:
    """One step of a client's handshake: the flight it sends, None if it gave up."""
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError:
        return None
    return outgoing.read()


def record_flights(setup: Setup, server: str, ctx, hostname, session=None):
    """Run one real handshake; (the client's flights, the session it ends with)."""
    accept = ServerAccept(setup.servers[server])
    out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(out[0], out[1], server_hostname=hostname, session=session)
    flights = []
    for _ in range(8):
        flight = client_step(obj, out[1])
        if flight is None:
            break
        if flight:
            flights.append(flight)
        try:
            out[0].write(accept.receive(flight, False))
        except HandshakeRefused as exc:
            out[0].write(exc.data)
            break
        if accept.layer is not None:
            out[0].write(accept.layer.send_data(b"x"))
            try:
                obj.read(10)                     # takes the TLS 1.3 tickets
            except ssl.SSLError:
                pass
            break
    return flights, obj.session if accept.layer is not None else None


def make_seeds(setup: Setup) -> list[tuple[str, bytes]]:
    """(server, client bytes) pairs from real clients."""
    seeds = []
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    for version in (tls13, tls12, None):
        for hostname in ("localhost", None):
            ctx = _client_context(setup, version, alpn=["h2", "http/1.1"])
            if hostname is None:
                ctx.check_hostname = False
            flights, session = record_flights(setup, "plain", ctx, hostname)
            seeds.append(("plain", flights[0]))
            seeds.append(("plain", b"".join(flights)))
            if session is not None:                     # a resumption's hello (ticket, PSK)
                again, _ = record_flights(setup, "plain", ctx, hostname, session)
                seeds.append(("plain", again[0]))
                seeds.append(("plain", b"".join(again)))
        ctx = _client_context(setup, version, certificate=True)
        flights, _ = record_flights(setup, "mtls", ctx, "localhost")
        seeds.append(("mtls", b"".join(flights)))
        flights, _ = record_flights(setup, "mtls", _client_context(setup, version), "localhost")
        seeds.append(("mtls", b"".join(flights)))
    # Suites the server does not offer (CBC): OpenSSL's handshake_failure.
    flights, _ = record_flights(setup, "plain", _client_context(setup, tls12, ciphers="ECDHE-ECDSA-AES128-SHA"),
                                "localhost")
    seeds.append(("plain", flights[0]))
    # An SSLv2-style ClientHello header (old scanners still send it) and plain HTTP.
    seeds.append(("plain", bytes.fromhex("802b0103010012000000100700c0030080010080060040040080020080")
                  + bytes(16)))
    seeds.append(("plain", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    return seeds


def mutate(rng: random.Random, data: bytes, seeds: list) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(5)):
        op = rng.randrange(9)
        records, rest = split_records(bytes(data))
        if op == 0 and data:                                        # byte flips
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and len(data) > 9:                             # a handshake length field
            at = rng.choice((3, 4, 6, 7, 8)) if data[0] == 22 else rng.randrange(len(data) - 2)
            data[at] = rng.choice((0, 1, 0x7f, 0x80, 0xff, data[at] + 1 & 0xff, data[at] - 1 & 0xff))
        elif op == 2 and data:                                      # truncation
            del data[rng.randrange(len(data)):]
        elif op == 3:                                               # garbage
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 40))
        elif op == 4 and records:                                   # duplicate a record
            r = rng.choice(records)
            at = rng.choice((0, len(data)))
            data[at:at] = r[2] + r[3]
        elif op == 5 and len(records) > 1:                          # drop a record
            del records[rng.randrange(len(records))]
            data = bytearray(b"".join(h + f for *_, h, f in records) + rest)
        elif op == 6 and records:                                   # split a record in two
            i = rng.randrange(len(records))
            content_type, version, header, fragment = records[i]
            if len(fragment) > 1:
                cut = rng.randrange(1, len(fragment))
                parts = [header[:3] + len(p).to_bytes(2, "big") + p for p in (fragment[:cut], fragment[cut:])]
                records[i] = (content_type, version, b"", b"".join(parts))
                data = bytearray(b"".join(h + f for *_, h, f in records) + rest)
        elif op == 7:                                               # splice with another seed
            other = rng.choice(seeds)[1]
            data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
        elif op == 8 and len(data) > 5:                             # record header edits
            field = rng.randrange(3)
            if field == 0:
                data[0] = rng.choice((20, 21, 23, 24, 0x80, 255))
            elif field == 1:
                data[1:3] = rng.choice((b"\x03\x00", b"\x03\x04", b"\x02\x00", b"\xfe\xfd"))
            else:
                data[3:5] = rng.choice((0, 1, 4, 2 ** 14, 2 ** 14 + 1, 65535)).to_bytes(2, "big")
    return bytes(data)


def pieces_of(rng: random.Random, data: bytes) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 3, 5, 64, 300, 4096, len(data)))
        pieces.append(data[pos:pos + size])
        pos += size
    return pieces or [b""]


def check(setup: Setup, server: str, pieces: list[bytes], eof: bool = True) -> str:
    """Feed one input; its outcome ("done", "refused:<counter>", "waiting"), or AssertionError."""
    stream = b"".join(pieces)
    for end in sorted({len(stream), *(len(p) for p in pieces)}):
        found = hello_random(stream[:end], CLIENT_HELLO)
        if found is not None and len(found) != 32:
            raise AssertionError(f"hello_random gave {len(found)} bytes")
    accept = ServerAccept(setup.servers[server])
    for i, piece in enumerate(pieces):
        last = eof and i == len(pieces) - 1
        try:
            wire = accept.receive(piece, last)
        except HandshakeRefused as exc:
            _check_refusal(exc)
            return f"refused:{exc.counter}"
        if not isinstance(wire, bytes):
            raise AssertionError("receive() returned something other than bytes")
        if accept.layer is not None:
            return "done"
    return "waiting"


def live(setup: Setup, rng: random.Random, seeds: list, contexts: list) -> tuple[str, str, list]:
    """A real client handshaking with a fresh ServerAccept, its flights mutated on the way
    (so the later handshake states see bad input too: a broken Finished, certificate or
    key share). (server, outcome, the pieces the server was given)."""
    server, ctx = rng.choice(contexts)
    accept = ServerAccept(setup.servers[server])
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(to_client, from_client, server_hostname="localhost")
    given = []
    for _ in range(8):
        flight = client_step(obj, from_client)
        if flight is None:
            return server, "client refused", given
        if rng.random() < 0.3:
            flight = mutate(rng, flight, seeds)
        for piece in pieces_of(rng, flight):
            given.append(piece)
            try:
                wire = accept.receive(piece, False)
            except HandshakeRefused as exc:
                _check_refusal(exc)
                return server, f"refused:{exc.counter}", given
            to_client.write(wire)
            if accept.layer is not None:
                return server, "done", given
    return server, "waiting", given


def _check_refusal(exc: HandshakeRefused) -> None:
    if exc.counter not in COUNTERS:
        raise AssertionError(f"refused with counter {exc.counter!r}, not an ssl.* counter")
    if not isinstance(exc.data, bytes) or not str(exc):
        raise AssertionError("a refusal without its reason or its bytes")


def save(server: str, pieces: list[bytes], error: str) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    blob = b"".join(pieces)
    path = CORPUS / f"{hashlib.sha256(blob).hexdigest()[:16]}.json"
    path.write_text(json.dumps({"server": server, "pieces": [p.hex() for p in pieces],
                                "error": error}, indent=1))
    return path


def run(count: int, seed: int, seconds: float, setup: Setup | None = None) -> dict:
    setup = setup or Setup()
    rng = random.Random(seed)
    seeds = make_seeds(setup)
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    contexts = [("plain", _client_context(setup, v, alpn=["h2"])) for v in (tls12, tls13)]
    contexts += [("mtls", _client_context(setup, v, certificate=True)) for v in (tls12, tls13)]
    outcomes: dict[str, int] = {}
    started = time.monotonic()
    done = 0
    for done in range(1, count + 1):
        pieces, server = [], "plain"
        try:
            if rng.random() < 0.1:
                server, outcome, pieces = live(setup, rng, seeds, contexts)
                outcome = "live " + outcome
            else:
                server, data = rng.choice(seeds)
                pieces = pieces_of(rng, mutate(rng, data, seeds) if rng.random() < 0.95 else data)
                outcome = check(setup, server, pieces, eof=rng.random() < 0.5)
        except Exception as exc:  # noqa: BLE001 - any other failure is a finding
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            path = save(server, pieces, error)
            return {"inputs": done, "failed": error, "saved": str(path), "outcomes": outcomes}
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if done % 50000 == 0:
            print(f"{done} inputs, {time.monotonic() - started:.0f} s: {outcomes}", flush=True)
        if time.monotonic() - started > seconds:
            break
    return {"inputs": done, "failed": None, "outcomes": outcomes,
            "seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop early after this long")
    args = parser.parse_args()
    result = run(args.count, args.seed, args.seconds)
    print(json.dumps(result, indent=1))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
