"""Tests for supervisor/handoff/channel.py over real AF_UNIX socketpairs.

Every async test runs on both the default asyncio loop and uvloop. Synchronisation is by
futures resolved from the channel callbacks; nothing sleeps. Any exception that reaches the
loop's exception handler (i.e. escapes a Channel callback) fails the test.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import tempfile
import threading

import pytest
import uvloop

from baton.supervisor.handoff import channel as channel_mod
from baton.supervisor.handoff.channel import (Channel, ChannelClosed, blocking_request,
                                              peer_credentials, recv_with_fds, socketpair)
from baton.supervisor.handoff.framing import FrameDecoder, encode
from tests.fd_accounting import collector_paused, open_fd_count


# -- harness ---------------------------------------------------------------------------------

@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(coro_fn, *args):
        errors = []
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.get_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
            result = runner.run(asyncio.wait_for(coro_fn(*args), 10))
        assert errors == [], f"exceptions escaped into the loop: {errors}"
        return result
    return run


class Peer:
    """A Channel plus a record of what its callbacks saw."""

    def __init__(self, sock, handler=None, name="peer"):
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.messages: list[tuple[dict, list[int]]] = []
        self.close_reasons: list[str] = []
        self.closed = self.loop.create_future()
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self.channel = Channel(sock, self._on_message, self._on_close, name=name)

    def _on_message(self, channel, msg, fds):
        assert channel is self.channel
        self.messages.append((msg, fds))
        for n, fut in self._waiters:
            if len(self.messages) >= n and not fut.done():
                fut.set_result(None)
        if self.handler is not None:
            self.handler(channel, msg, fds)

    def _on_close(self, channel, reason):
        assert channel is self.channel
        self.close_reasons.append(reason)
        if not self.closed.done():
            self.closed.set_result(reason)

    async def wait_messages(self, n: int) -> list[tuple[dict, list[int]]]:
        """Wait until `n` messages arrived, or fail if the channel closes first."""
        if len(self.messages) < n:
            fut = self.loop.create_future()
            self._waiters.append((n, fut))
            done, _ = await asyncio.wait({fut, self.closed}, return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                raise AssertionError(f"channel closed ({self.closed.result()}) after "
                                     f"{len(self.messages)} of {n} messages")
        return self.messages[:n]


def make_pipes(n):
    pipes = [os.pipe() for _ in range(n)]
    return [r for r, _ in pipes], [w for _, w in pipes]


def reader_closed_everywhere(w: int) -> bool:
    """True once no process holds the read end of the pipe (immune to fd-number reuse)."""
    try:
        os.write(w, b"?")
    except BrokenPipeError:
        return True
    return False


# -- request / reply -------------------------------------------------------------------------

def test_concurrent_requests_match_replies_in_any_order(run):
    n = 25

    async def main():
        a, b = socketpair()
        held = []

        def server_handler(channel, msg, fds):
            held.append(msg)
            if len(held) == n:                   # answer all at once, in reverse order
                for req in reversed(held):
                    channel.reply(req, {"type": "echo", "value": req["value"] * 2})

        server = Peer(b, server_handler, "server")
        client = Peer(a, name="client")
        futures = [client.channel.request({"type": "echo", "value": i}) for i in range(n)]
        replies = await asyncio.gather(*futures)
        assert [r["value"] for r in replies] == [2 * i for i in range(n)]
        assert len({req["id"] for req in held}) == n
        assert [r["reply_to"] for r in replies] == [req["id"] for req in held]
        # Replies are consumed by the request machinery, never shown to on_message.
        assert client.messages == []
        assert client.channel._pending == {}
        client.channel.close()
        assert await server.closed == "peer closed"
        assert client.close_reasons == ["closed"]

    run(main)


def test_unsolicited_messages_reach_on_message_and_stray_replies_are_dropped(run):
    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        r, w = os.pipe()
        server.channel.send({"type": "stray", "reply_to": 999}, [r])
        server.channel.send({"type": "event", "n": 1})
        os.close(r)
        [(msg, fds)] = await client.wait_messages(1)
        assert msg == {"type": "event", "n": 1} and fds == []
        # The stray reply's descriptor was closed by the client, not leaked.
        assert reader_closed_everywhere(w)
        os.close(w)
        client.channel.close()
        await server.closed

    run(main)


def test_handler_exception_answers_with_error_and_keeps_channel(run):
    async def main():
        a, b = socketpair()

        def server_handler(channel, msg, fds):
            if msg["type"] == "boom":
                raise RuntimeError("handler bug")
            channel.reply(msg, {"type": "ok"})

        server = Peer(b, server_handler, "server")
        client = Peer(a, name="client")
        reply = await client.channel.request({"type": "boom"})
        assert reply["type"] == "error"
        assert (await client.channel.request({"type": "fine"}))["type"] == "ok"
        assert not server.channel.closed and not client.channel.closed
        client.channel.close()
        await server.closed

    run(main)


def test_request_timeout_then_late_reply_is_ignored(run):
    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        with pytest.raises(asyncio.TimeoutError):
            await client.channel.request({"type": "slow"}, timeout=0.05)
        assert client.channel._pending == {}
        [(req, _)] = await server.wait_messages(1)
        server.channel.reply(req, {"type": "late"})
        server.channel.send({"type": "after"})
        await client.wait_messages(1)
        assert [m["type"] for m, _ in client.messages] == ["after"]
        assert not client.channel.closed
        client.channel.close()
        await server.closed

    run(main)


def test_failed_request_leaves_nothing_pending(run):
    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        with pytest.raises(ValueError):
            client.channel.request({"no": "type"})          # encode() refuses it
        leaked = dict(client.channel._pending)
        client.channel.close()
        await server.closed
        with pytest.raises(ChannelClosed):
            client.channel.request({"type": "after-close"})
        leaked.update(client.channel._pending)
        for fut in leaked.values():                         # keep the loop quiet either way
            if fut.done() and not fut.cancelled():
                fut.exception()
        assert leaked == {}

    run(main)


# -- descriptors -----------------------------------------------------------------------------

def test_fds_arrive_cloexec_and_in_order(run):
    async def main():
        before = open_fd_count()
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        readers, writers = make_pipes(3)
        client.channel.send({"type": "two"}, readers[:2])
        client.channel.send({"type": "none"})
        client.channel.send({"type": "one"}, readers[2:])
        msgs = await server.wait_messages(3)
        assert [m["type"] for m, _ in msgs] == ["two", "none", "one"]
        got = msgs[0][1] + msgs[2][1]
        assert [len(f) for _, f in msgs] == [2, 0, 1]
        for i, (fd, w) in enumerate(zip(got, writers)):
            assert os.get_inheritable(fd) is False
            os.write(w, b"pipe%d" % i)
            assert os.read(fd, 16) == b"pipe%d" % i
        for fd in got + readers:
            os.close(fd)
        assert all(reader_closed_everywhere(w) for w in writers)
        for w in writers:
            os.close(w)
        client.channel.close()
        await server.closed
        assert open_fd_count() == before

    with collector_paused():
        run(main)


def test_fds_with_a_request_and_in_a_reply(run):
    """fds ride on requests; a reply's fds are closed by the requester (request() returns the
    message only), so they must not leak."""
    async def main():
        a, b = socketpair()
        readers, writers = make_pipes(2)

        def server_handler(channel, msg, fds):
            assert len(fds) == 1
            os.write(writers[0], b"req")
            assert os.read(fds[0], 8) == b"req"
            os.close(fds[0])
            channel.reply(msg, {"type": "ok"}, [readers[1]])

        server = Peer(b, server_handler, "server")
        client = Peer(a, name="client")
        assert (await client.channel.request({"type": "take"}, [readers[0]]))["type"] == "ok"
        for r in readers:
            os.close(r)
        assert all(reader_closed_everywhere(w) for w in writers)
        for w in writers:
            os.close(w)
        client.channel.close()
        await server.closed

    run(main)


def test_truncated_ancillary_data_closes_channel_without_leaking(run, monkeypatch):
    monkeypatch.setattr(channel_mod, "ANCDATA_SIZE", socket.CMSG_SPACE(4))   # room for 1 fd

    async def main():
        a, b = socketpair()
        client = Peer(a, name="client")
        readers, writers = make_pipes(3)
        b.sendmsg([encode({"type": "x"}, 3)],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *readers))])
        for r in readers:
            os.close(r)
        reason = await client.closed
        assert "truncated" in reason
        assert all(reader_closed_everywhere(w) for w in writers)
        for w in writers:
            os.close(w)
        b.close()

    run(main)


def test_queued_fds_are_released_when_the_channel_closes(run):
    """Whatever the ownership rule, closing a channel with fds still queued behind a full
    socket buffer must not leave a copy of them open anywhere (once the caller dropped its own)."""
    async def main():
        before = open_fd_count()
        a, b = socketpair()
        client = Peer(a, name="client")
        readers, writers = make_pipes(1)
        client.channel.send({"type": "big", "data": bytes(4 << 20)})
        client.channel.send({"type": "fds"}, readers)
        assert client.channel._out, "the second frame should still be queued"
        client.channel.close()
        try:
            os.close(readers[0])
        except OSError:
            pass
        assert reader_closed_everywhere(writers[0])
        os.close(writers[0])
        b.close()
        assert open_fd_count() == before

    with collector_paused():
        run(main)


def test_fds_queued_behind_a_full_socket_survive_the_caller_closing_them(run):
    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        readers, writers = make_pipes(1)
        client.channel.send({"type": "big", "data": bytes(4 << 20)})
        client.channel.send({"type": "fds"}, readers)
        os.close(readers[0])          # send() returned: the caller is done with its copy
        msgs = await server.wait_messages(2)
        [fd] = msgs[1][1]
        os.write(writers[0], b"ok")
        assert os.read(fd, 2) == b"ok"
        os.close(fd)
        os.close(writers[0])
        client.channel.close()
        await server.closed

    run(main)


# -- closing and protocol errors -------------------------------------------------------------

def test_peer_close_fails_pending_requests_and_calls_on_close(run):
    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        pending = [client.channel.request({"type": "never", "i": i}) for i in range(3)]
        await server.wait_messages(3)
        server.channel.close()
        for fut in pending:
            with pytest.raises(ChannelClosed, match="peer closed"):
                await fut
        assert await client.closed == "peer closed"
        assert client.channel.closed and client.channel._pending == {}
        with pytest.raises(ChannelClosed):
            client.channel.send({"type": "late"})
        client.channel.close()                     # idempotent: on_close is not called again
        assert client.close_reasons == ["peer closed"]
        assert server.close_reasons == ["closed"]

    run(main)


@pytest.mark.parametrize("read_first", [True, False], ids=["eof", "reset"])
def test_raw_peer_disappearing(run, read_first):
    """A peer that exits with our request unread makes the kernel reset the connection
    (ECONNRESET) instead of a clean EOF; both must end the same way."""
    async def main():
        a, b = socketpair()
        client = Peer(a, name="client")
        fut = client.channel.request({"type": "x"})
        if read_first:
            b.recv(1024)
        b.close()
        with pytest.raises(ChannelClosed):
            await fut
        [reason] = client.close_reasons
        if read_first:
            assert reason == "peer closed"
        else:
            assert reason.startswith("receive failed")

    run(main)


@pytest.mark.parametrize("garbage", [b"\xff" * 16, b"\x00\x00\x00\x02\x00\x00\x00\x00\x92\x01",
                                     b"\x00\x00\x00\x01\x00\x05\x00\x00\x80"],
                         ids=["bad-header", "list-body", "missing-fds"])
def test_garbage_from_peer_closes_with_protocol_error(run, garbage, caplog):
    async def main():
        a, b = socketpair()
        client = Peer(a, name="client")
        fut = client.channel.request({"type": "x"})
        readers, writers = make_pipes(1)
        b.sendmsg([garbage], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", readers[0]))])
        os.close(readers[0])
        reason = await client.closed
        assert reason.startswith("protocol error")
        with pytest.raises(ChannelClosed, match="protocol error"):
            await fut
        assert client.messages == []
        assert reader_closed_everywhere(writers[0])     # the fd that came with the garbage
        os.close(writers[0])
        b.close()

    run(main)
    assert any("protocol error" in rec.getMessage() for rec in caplog.records)


def test_valid_frames_before_garbage_are_delivered_then_channel_closes(run):
    async def main():
        a, b = socketpair()
        client = Peer(a, name="client")
        b.sendall(encode({"type": "first"}))
        await client.wait_messages(1)
        b.sendall(b"\x00\x00\x00\x00\xff\xff\x00\x00")
        assert (await client.closed).startswith("protocol error")
        assert [m["type"] for m, _ in client.messages] == ["first"]
        b.close()

    run(main)


# -- large messages and partial writes -------------------------------------------------------

def test_large_message_with_fds_needs_many_writes_and_arrives_intact(run):
    payload = random.Random(7).randbytes(6 << 20)

    async def main():
        a, b = socketpair()
        server = Peer(b, name="server")
        client = Peer(a, name="client")
        readers, writers = make_pipes(1)
        client.channel.send({"type": "big", "data": payload}, readers)
        assert client.channel._out, "expected a partial sendmsg leaving the frame queued"
        client.channel.send({"type": "small"})
        msgs = await server.wait_messages(2)
        (big, fds), (small, none) = msgs
        assert big["data"] == payload and small["type"] == "small" and none == []
        [fd] = fds
        os.write(writers[0], b"!")
        assert os.read(fd, 1) == b"!"
        os.close(fd)
        os.close(readers[0])
        os.close(writers[0])
        assert not client.channel._out and not client.channel._writing
        client.channel.close()
        await server.closed

    run(main)


def test_large_messages_both_ways_at_once_do_not_deadlock(run):
    rnd = random.Random(11)
    up, down = rnd.randbytes(3 << 20), rnd.randbytes(3 << 20)

    async def main():
        a, b = socketpair()

        def server_handler(channel, msg, fds):
            channel.reply(msg, {"type": "big-reply", "data": down})

        server = Peer(b, server_handler, "server")
        client = Peer(a, name="client")
        server.channel.send({"type": "push", "data": down})
        reply = await client.channel.request({"type": "big", "data": up})
        assert reply["data"] == down
        [(push, _)] = await client.wait_messages(1)
        assert push["data"] == down
        assert server.messages[0][0]["data"] == up
        client.channel.close()
        await server.closed

    run(main)


# -- peer credentials ------------------------------------------------------------------------

def test_peer_credentials_of_a_socketpair_are_ours():
    a, b = socketpair()
    try:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
        assert peer_credentials(b) == (os.getpid(), os.getuid(), os.getgid())
        assert not os.get_inheritable(a.fileno()) and not os.get_inheritable(b.fileno())
    finally:
        a.close()
        b.close()


# -- blocking_request (CLI side) -------------------------------------------------------------

@pytest.fixture
def unix_server():
    """Start a one-connection server thread running `script(conn, request)`."""
    tmp = tempfile.mkdtemp(prefix="baton-ch-")
    path = os.path.join(tmp, "control.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    threads, errors, seen = [], [], []

    def start(script):
        def serve():
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    decoder = FrameDecoder()
                    request = None
                    while request is None:
                        data, fds = recv_with_fds(conn)
                        assert data, "client closed before sending a request"
                        for msg, _ in decoder.feed(data, fds):
                            request = msg
                    seen.append((request, peer_credentials(conn)))
                    script(conn, request)
            except BaseException as exc:       # reported by the fixture's teardown
                errors.append(exc)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return path

    yield start, seen
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    listener.close()
    os.unlink(path)
    os.rmdir(tmp)
    assert errors == []


def test_blocking_request_skips_other_frames_and_closes_their_fds(unix_server):
    start, seen = unix_server
    readers, writers = make_pipes(1)

    def script(conn, request):
        assert request["id"] == 1
        conn.sendmsg([encode({"type": "stray", "reply_to": 2}, 1)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", readers[0]))])
        data = encode({"type": "event"}) + encode({"type": "pong", "reply_to": 1,
                                                   "echo": request["arg"]})
        for i in range(0, len(data), 5):      # dribble the reply out in small pieces
            conn.sendall(data[i:i + 5])
        conn.recv(1)                          # wait for the client to hang up

    path = start(script)
    reply = blocking_request(path, {"type": "ping", "arg": [1, "two"]}, timeout=5)
    assert reply == {"type": "pong", "reply_to": 1, "echo": [1, "two"]}
    [(request, creds)] = seen
    assert request == {"type": "ping", "arg": [1, "two"], "id": 1}
    assert creds == (os.getpid(), os.getuid(), os.getgid())
    os.close(readers[0])
    assert reader_closed_everywhere(writers[0])
    os.close(writers[0])


def test_blocking_request_server_hangs_up(unix_server):
    start, _ = unix_server
    path = start(lambda conn, request: None)
    with pytest.raises(ChannelClosed):
        blocking_request(path, {"type": "ping"}, timeout=5)


def test_blocking_request_times_out(unix_server):
    start, _ = unix_server
    path = start(lambda conn, request: conn.recv(1))
    with pytest.raises(TimeoutError):
        blocking_request(path, {"type": "ping"}, timeout=0.05)


def test_blocking_request_without_server():
    with pytest.raises(OSError):
        blocking_request(os.path.join(tempfile.gettempdir(), "baton-no-such.sock"),
                         {"type": "ping"}, timeout=1)
