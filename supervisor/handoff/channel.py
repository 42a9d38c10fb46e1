"""A framed message channel over a connected AF_UNIX stream socket, driven by an asyncio loop.

Used for master<->worker control (one socketpair per worker) and for the control socket.
Requests carry an "id"; the answer carries "reply_to" with that id and resolves the future
returned by `request()`. Everything else goes to the `on_message(channel, msg, fds)` callback.

The socket is driven with add_reader/add_writer and recvmsg/sendmsg rather than a transport,
because transports cannot carry SCM_RIGHTS descriptors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct

from .framing import FrameDecoder, FrameError, close_fds, encode

log = logging.getLogger("baton.channel")

RECV_SIZE = 256 * 1024
ANCDATA_SIZE = socket.CMSG_SPACE(253 * 4)


class ChannelClosed(Exception):
    """The peer went away (or the channel was closed) before the answer came."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancdata, flags, _ = sock.recvmsg(RECV_SIZE, ANCDATA_SIZE, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    if flags & socket.MSG_CTRUNC:
        # Descriptors were dropped by the kernel: the frame they belong to can never be
        # matched, so the stream is unusable.
        close_fds(fds)
        raise FrameError("descriptors truncated in transit")
    return data, fds


class Channel:
    __slots__ = ("sock", "loop", "name", "_on_message", "_on_close", "_decoder", "_out",
                 "_writing", "_pending", "_ids", "_when_sent", "closed", "__weakref__")

    def __init__(self, sock: socket.socket, on_message, on_close=None, name: str = "channel"):
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.name = name
        self._on_message = on_message
        self._on_close = on_close
        self._decoder = FrameDecoder()
        # [bytes, fds, fds are our copies, on_sent(size) or None, size] not yet sent
        self._out: list[list] = []
        self._writing = False
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._when_sent: list = []          # callbacks for when nothing is queued
        self.closed = False
        self.loop.add_reader(sock.fileno(), self._on_readable)

    # -- sending -------------------------------------------------------------------------

    def send(self, msg: dict, fds=(), dup: bool = True) -> None:
        """Queue `msg`. The channel sends its own duplicates of `fds`, so the caller keeps
        (and may close) its descriptors as soon as this returns. With dup=False the caller
        promises to keep them open until the peer has answered (no copies: two syscalls saved
        per descriptor, which counts when thousands of connections move)."""
        self.send_frame(encode(msg, len(fds)), fds, dup)

    def send_counted(self, msg: dict, size: int, on_sent) -> None:
        """Queue `msg` (no descriptors) and call `on_sent(size)` once all of it has left for
        the peer (at once if the socket takes it now); never if the channel closes first.
        What many connections forward over one channel (write migration,
        worker/forwarding.py) shares one queue, which a peer that stops reading would grow
        without bound: each sender counts its own bytes (`size`) until they leave, and stops
        reading its source past its limit, as it would for a full socket."""
        data = encode(msg, 0)
        if self.closed:
            raise ChannelClosed(f"{self.name}: closed")
        self._out.append([data, [], False, on_sent, size])
        if not self._writing:
            self._flush()

    def send_frame(self, data: bytes, fds=(), dup: bool = True) -> None:
        """Send a frame already encoded (framing.encode(msg, len(fds))): one message fanned
        out to every worker is encoded once."""
        if self.closed:
            raise ChannelClosed(f"{self.name}: closed")
        self._out.append([data, [os.dup(fd) for fd in fds] if dup else list(fds), dup, None, 0])
        if not self._writing:
            self._flush()

    def request(self, msg: dict, fds=(), timeout: float = 5.0, dup: bool = True) -> asyncio.Future:
        """Send `msg` with a fresh id; the result is the peer's reply message."""
        return self.request_frame(msg, fds, timeout, dup)[0]

    def request_frame(self, msg: dict, fds=(), timeout: float = 5.0, dup: bool = True):
        """`request`, and the frame as queued: what `withdraw` takes back. For a caller that
        sends its own descriptors (dup=False) and may give up waiting while the frame is
        still queued (a peer that does not read)."""
        msg_id = next(self._ids)
        self.send({**msg, "id": msg_id}, fds, dup)  # first: if it raises, nothing is pending
        frame = self._out[-1] if self._out else None    # None: already sent whole
        fut = self.loop.create_future()             # the reply cannot arrive before we return
        self._pending[msg_id] = fut
        return asyncio.ensure_future(self._await_reply(msg_id, fut, timeout)), frame

    def withdraw(self, frame) -> bool:
        """Take `frame` (from request_frame, with descriptors) off the queue if none of it
        has left: True, and the peer never sees it nor its descriptors. False: it left (its
        descriptors are the peer's, in the kernel, whatever we close or reuse here), or its
        first bytes did, with the descriptors, and the rest must follow. A caller that sent
        its own descriptors (dup=False) withdraws before it reuses or closes them: a queued
        frame reads the descriptor numbers only when it is sent, and a number closed and
        reused meanwhile would send another socket (another client's connection) to the
        peer."""
        if frame is None or not frame[1]:       # sent, or started: descriptors go first
            return False
        for i, queued in enumerate(self._out):
            if queued is frame:
                del self._out[i]
                if frame[2]:
                    close_fds(frame[1])
                return True
        return False

    async def _await_reply(self, msg_id, fut, timeout):
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg_id, None)

    async def drained(self, timeout: float) -> None:
        """Wait (at most `timeout`) until everything queued has left for the peer."""
        deadline = self.loop.time() + timeout
        while self._out and not self.closed and self.loop.time() < deadline:
            await asyncio.sleep(0.005)

    def when_sent(self, callback) -> None:
        """Call `callback()` once everything queued now has left for the peer (at once if
        nothing is queued), or the channel closed first."""
        if not self._out or self.closed:
            callback()
        else:
            self._when_sent.append(callback)

    def _sent(self) -> None:
        callbacks, self._when_sent = self._when_sent, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("%s: a callback on sent frames failed", self.name)

    def reply(self, request: dict, msg: dict, fds=()) -> None:
        if "id" in request and not self.closed:
            self.send({**msg, "reply_to": request["id"]}, fds)

    def _flush(self) -> None:
        counted = []                    # (on_sent, size) of the frames that left whole
        while self._out:
            data, fds, owned, on_sent, size = self._out[0]
            try:
                if fds:
                    sent = self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
                    if owned:
                        close_fds(fds)        # our copies: the peer has its own now
                    self._out[0][1] = []      # descriptors travel with the first chunk only
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return
            if sent < len(data):
                self._out[0][0] = data[sent:]
                break
            self._out.pop(0)
            if on_sent is not None:
                counted.append((on_sent, size))
        want_write = bool(self._out)
        if want_write != self._writing:
            self._writing = want_write
            if want_write:
                self.loop.add_writer(self.sock.fileno(), self._flush)
            else:
                self.loop.remove_writer(self.sock.fileno())
        for on_sent, size in counted:   # after: each may send (and flush) again
            on_sent(size)
        if not self._out and self._when_sent:
            self._sent()                # last: a callback may send (and flush) again

    # -- receiving -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data, fds = recv_with_fds(self.sock)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, FrameError) as exc:
            self.close(f"receive failed: {exc}")
            return
        if not data:
            close_fds(fds)
            self.close("peer closed")
            return
        try:
            frames = self._decoder.feed(data, fds)
        except FrameError as exc:
            log.error("%s: protocol error from peer: %s", self.name, exc)
            self.close(f"protocol error: {exc}")
            return
        for msg, frame_fds in frames:
            reply_to = msg.get("reply_to")
            if reply_to is not None:
                fut = self._pending.get(reply_to)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                close_fds(frame_fds)
                continue
            try:
                self._on_message(self, msg, frame_fds)
            except Exception:
                log.exception("%s: handler failed on %r", self.name, msg.get("type"))
                close_fds(frame_fds)
                if "id" in msg:
                    self.reply(msg, {"type": "error", "error": "internal error handling request"})

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            if self._writing:
                self.loop.remove_writer(fd)
        for _, fds, owned, _, _ in self._out:
            if owned:
                close_fds(fds)
        self._out.clear()
        self._decoder.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"{self.name}: {reason}"))
        self._pending.clear()
        self.sock.close()
        self._sent()
        if self._on_close is not None:
            self._on_close(self, reason)


class BlockingChannel:
    """Framed request/reply on a blocking socket, for code that runs before (or without) an
    event loop: the CLI, and a new master's first steps of a takeover."""

    def __init__(self, sock: socket.socket, timeout: float):
        sock.settimeout(timeout)
        self.sock = sock
        self._decoder = FrameDecoder()
        self._frames: list = []
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, path: str, timeout: float) -> "BlockingChannel":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    def send(self, msg: dict, fds=()) -> None:
        data = encode(msg, len(fds))
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.sendall(data)

    def recv(self) -> tuple[dict, list[int]]:
        while not self._frames:
            data, fds = recv_with_fds(self.sock)
            if not data:
                close_fds(fds)
                raise ChannelClosed("the peer closed the connection")
            self._frames.extend(self._decoder.feed(data, fds))
        return self._frames.pop(0)

    def request(self, msg: dict, fds=()) -> tuple[dict, list[int]]:
        msg_id = next(self._ids)
        self.send({**msg, "id": msg_id}, fds)
        while True:
            reply, reply_fds = self.recv()
            if reply.get("reply_to") == msg_id:
                return reply, reply_fds
            close_fds(reply_fds)

    def detach(self) -> socket.socket:
        """Hand the socket to an event-loop Channel (nothing may be left unread)."""
        if self._frames or self._decoder.pending_bytes:
            raise FrameError("unread frames left on the channel")
        sock, self.sock = self.sock, None
        return sock

    def close(self) -> None:
        for _, fds in self._frames:
            close_fds(fds)
        self._frames.clear()
        self._decoder.close()
        if self.sock is not None:
            self.sock.close()


def blocking_request(path: str, msg: dict, timeout: float = 10.0) -> dict:
    """One request/reply over a unix socket, for the CLI (no event loop)."""
    channel = BlockingChannel.connect(path, timeout)
    try:
        reply, fds = channel.request(msg)
        close_fds(fds)
        return reply
    finally:
        channel.close()


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        os.set_inheritable(s.fileno(), False)
    return a, b
