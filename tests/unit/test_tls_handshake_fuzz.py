"""Replays what tests/fuzz/fuzz_tls_handshake.py found (tests/fuzz/corpus/tls_handshake/),
a short seeded run of that fuzzer, and the bad handshakes of issue 12 point 6 one by one, each
a refusal with its ssl.* counter (worker/tls/accept.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from baton.worker.tls.accept import HandshakeRefused, ServerAccept

from .test_tls_fuzz_regressions import load_fuzzer

FUZZ = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_tls_handshake.py"
CORPUS = FUZZ.parent / "corpus" / "tls_handshake"
fuzzer = load_fuzzer(FUZZ)


@pytest.fixture(scope="module")
def setup():
    return fuzzer.Setup()


@pytest.fixture(scope="module")
def seeds(setup):
    return fuzzer.make_seeds(setup)


def test_corpus_cases(setup):
    """Every input the fuzzer ever failed on (none so far: the directory may be absent)."""
    for case in sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []:
        found = json.loads(case.read_text())
        fuzzer.check(setup, found["server"], [bytes.fromhex(p) for p in found["pieces"]])


def test_short_fuzz_run(setup):
    result = fuzzer.run(1000, seed=7, seconds=60, setup=setup)
    assert result["failed"] is None, result
    outcomes = result["outcomes"]
    assert outcomes.get("live done", 0) > 0 and outcomes.get("refused:connection_error", 0) > 0


def refusal(setup, data: bytes, server: str = "plain", eof: bool = True) -> HandshakeRefused:
    accept = ServerAccept(setup.servers[server])
    with pytest.raises(HandshakeRefused) as caught:
        accept.receive(data, eof)
    assert str(caught.value)
    return caught.value


def client_hello(seeds) -> bytes:
    """A TLS 1.3 ClientHello recorded from Python's ssl (the fuzzer's first seed)."""
    server, data = seeds[0]
    assert server == "plain" and data[0] == 22 and data[5] == 1
    return data


def test_a_truncated_client_hello_then_eof_is_a_connection_error(setup, seeds):
    hello = client_hello(seeds)
    for cut in (1, 5, 9, 43, len(hello) - 1):
        exc = refusal(setup, hello[:cut])
        assert exc.counter == "connection_error" and "closed during the handshake" in str(exc)


def test_a_client_hello_with_a_wrong_inner_length_is_refused_with_an_alert(setup, seeds):
    hello = bytearray(client_hello(seeds))
    hello[8] ^= 0x40                                 # the handshake message's length, too short
    exc = refusal(setup, bytes(hello), eof=False)
    assert exc.counter == "connection_error"
    assert exc.data[:1] == b"\x15"                   # OpenSSL's fatal alert goes to the client


def test_garbled_records_are_refused_with_an_alert(setup, seeds):
    hello = client_hello(seeds)
    garbled = hello[:5] + bytes(random.Random(1).randbytes(len(hello) - 5))
    exc = refusal(setup, garbled, eof=False)
    assert exc.counter == "connection_error" and exc.data[:1] == b"\x15"
    exc = refusal(setup, b"\x17\x03\x03\x00\x10" + bytes(16), eof=False)   # data before a hello
    assert exc.counter == "connection_error"


def test_an_oversized_record_is_refused(setup):
    exc = refusal(setup, b"\x16\x03\x01\xff\xff" + bytes(100), eof=False)
    assert exc.counter == "connection_error" and exc.data[:1] == b"\x15"
