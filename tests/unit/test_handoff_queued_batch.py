"""A batch given up while its frame is still queued in the channel (worker/migration.py,
Channel.withdraw).

The sender sends a batch's descriptors without copies (dup=False): the frame holds their
numbers and the kernel reads them only when the frame is sent. If the receiver does not read
(stopped, starved), the frame waits in the channel's queue; at the deadline the batch is taken
back and its connections serve on here. One of them closes, a new socket gets its number, and
the frame, sent later, would hand the new socket (another client's connection) to the
receiver. The receiver here is a socket nobody reads until the test drains it: deterministic,
no sleeping.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from baton.supervisor.handoff import protocol
from baton.supervisor.handoff.channel import Channel, recv_with_fds
from baton.supervisor.handoff.framing import FrameDecoder, close_fds
from baton.worker import batch_ownership, migration

from .test_handoff_claim import _Moving
from .test_handoff_records import ALL_V2, _Listener, _Worker, datagram_kind  # noqa: F401


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


async def _stalled_channel():
    """A channel whose peer reads nothing yet, its socket buffers full: what is sent now
    stays queued in the channel. Returns (channel, the peer's socket)."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    channel = Channel(ours, lambda *a: None, name="stalled")
    channel.send({"type": "data", "id": 1, "data": b"x" * 200_000})   # fills the buffers
    assert channel._out, "the filler left at once: the peer's buffer is too large"
    return channel, theirs


async def _drain(channel, theirs) -> list[tuple[dict, list[int]]]:
    """The peer reads everything the channel sends, as a receiver that wakes up would."""
    decoder, frames = FrameDecoder(), []
    for _ in range(10_000):             # bounded: ~50 reads of 4 KiB suffice
        try:
            data, fds = recv_with_fds(theirs)
        except BlockingIOError:
            if not channel._out:
                break
            await asyncio.sleep(0)      # the channel's writer runs
            continue
        frames.extend(decoder.feed(data, fds))
    return frames


@pytest.mark.parametrize("version", [3, 2])
def test_a_queued_batch_taken_back_never_sends_a_reused_descriptor(datagram_kind, monkeypatch,
                                                                   version):
    async def the_deadline_passes_now(future, deadline):
        return future.done()
    monkeypatch.setattr(batch_ownership, "_answer_within", the_deadline_passes_now)
    monkeypatch.setattr(protocol, "MIGRATE_TIMEOUT", 0.05)   # version 2: the answer's timeout

    async def run():
        channel, theirs = await _stalled_channel()
        client, client_peer = socket.socketpair()
        conn = _Moving(5, _Listener(), {}, [client.fileno()])
        peer = migration.Peer(channel, version, {**ALL_V2, "datagram": [1]})
        moved, kept = await migration._move(_Worker(), [conn], [peer], False)
        assert (moved, kept, conn.resumed) == (0, {conn}, True)
        # The connection serves on here, then closes; a new client's socket takes its number.
        number = client.fileno()
        client.close()
        other, other_peer = socket.socketpair()
        if other.fileno() != number:
            other, other_peer = other_peer, other
        assert other.fileno() == number
        frames = await _drain(channel, theirs)
        received = [fd for msg, fds in frames for fd in fds]
        leaked = [fd for fd in received if _inode(fd) == _inode(number)]
        batches = [msg for msg, _ in frames if msg.get("type") == "connections"]
        close_fds(received)
        for sock in (theirs, client_peer, other, other_peer):
            sock.close()
        channel.close()
        return leaked, batches
    leaked, batches = asyncio.run(run())
    assert leaked == []                 # another client's socket never reaches the receiver
    assert batches == []                # the batch was withdrawn: the receiver never saw it


def test_withdraw_takes_back_only_a_frame_not_yet_started():
    async def run():
        channel, theirs = await _stalled_channel()
        r, w = os.pipe()
        future, queued = channel.request_frame({"type": "ping"}, [r], timeout=1.0)
        started = channel._out[0]
        assert channel.withdraw(started) is False       # the filler: its first bytes left
        assert channel.withdraw(queued) is True and queued not in channel._out
        assert channel.withdraw(queued) is False        # once
        future.cancel()
        sent_future, sent = channel.request_frame({"type": "ping"}, [r], timeout=1.0)
        frames = await _drain(channel, theirs)
        assert channel.withdraw(sent) is False          # left: its descriptor is the peer's
        assert [m["type"] for m, _ in frames] == ["data", "ping"]
        sent_future.cancel()
        for _, fds in frames:
            close_fds(fds)
        for fd in (r, w):
            os.close(fd)
        theirs.close()
        channel.close()
    asyncio.run(run())
