"""Unit and property tests for worker/codecs/sniff.py (sans-IO protocol sniffer).

Real ClientHellos come from Python's ssl module driven over MemoryBIOs: do_handshake() writes the
ClientHello to the outgoing BIO and raises SSLWantReadError waiting for the server.
"""

from __future__ import annotations

import functools
import ssl
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.worker.codecs import sniff as sniff_mod
from baton.worker.codecs.sniff import H2_PREFACE, MAX_SNIFF, Sniffed, sniff

PROPERTY = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

RAW = Sniffed("raw_buffer", (), None)
HTTP1 = Sniffed("raw_buffer", ("http/1.1",), None)
H2C = Sniffed("raw_buffer", ("h2c",), None)


# -- ClientHello generation ------------------------------------------------------------------

@functools.cache
def client_hello(version: str, sni: str | None, alpn: tuple[str, ...] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False        # SNI is still sent when server_hostname is given
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("handshake did not stop after the ClientHello")


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        ctype, ver, length = struct.unpack_from("!BHH", data, pos)
        out.append((ctype, ver, data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return out


def handshake_bytes(hello: bytes) -> tuple[int, bytes]:
    recs = records(hello)
    assert all(ctype == 22 for ctype, _, _ in recs)
    return recs[0][1], b"".join(frag for _, _, frag in recs)


def reframe(hello: bytes, cuts: list[int]) -> bytes:
    """Re-frame the handshake bytes of `hello` into records split at the given offsets."""
    ver, hs = handshake_bytes(hello)
    bounds = [0, *cuts, len(hs)]
    return b"".join(struct.pack("!BHH", 22, ver, b - a) + hs[a:b]
                    for a, b in zip(bounds, bounds[1:]))


CASES = [
    # (tls version, sni, alpn, expected)
    ("1.2", "example.com", ("h2", "http/1.1"), Sniffed("tls", ("h2", "http/1.1"), "example.com")),
    ("1.2", None, None, Sniffed("tls", (), None)),
    ("1.2", "Api.Example.COM", None, Sniffed("tls", (), "api.example.com")),
    ("1.3", "example.com", ("h2", "http/1.1"), Sniffed("tls", ("h2", "http/1.1"), "example.com")),
    ("1.3", None, ("http/1.1",), Sniffed("tls", ("http/1.1",), None)),
    ("1.3", "svc.internal", None, Sniffed("tls", (), "svc.internal")),
    ("1.3", None, None, Sniffed("tls", (), None)),
]
CASE_IDS = [f"tls{v}-{s}-{'+'.join(a or ())}" for v, s, a, _ in CASES]


def all_hellos() -> list[bytes]:
    return [client_hello(v, s, a) for v, s, a, _ in CASES]


def hs_offsets(hello: bytes) -> dict[str, int]:
    """Offsets (in the single-record hello) of the ClientHello's length fields."""
    recs = records(hello)
    assert len(recs) == 1
    off = {"record_len": 3, "hs_len": 6}
    p = 9 + 2 + 32
    off["session_id_len"] = p
    p += 1 + hello[p]
    off["ciphers_len"] = p
    p += 2 + (hello[p] << 8 | hello[p + 1])
    off["compression_len"] = p
    p += 1 + hello[p]
    off["extensions_len"] = p
    p += 2
    while p < len(hello):
        ext_type, ext_len = struct.unpack_from("!HH", hello, p)
        if ext_type == 0:
            off["sni_ext_len"] = p + 2
            off["sni_list_len"] = p + 4
            off["sni_name_len"] = p + 7
        elif ext_type == 16:
            off["alpn_ext_len"] = p + 2
            off["alpn_list_len"] = p + 4
            off["alpn_name_len"] = p + 6
        p += 4 + ext_len
    assert p == len(hello)
    return off


# -- TLS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,sni,alpn,expected", CASES, ids=CASE_IDS)
def test_real_client_hello(version, sni, alpn, expected):
    hello = client_hello(version, sni, alpn)
    assert sniff(hello) == expected
    # Extra bytes after the ClientHello (e.g. early data) do not change the verdict.
    assert sniff(hello + b"\x17\x03\x03\x00\x05hello") == expected


@pytest.mark.parametrize("version,sni,alpn,expected", CASES, ids=CASE_IDS)
def test_client_hello_byte_by_byte(version, sni, alpn, expected):
    hello = client_hello(version, sni, alpn)
    for k in range(len(hello)):
        assert sniff(hello[:k]) is None, k
    assert sniff(hello) == expected
    assert sniff(bytearray(hello)) == expected
    assert sniff(memoryview(hello)) == expected


@pytest.mark.parametrize("version,sni,alpn,expected", CASES, ids=CASE_IDS)
def test_client_hello_split_across_records(version, sni, alpn, expected):
    hello = client_hello(version, sni, alpn)
    _, hs = handshake_bytes(hello)
    for cuts in ([len(hs) // 2], [2], [4], [len(hs) - 1], [1, 3, 40, len(hs) - 5]):
        split = reframe(hello, cuts)
        assert len(records(split)) == len(cuts) + 1
        for k in range(len(split)):
            assert sniff(split[:k]) is None, (cuts, k)
        assert sniff(split) == expected, cuts


def test_client_hello_one_byte_records():
    hello = client_hello("1.3", "example.com", ("h2",))
    _, hs = handshake_bytes(hello)
    split = reframe(hello, list(range(1, len(hs))))
    assert sniff(split[:-1]) is None
    assert sniff(split) == Sniffed("tls", ("h2",), "example.com")


def test_record_version_0x0301_and_0x0304():
    hello = client_hello("1.3", "a.example", None)
    for ver in (b"\x03\x01", b"\x03\x02", b"\x03\x03", b"\x03\x04"):
        assert sniff(b"\x16" + ver + hello[3:]) == Sniffed("tls", (), "a.example")
    for ver in (b"\x03\x00", b"\x03\x05", b"\x02\x00", b"\x04\x01"):
        assert sniff(b"\x16" + ver + hello[3:]) == RAW


def test_tls_header_rejections_are_immediate():
    assert sniff(b"\x16") is None
    assert sniff(b"\x16\x03") is None
    assert sniff(b"\x16\x03\x01\x00") is None
    assert sniff(b"\x16\x02") == RAW
    assert sniff(b"\x16\x03\x07") == RAW
    assert sniff(b"\x16\x03\x01\x00\x00") == RAW             # zero-length record
    assert sniff(b"\x16\x03\x01\x40\x01") == RAW             # > 2^14
    assert sniff(b"\x16\x03\x01\x00\x10\x02") == RAW         # ServerHello, not ClientHello
    assert sniff(b"\x15\x03\x01\x00\x02\x02\x28") == RAW     # alert record
    # ClientHello longer than MAX_SNIFF can ever hold: give up without waiting.
    assert sniff(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00") == RAW
    # Second record of a split ClientHello is not a handshake record.
    assert sniff(b"\x16\x03\x01\x00\x04\x01\x00\x00\x30" + b"\x17\x03\x03\x00\x01") == RAW


@pytest.mark.parametrize("field,delta", [
    (f, d) for f in ("record_len", "hs_len", "session_id_len", "ciphers_len", "compression_len",
                     "extensions_len", "sni_ext_len", "sni_list_len", "sni_name_len",
                     "alpn_ext_len", "alpn_list_len", "alpn_name_len")
    for d in (-1, 1, 0x80, "zero", "max")])
def test_corrupted_length_fields(field, delta):
    hello = client_hello("1.3", "example.com", ("h2", "http/1.1"))
    off = hs_offsets(hello)[field]
    width = 3 if field == "hs_len" else 1 if field in (
        "session_id_len", "compression_len", "alpn_name_len") else 2
    value = int.from_bytes(hello[off:off + width], "big")
    if delta == "zero":
        value = 0
    elif delta == "max":
        value = (1 << (8 * width)) - 1
    else:
        value = (value + delta) % (1 << (8 * width))
    bad = hello[:off] + value.to_bytes(width, "big") + hello[off + width:]
    if field == "record_len" and delta in (1, 0x80):
        # A longer record still holds the whole ClientHello first: decided without waiting
        # for the record's remaining bytes (as BoringSSL would).
        assert sniff(bad) == sniff(hello)
        return
    assert sniff(bad) in (None, RAW)
    for k in range(len(bad)):
        assert sniff(bad[:k]) in (None, RAW)


def test_every_single_byte_corruption_is_safe():
    hello = client_hello("1.2", "example.com", ("h2", "http/1.1"))
    for i in range(len(hello)):
        for value in (0x00, 0xFF, hello[i] ^ 0x01):
            result = sniff(hello[:i] + bytes([value]) + hello[i + 1:])
            assert_valid(result)


def test_truncated_hello_inside_complete_record():
    # Shrink the record and handshake lengths together: framing is fine, body is cut short.
    hello = client_hello("1.3", "example.com", ("h2",))
    _, hs = handshake_bytes(hello)
    for cut in range(1, len(hs) - 4):
        body = hs[4:4 + cut]
        msg = b"\x01" + len(body).to_bytes(3, "big") + body
        result = sniff(struct.pack("!BHH", 22, 0x0301, len(msg)) + msg)
        # A prefix may end exactly after compression methods (no extensions): that is valid.
        assert result in (RAW, Sniffed("tls", (), None)), cut


def test_sni_rules():
    def hello_with_ext(ext: bytes) -> bytes:
        body = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
                + len(ext).to_bytes(2, "big") + ext)
        msg = b"\x01" + len(body).to_bytes(3, "big") + body
        return struct.pack("!BHH", 22, 0x0301, len(msg)) + msg

    def sni_ext(*entries: tuple[int, bytes]) -> bytes:
        lst = b"".join(bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in entries)
        data = len(lst).to_bytes(2, "big") + lst
        return b"\x00\x00" + len(data).to_bytes(2, "big") + data

    assert sniff(hello_with_ext(sni_ext((0, b"WWW.Example.Org")))) == \
        Sniffed("tls", (), "www.example.org")
    assert sniff(hello_with_ext(sni_ext((1, b"other"), (0, b"h.example")))) == \
        Sniffed("tls", (), "h.example")
    assert sniff(hello_with_ext(sni_ext((1, b"other")))) == Sniffed("tls", (), None)
    assert sniff(hello_with_ext(sni_ext((0, b"")))) == RAW
    assert sniff(hello_with_ext(sni_ext((0, b"a\x00b")))) == RAW
    assert sniff(hello_with_ext(sni_ext((0, "é.example".encode())))) == RAW
    assert sniff(hello_with_ext(b"\x00\x00\x00\x00")) == RAW                # empty SNI ext
    assert sniff(hello_with_ext(sni_ext((0, b"a")) * 2)) == RAW            # duplicate ext
    # No extensions at all (TLS 1.0-1.2 style) is a valid ClientHello.
    body = b"\x03\x01" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    assert sniff(struct.pack("!BHH", 22, 0x0301, len(msg)) + msg) == Sniffed("tls", (), None)


# -- HTTP/1 and h2c ---------------------------------------------------------------------------

HTTP_SAMPLES = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"POST /submit?a=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"GET http://example.com:8080/path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\n\r\n",
    b"HEAD /x HTTP/1.0\r\n\r\n",
    b"PROPFIND /dav HTTP/1.1\r\n\r\n",
    b"PRI /not-the-preface HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", HTTP_SAMPLES)
def test_http1_request_line(request_bytes):
    line_end = request_bytes.index(b"\r\n") + 2
    for k in range(line_end):
        assert sniff(request_bytes[:k]) is None, k
    for k in range(line_end, len(request_bytes) + 1):
        assert sniff(request_bytes[:k]) == HTTP1, k


@pytest.mark.parametrize("data", [
    b"GET / HTTP/2.0\r\n",
    b"GET / HTTP/1.1\n",                  # bare LF
    b"GET / HTTP/1.x\r\n",
    b"GET  / HTTP/1.1\r\n",               # empty target
    b"GET /a b HTTP/1.1\r\n",
    b"GET /\r\n",                         # HTTP/0.9
    b"GET\t/ HTTP/1.1\r\n",
    b"get / http/1.1\r\n",
    b"A" * 21 + b" / HTTP/1.1\r\n",       # method token too long
    b"G(T / HTTP/1.1\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
])
def test_http1_rejections(data):
    assert sniff(data) == RAW


def test_http1_long_method_ok_up_to_20():
    assert sniff(b"A" * 20 + b" / HTTP/1.1\r\n") == HTTP1
    assert sniff(b"A" * 20) is None
    assert sniff(b"A" * 21) == RAW


def test_h2c_preface():
    for k in range(1, len(H2_PREFACE)):
        assert sniff(H2_PREFACE[:k]) is None, k
    assert sniff(H2_PREFACE) == H2C
    assert sniff(H2_PREFACE + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00") == H2C
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nXX") == RAW
    assert sniff(b"PRI * HTTP/1.1\r\n") == HTTP1


# -- other traffic and limits ------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"\x00", b"\x80\x2e\x01\x03\x01",     # SSLv2-compatible hello is not supported
    b"\xff\xff\xff", b" GET / HTTP/1.1\r\n", b"\r\nGET / HTTP/1.1\r\n",
    b"\x05\x01\x00",                      # SOCKS5
    b"\x00\x00\x00\x1c\x00\x00\x00\x00",  # length-prefixed binary protocol
])
def test_binary_is_raw_at_once(data):
    assert sniff(data) == RAW
    assert sniff(data[:1]) == RAW


def test_empty_is_undecided():
    assert sniff(b"") is None


def test_undecided_at_max_sniff_is_raw():
    long_target = b"GET /" + b"a" * (MAX_SNIFF - 5)
    assert sniff(long_target[:-1]) is None
    assert sniff(long_target) == RAW
    assert sniff(long_target + b" HTTP/1.1\r\n") == RAW
    # A 3 KB ClientHello that fits in MAX_SNIFF as one record but not as 1-byte records.
    padding = b"\x00\x15" + (3000).to_bytes(2, "big") + b"\x00" * 3000
    body = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(padding).to_bytes(2, "big") + padding)
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    whole = struct.pack("!BHH", 22, 0x0301, len(msg)) + msg
    assert sniff(whole) == Sniffed("tls", (), None)
    split = reframe(whole, list(range(1, len(msg))))
    assert len(split) > MAX_SNIFF
    assert sniff(split[:MAX_SNIFF - 1]) is None
    assert sniff(split[:MAX_SNIFF]) == RAW
    assert sniff(split) == RAW


def test_no_io_imports():
    src = open(sniff_mod.__file__).read()
    for mod in ("socket", "asyncio", "uvloop", "selectors"):
        assert f"import {mod}" not in src


# -- properties --------------------------------------------------------------------------------

def assert_valid(result):
    if result is None:
        return
    assert isinstance(result, Sniffed)
    assert result.transport in ("tls", "raw_buffer")
    assert isinstance(result.protocols, tuple)
    assert all(isinstance(p, str) and p for p in result.protocols)
    if result.transport == "raw_buffer":
        assert result.protocols in ((), ("http/1.1",), ("h2c",), ("dubbo",), ("bolt",))
        assert result.server_name is None
    elif result.server_name is not None:
        assert isinstance(result.server_name, str)
        assert result.server_name == result.server_name.lower()


def samples() -> list[bytes]:
    out = list(all_hellos()) + HTTP_SAMPLES + [H2_PREFACE]
    hello = client_hello("1.3", "example.com", ("h2", "http/1.1"))
    _, hs = handshake_bytes(hello)
    out.append(reframe(hello, [len(hs) // 3, 2 * len(hs) // 3]))
    return out


@PROPERTY
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    result = sniff(data)
    assert_valid(result)
    # Monotonic over prefixes of arbitrary data as well.
    for k in range(len(data)):
        early = sniff(data[:k])
        if early is not None:
            assert early == result
            break


@PROPERTY
@given(st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03", H2_PREFACE[:5], b"GET /"]),
       st.binary(max_size=300))
def test_plausible_starts_never_raise(head, tail):
    assert_valid(sniff(head + tail))


@PROPERTY
@given(st.data())
def test_mutated_client_hello_never_raises(data):
    hello = data.draw(st.sampled_from(all_hellos()))
    i = data.draw(st.integers(0, len(hello) - 1))
    j = data.draw(st.integers(i, min(len(hello), i + 8)))
    patch = data.draw(st.binary(max_size=8))
    mutated = hello[:i] + patch + hello[j:]
    result = sniff(mutated)
    assert_valid(result)
    for k in (len(mutated) // 2, len(mutated) - 1):
        early = sniff(mutated[:k])
        if early is not None:
            assert early == result


@PROPERTY
@given(st.sampled_from(samples()), st.binary(max_size=200))
def test_prefix_monotonicity(sample, more):
    result = sniff(sample)
    assert result is not None
    assert sniff(sample + more) == result
    # ...and every prefix is either undecided or already the final answer.
    step = max(1, len(sample) // 40)
    for k in range(0, len(sample), step):
        early = sniff(sample[:k])
        assert early is None or early == result
