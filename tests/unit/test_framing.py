"""Unit and property tests for supervisor/handoff/framing.py (sans-IO frames with fds).

Descriptors are real os.pipe() read ends. "Closed" is checked two ways: os.fstat on the number
raises EBADF, and (immune to fd-number reuse) writing to the pipe's write end raises EPIPE once
every copy of the read end is gone.
"""

from __future__ import annotations

import errno
import os
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.supervisor.handoff import framing
from baton.supervisor.handoff.framing import (HEADER, MAX_FDS, MAX_FRAME, FrameDecoder,
                                              FrameError, encode)
from tests.fd_accounting import collector_paused

PROPERTY = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def descriptors_held_steady():
    """These tests compare /proc/self/fd before and after: no finalizer may run in between."""
    with collector_paused():
        yield


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class Pipes:
    """n pipes; `.readers` are handed to the decoder, `.writers` stay with the test."""

    def __init__(self, n: int):
        self.readers: list[int] = []
        self.writers: list[int] = []
        for _ in range(n):
            r, w = os.pipe()
            os.set_inheritable(r, True)      # so that the decoder's CLOEXEC is observable
            self.readers.append(r)
            self.writers.append(w)

    def reader_closed(self, i: int) -> bool:
        try:
            os.write(self.writers[i], b"x")
        except BrokenPipeError:
            return True
        return False

    def close_writers(self) -> None:
        for w in self.writers:
            os.close(w)


def assert_closed(fd: int) -> None:
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def assert_open(fd: int) -> None:
    os.fstat(fd)


def close_all(fds) -> None:
    for fd in fds:
        os.close(fd)


def raw_frame(body: bytes, nfds: int = 0, length: int | None = None, reserved: int = 0) -> bytes:
    return HEADER.pack(len(body) if length is None else length, nfds, reserved) + body


# -- round trips -----------------------------------------------------------------------------

def test_single_frame_round_trip():
    msg = {"type": "hello", "n": 1, "blob": b"\x00\xff", "nested": {"a": [1, 2, None]}}
    dec = FrameDecoder()
    assert dec.feed(encode(msg)) == [(msg, [])]
    assert dec.pending_bytes == 0
    assert dec.error is None


def test_header_layout():
    data = encode({"type": "t"}, nfds=3)
    length, nfds, reserved = struct.unpack("!IHH", data[:8])
    assert (length, nfds, reserved) == (len(data) - 8, 3, 0)
    assert msgpack.unpackb(data[8:]) == {"type": "t"}


def test_many_frames_in_one_feed():
    msgs = [{"type": "m", "i": i, "pad": "x" * i} for i in range(50)]
    dec = FrameDecoder()
    frames = dec.feed(b"".join(encode(m) for m in msgs))
    assert [m for m, _ in frames] == msgs
    assert all(fds == [] for _, fds in frames)
    assert dec.pending_bytes == 0


def test_frame_split_byte_by_byte():
    msgs = [{"type": "a", "v": 1}, {"type": "b", "v": "two" * 30}, {"type": "c"}]
    data = b"".join(encode(m) for m in msgs)
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        frames = dec.feed(data[i:i + 1])
        got.extend(m for m, _ in frames)
        assert dec.pending_bytes == len(data[:i + 1]) - sum(len(encode(m)) for m in got)
    assert got == msgs


def test_frames_with_fds_map_by_nfds_and_are_cloexec():
    pipes = Pipes(4)
    try:
        assert all(os.get_inheritable(r) for r in pipes.readers)
        data = (encode({"type": "a"}, 2) + encode({"type": "b"}) + encode({"type": "c"}, 1)
                + encode({"type": "d"}, 1))
        dec = FrameDecoder()
        frames = dec.feed(data, pipes.readers)
        assert [m["type"] for m, _ in frames] == ["a", "b", "c", "d"]
        assert [fds for _, fds in frames] == [pipes.readers[0:2], [], [pipes.readers[2]],
                                              [pipes.readers[3]]]
        for r in pipes.readers:
            assert os.get_inheritable(r) is False
            assert_open(r)
        # The descriptors are the real pipes: data written at the far end comes out of them.
        for i, w in enumerate(pipes.writers):
            os.write(w, b"%d" % i)
        for i, r in enumerate(pipes.readers):
            assert os.read(r, 10) == b"%d" % i
    finally:
        close_all(pipes.readers)
        pipes.close_writers()


def test_fds_arriving_before_their_frame_bytes():
    """The kernel delivers descriptors with the first bytes of their frame; the decoder must
    hold them in its FIFO while the rest of the frame trickles in."""
    pipes = Pipes(2)
    try:
        data = encode({"type": "x", "body": "y" * 100}, 2)
        dec = FrameDecoder()
        assert dec.feed(data[:3], pipes.readers) == []
        assert dec.feed(data[3:50]) == []
        [(msg, fds)] = dec.feed(data[50:])
        assert msg["type"] == "x" and fds == pipes.readers
    finally:
        close_all(pipes.readers)
        pipes.close_writers()


def test_extra_fds_wait_for_a_later_frame_and_close_releases_them():
    pipes = Pipes(3)
    try:
        dec = FrameDecoder()
        # Three descriptors arrive but the first frame declares only one.
        [(_, fds)] = dec.feed(encode({"type": "a"}, 1), pipes.readers)
        assert fds == [pipes.readers[0]]
        [(_, fds2)] = dec.feed(encode({"type": "b"}, 1))
        assert fds2 == [pipes.readers[1]]
        dec.close()
        assert pipes.reader_closed(2)
        assert not pipes.reader_closed(0) and not pipes.reader_closed(1)
        assert dec.error is None          # the stream ended cleanly on a frame boundary
    finally:
        close_all(pipes.readers[:2])
        pipes.close_writers()


# -- Hypothesis: round trips under arbitrary chunking ------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
messages = st.builds(lambda t, rest: {**rest, "type": t}, st.text(max_size=10),
                     st.dictionaries(st.text(max_size=6), values, max_size=4))


def split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points + [len(data)]:
        chunks.append(data[start:p])
        start = p
    return chunks


@PROPERTY
@given(msgs=st.lists(messages, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_property_round_trip_any_chunking(msgs, cuts):
    data = b"".join(encode(m) for m in msgs)
    dec = FrameDecoder()
    out = []
    for chunk in split(data, cuts):
        out.extend(dec.feed(chunk))
    assert [m for m, _ in out] == msgs
    assert all(fds == [] for _, fds in out)
    assert dec.pending_bytes == 0 and dec.error is None


@PROPERTY
@given(spec=st.lists(st.tuples(messages, st.integers(min_value=0, max_value=3)), max_size=6),
       cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_property_fds_follow_their_frames_under_any_chunking(spec, cuts):
    before = open_fds()
    total = sum(n for _, n in spec)
    pipes = Pipes(total)
    try:
        data = b"".join(encode(m, n) for m, n in spec)
        # The kernel hands over a frame's descriptors with the chunk holding its first byte.
        offsets, pos = [], 0
        for m, n in spec:
            offsets.append((pos, n))
            pos += len(encode(m, n))
        dec = FrameDecoder()
        out, start, fd_iter = [], 0, iter(pipes.readers)
        for chunk in split(data, cuts):
            end = start + len(chunk)
            fds = [next(fd_iter) for off, n in offsets if start <= off < end for _ in range(n)]
            if not chunk and fds:
                raise AssertionError("unreachable: an empty chunk holds no frame start")
            out.extend(dec.feed(chunk, fds))
            start = end
        assert [m for m, _ in out] == [m for m, _ in spec]
        expected, i = [], 0
        for _, n in spec:
            expected.append(pipes.readers[i:i + n])
            i += n
        assert [fds for _, fds in out] == expected
        assert all(not os.get_inheritable(r) for r in pipes.readers)
    finally:
        close_all(pipes.readers)
        pipes.close_writers()
    assert open_fds() == before


# -- Hypothesis: garbage never escapes as anything but FrameError -------------------------------

garbage = st.one_of(
    st.binary(max_size=64),
    st.builds(encode, messages),                       # valid frames mixed into the garbage
    # A plausible header (reserved 0, small length/nfds) over random or half-valid bodies,
    # so the msgpack and "map with a type" checks are exercised, not just the header checks.
    st.builds(lambda n, nfds, body: raw_frame(body, nfds, length=n),
              st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=3),
              st.binary(max_size=48)),
    st.builds(lambda obj: raw_frame(msgpack.packb(obj)), values),
    st.builds(lambda obj, tail: raw_frame(msgpack.packb(obj) + tail),
              st.dictionaries(st.text(max_size=5), values, max_size=3), st.binary(max_size=4)),
)


@PROPERTY
@given(chunks=st.lists(garbage, min_size=1, max_size=4),
       nfds=st.lists(st.integers(min_value=0, max_value=2), min_size=4, max_size=4))
def test_property_garbage_yields_frames_or_frame_error(chunks, nfds):
    before = open_fds()
    pipes = Pipes(sum(nfds[:len(chunks)]))
    fd_iter = iter(pipes.readers)
    dec = FrameDecoder()
    delivered: list[int] = []
    fed: list[int] = []
    try:
        for chunk, n in zip(chunks, nfds):
            fds = [next(fd_iter) for _ in range(n)]
            fed.extend(fds)
            try:
                frames = dec.feed(chunk, fds)
            except FrameError:
                assert dec.error is not None
                break
            for msg, fds in frames:
                assert isinstance(msg, dict) and isinstance(msg["type"], str)
                delivered.extend(fds)
        dec.close()
        # Whatever was fed but not handed out in a frame has been released by the decoder.
        for i, r in enumerate(pipes.readers):
            assert pipes.reader_closed(i) == (r in fed and r not in delivered)
    finally:
        close_all(delivered)
        close_all(r for r in pipes.readers if r not in fed)
        pipes.close_writers()
    assert open_fds() == before


# -- Hypothesis: truncated frames --------------------------------------------------------------

@PROPERTY
@given(msg=messages, nfds=st.integers(min_value=0, max_value=3), data=st.data())
def test_property_truncated_frame_waits_then_completes_or_close_releases(msg, nfds, data):
    before = open_fds()
    encoded = encode(msg, nfds)
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded) - 1), label="cut")
    complete = data.draw(st.booleans(), label="complete")
    pipes = Pipes(nfds)
    dec = FrameDecoder()
    got: list[int] = []
    try:
        assert dec.feed(encoded[:cut], pipes.readers) == []
        assert dec.error is None and dec.pending_bytes == cut
        assert not any(pipes.reader_closed(i) for i in range(nfds))
        if complete:
            [(out, got)] = dec.feed(encoded[cut:])
            assert out == msg and got == pipes.readers
            dec.close()
            assert dec.error is None
            assert not any(pipes.reader_closed(i) for i in range(nfds))
        else:
            dec.close()
            assert dec.error is not None and "inside a frame" in dec.error
            assert all(pipes.reader_closed(i) for i in range(nfds))
            for r in pipes.readers:
                assert_closed(r)
    finally:
        close_all(got)
        pipes.close_writers()
    assert open_fds() == before


# -- error paths: oversize, missing fds, poisoning ---------------------------------------------

def test_oversized_length_fails_at_once_without_the_body():
    pipes = Pipes(2)
    try:
        dec = FrameDecoder()
        with pytest.raises(FrameError, match="too large"):
            dec.feed(HEADER.pack(MAX_FRAME + 1, 0, 0), pipes.readers)
        assert dec.error is not None
        for r in pipes.readers:
            assert_closed(r)
        assert pipes.reader_closed(0) and pipes.reader_closed(1)
    finally:
        pipes.close_writers()


def test_oversized_length_in_split_header():
    dec = FrameDecoder()
    header = HEADER.pack(0xFFFFFFFF, 0, 0)
    assert dec.feed(header[:5]) == []
    with pytest.raises(FrameError):
        dec.feed(header[5:])


def test_frame_at_max_size_is_accepted(monkeypatch):
    monkeypatch.setattr(framing, "MAX_FRAME", 64)
    msg = {"type": "t", "s": "x" * 40}
    body_len = len(msgpack.packb(msg, use_bin_type=True))
    msg["s"] = "x" * (40 + 64 - body_len)
    data = encode(msg)
    assert len(data) == HEADER.size + 64
    assert FrameDecoder().feed(data) == [(msg, [])]
    with pytest.raises(ValueError):
        encode({**msg, "s": msg["s"] + "x"})
    with pytest.raises(FrameError, match="too large"):
        FrameDecoder().feed(HEADER.pack(65, 0, 0))


def test_too_many_declared_fds_fails_at_header():
    with pytest.raises(FrameError):
        FrameDecoder().feed(HEADER.pack(10, MAX_FDS + 1, 0))


def test_reserved_bits_fail():
    with pytest.raises(FrameError, match="reserved"):
        FrameDecoder().feed(raw_frame(msgpack.packb({"type": "x"}), reserved=1))


def test_nfds_more_than_received_fails_and_closes_every_fd():
    pipes = Pipes(3)
    try:
        dec = FrameDecoder()
        # A valid frame with one fd, then one that declares 3 while only 2 remain.
        data = encode({"type": "ok"}, 1) + encode({"type": "greedy"}, 3)
        with pytest.raises(FrameError, match="descriptors"):
            dec.feed(data, pipes.readers)
        # Even the fd of the good frame decoded in the same feed() is released, since that
        # frame is never returned to the caller.
        for i, r in enumerate(pipes.readers):
            assert_closed(r)
            assert pipes.reader_closed(i)
    finally:
        pipes.close_writers()


def test_nfds_more_than_received_across_feeds():
    pipes = Pipes(2)
    try:
        dec = FrameDecoder()
        data = encode({"type": "greedy", "pad": "p" * 20}, 2)
        assert dec.feed(data[:10], pipes.readers[:1]) == []
        with pytest.raises(FrameError):
            dec.feed(data[10:])
        assert pipes.reader_closed(0)
        # Poisoned now: later descriptors are closed on arrival.
        with pytest.raises(FrameError):
            dec.feed(b"", pipes.readers[1:])
        assert pipes.reader_closed(1)
    finally:
        pipes.close_writers()


@pytest.mark.parametrize("body", [
    msgpack.packb([1, 2, 3]),
    msgpack.packb("type"),
    msgpack.packb(None),
    msgpack.packb({"kind": "x"}),
    msgpack.packb({"type": 7}),
    msgpack.packb({"type": b"bytes"}),
    msgpack.packb({"type": "x"}) + b"\x00",            # trailing data inside the frame
    b"\xc1",                                           # never-used msgpack byte
    b"\x92\x01",                                       # truncated array
    b"\xa2\xff\xfe",                                   # invalid utf-8 str
    b"",                                               # empty body
], ids=["list", "str", "nil", "no-type", "int-type", "bin-type", "trailing", "c1",
        "truncated", "bad-utf8", "empty"])
def test_bad_bodies_are_frame_errors_and_release_the_frames_fds(body):
    pipes = Pipes(1)
    try:
        with pytest.raises(FrameError):
            FrameDecoder().feed(raw_frame(body, nfds=1), pipes.readers)
        assert pipes.reader_closed(0)
    finally:
        pipes.close_writers()


def test_poisoned_decoder_rejects_everything_and_closes_fds():
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(b"\xff" * 8)
    reason = dec.error
    assert reason
    pipes = Pipes(2)
    try:
        with pytest.raises(FrameError, match="reserved|too large"):
            dec.feed(encode({"type": "valid"}, 2), pipes.readers)
        assert dec.error == reason
        for i, r in enumerate(pipes.readers):
            assert_closed(r)
            assert pipes.reader_closed(i)
        with pytest.raises(FrameError):
            dec.feed(b"")
    finally:
        pipes.close_writers()


def test_error_after_good_frames_in_same_feed_closes_their_fds_and_held_fds():
    pipes = Pipes(3)
    try:
        dec = FrameDecoder()
        data = encode({"type": "a"}, 1) + encode({"type": "b"}, 1) + raw_frame(b"\xc1")
        with pytest.raises(FrameError):
            dec.feed(data, pipes.readers)
        assert all(pipes.reader_closed(i) for i in range(3))
        assert dec.pending_bytes == 0
    finally:
        pipes.close_writers()


def test_no_fd_leak_over_error_paths():
    before = open_fds()
    for data, n in [(HEADER.pack(MAX_FRAME + 1, 0, 0), 2), (encode({"type": "x"}, 3), 2),
                    (raw_frame(b"\x90", 1), 1), (raw_frame(b"\x80", 2), 2), (b"\x00" * 6 + b"\x01\x00", 1)]:
        pipes = Pipes(n)
        with pytest.raises(FrameError):
            FrameDecoder().feed(data, pipes.readers)
        pipes.close_writers()
    assert open_fds() == before


def test_close_mid_frame_records_error_and_closes():
    pipes = Pipes(1)
    try:
        dec = FrameDecoder()
        dec.feed(encode({"type": "x"}, 1)[:4], pipes.readers)
        dec.close()
        assert "inside a frame" in dec.error
        assert pipes.reader_closed(0)
        assert dec.pending_bytes == 0
    finally:
        pipes.close_writers()


# -- encode() --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, [], ["type"], "type", b"type", 1, {}, {"kind": "x"}],
                         ids=repr)
def test_encode_rejects_non_frames(bad):
    with pytest.raises(ValueError):
        encode(bad)


@pytest.mark.parametrize("nfds", [-1, MAX_FDS + 1, 65535])
def test_encode_rejects_bad_nfds(nfds):
    with pytest.raises(ValueError):
        encode({"type": "x"}, nfds)


def test_encode_accepts_max_fds():
    length, nfds, _ = HEADER.unpack_from(encode({"type": "x"}, MAX_FDS))
    assert nfds == MAX_FDS


@pytest.mark.parametrize("msg", [{"type": 1}, {"type": None}, {"type": b"bin"}], ids=repr)
def test_encode_rejects_what_the_decoder_rejects(msg):
    try:
        data = encode(msg)
    except ValueError:
        return
    FrameDecoder().feed(data)           # raises FrameError today
