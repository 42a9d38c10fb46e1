"""A response forwarded to a new worker that stops reading its handoff channel does not grow
the old worker without bound (worker/proxy/http/inflight.py ForwardedTransport, Channel's
send_counted): once the connection's bytes queued in the channel pass its buffer limit
(per_connection_buffer_limit_bytes) the old worker stops reading the upstream, which then
cannot send more, and once the receiver reads again every byte arrives, in order. Before, the
old worker read the whole body into the channel's queue.

The same for an L4 connection moved client-only (record tcp-split, worker/forwarding.py): its
upstream half stops reading the upstream past its limit.

Real processes: Baton with one worker, reloaded while a response is in flight (the connection
moves at once and its response follows through the new worker); the new worker is then
stopped (SIGSTOP) and this test's own upstream sends as fast as it is read. For tcp-split,
tests/handoff_receiver.py adopts the client with the real ForwardedSide and is stopped."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import threading

from baton.worker import migration
from baton.worker.forwarding import RECV_SIZE, ForwardedSide

from ..unit.test_handoff_late_split import CONN_ID, _split_connection
from .clients import Http1Reader, stream_chunks
from .conftest import free_port, http_bootstrap, wait_until
from .test_handoff_deadline import read_line, receiver, stopped  # noqa: F401 - a fixture
from .test_handoff_late_split import _recv

BODY = 64 << 20
STALL = 1.0         # s without the proxy reading: the upstream's sends are blocked
LIMIT = 1 << 20     # per_connection_buffer_limit_bytes: Envoy's default, not configured
READ = 256 << 10    # the most one read of the upstream takes (uvloop's buffer)
NEXT = b"next"      # the body of the answer to the request after the big one


def _tcp_receive_queue(local: tuple, remote: tuple) -> int:
    """Bytes waiting unread in the receive queue of the TCP socket `local` -> `remote`
    (IPv4, another process's: /proc/net/tcp's rx_queue)."""
    def address(host_port):
        host, port = host_port
        return "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(host))[0], port)
    want = (address(local), address(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no socket {local} -> {remote} in /proc/net/tcp")


def _unsent(sock: socket.socket) -> int:
    """Bytes in `sock`'s send queue: not yet acknowledged by the other end (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


class Upstream:
    """One HTTP/1.1 exchange: the head once `go` is set, then the body (BODY patterned bytes)
    sent as fast as the proxy reads it; `stalled` says how much had gone when it stopped
    reading (or all of it) and `read_by_proxy` how much of that the old worker had read (not
    in our send queue nor in its socket's receive queue); the rest goes once `go_on` is set.
    Then one more exchange, on the next connection (the new worker's), answered NEXT."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.asked, self.go, self.stalled, self.go_on = (threading.Event() for _ in range(4))
        self.body = b"".join(stream_chunks(BODY, seed=7))
        self.sent = self.read_by_proxy = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(30)
            sock, _ = self.listener.accept()
            with sock:
                # A small send buffer: what the kernel holds on our side stays small.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
                sock.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                self.asked.set()
                assert self.go.wait(30), "never told to answer"
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BODY)
                body = memoryview(self.body)
                sock.setblocking(False)
                while self.sent < BODY:
                    if not select.select([], [sock], [], STALL)[1]:
                        break               # the proxy stopped reading us
                    try:
                        self.sent += sock.send(body[self.sent:self.sent + READ])
                    except BlockingIOError:
                        pass
                if self.sent < BODY:
                    self.read_by_proxy = self.sent - _unsent(sock) - _tcp_receive_queue(
                        sock.getpeername(), sock.getsockname())
                self.stalled.set()
                assert self.go_on.wait(30), "never told to go on"
                sock.settimeout(30)
                sock.sendall(body[self.sent:])
                self.sent = BODY
                self._answer_next()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.stalled.set()

    def _answer_next(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            sock.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert head.startswith(b"GET /next "), head
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(NEXT), NEXT))

    def close(self) -> None:
        self.go.set()
        self.go_on.set()
        self.thread.join(30)
        self.listener.close()


def test_a_receiver_that_stops_reading_its_channel_pauses_the_upstream_at_the_limit(baton):
    upstream = Upstream()
    port = free_port()
    b = baton(http_bootstrap(free_port(), port, upstream.port), concurrency=1)
    stopped = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: wedged.test\r\n\r\n")
            assert upstream.asked.wait(10), "the request never reached the upstream"
            old_workers = set(b.worker_pids())
            result = b.reload()
            assert result.returncode == 0, result.stdout + result.stderr
            wait_until(lambda: b.log.count("moved 1 of 1 connection(s)") >= 1, 10,
                       "the connection moved with its response in flight")
            (stopped,) = set(b.worker_pids()) - old_workers
            os.kill(stopped, signal.SIGSTOP)
            upstream.go.set()
            assert upstream.stalled.wait(60) and upstream.error is None, upstream.error
            assert upstream.sent < BODY, "the old worker read the whole body"
            # What the old worker read: the limit in the channel's queue and the read that
            # passed it, plus what the channel's unix socket holds (up to its send buffer,
            # net.core.wmem_default, and one more message: twice it), plus 64 KiB of frame
            # headers and slack. Before 2ef617c: the whole body.
            with open("/proc/sys/net/core/wmem_default") as f:
                channel_buffer = 2 * int(f.read())
            bound = LIMIT + READ + channel_buffer + (64 << 10)
            print(f"upstream sent {upstream.sent}, the old worker read {upstream.read_by_proxy}"
                  f" (bound {bound})")
            assert upstream.read_by_proxy <= bound, \
                f"the old worker read {upstream.read_by_proxy} bytes for a receiver that " \
                f"reads nothing"
            os.kill(stopped, signal.SIGCONT)
            stopped = None
            upstream.go_on.set()
            reader = Http1Reader(sock)
            status, headers = reader.head()
            assert status == 200 and int(headers["content-length"]) == BODY
            received = 0
            while received < BODY:
                data = reader.exact(min(1 << 20, BODY - received))
                assert data == upstream.body[received:received + len(data)], \
                    f"bytes lost, added or reordered after byte {received}"
                received += len(data)
            # Nothing after the body: the next answer follows it at once.
            sock.sendall(b"GET /next HTTP/1.1\r\nHost: wedged.test\r\n\r\n")
            status, headers = reader.head()
            assert status == 200 and reader.exact(int(headers["content-length"])) == NEXT
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        upstream.close()
    assert upstream.error is None, upstream.error
    assert "Traceback" not in b.log


async def _send_until_stalled(sock: socket.socket, data: bytes) -> int:
    """Send `data` on non-blocking `sock` as fast as the other end reads it: how much went
    before it stopped reading for STALL seconds (or all of it)."""
    loop, sent = asyncio.get_running_loop(), 0
    while sent < len(data):
        try:
            sent += sock.send(data[sent:sent + (256 << 10)])
            continue
        except BlockingIOError:
            pass
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
        try:
            await asyncio.wait_for(writable, STALL)
        except asyncio.TimeoutError:
            return sent
        finally:
            loop.remove_writer(sock.fileno())
    return sent


def test_a_split_connections_upstream_half_pauses_at_the_limit_for_a_receiver_that_stops(
        receiver):
    proc, address = receiver
    client_far, client = socket.socketpair()
    upstream, upstream_far = socket.socketpair()
    total = 32 << 20
    body = bytes(range(256)) * (total // 256)

    async def move():
        loop = asyncio.get_running_loop()
        worker, conn = _split_connection(loop, client, upstream)
        worker.handoff_channels = set()
        peer = await migration.open_handoff(address, 1, worker)
        assert await migration._move(worker, [conn], [peer], True) == (1, set())
        assert await loop.run_in_executor(None, read_line, proc, 10) == "adopted [7]"
        side = worker.connections.get(CONN_ID)
        assert isinstance(side, ForwardedSide)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: stopped(proc.pid), 5, "the receiver to stop")
        for sock in (client_far, upstream_far):
            sock.setblocking(False)
        sent = await _send_until_stalled(upstream_far, body)
        queued = sum(len(frame[0]) for frame in peer.channel._out)
        # The limit in the channel's queue (and one read past it), plus the kernel's socket
        # buffers between the upstream and us, and us and the receiver.
        assert sent < total // 4, f"{sent} bytes read for a receiver that reads nothing"
        assert queued <= side.limit + RECV_SIZE + 1024, f"{queued} bytes queued in the channel"
        os.kill(proc.pid, signal.SIGCONT)
        rest = asyncio.ensure_future(loop.sock_sendall(upstream_far, body[sent:]))
        assert await _recv(client_far, total) == body, "bytes lost, added or reordered"
        await rest
        side.close()
        peer.forget_process()
        peer.channel.close("done")

    try:
        asyncio.run(asyncio.wait_for(move(), 60))
    finally:
        for sock in (client_far, client, upstream, upstream_far):
            sock.close()
