"""Length-prefixed msgpack frames with attached file descriptors (sans-IO).

Every control message Baton exchanges between its processes — master and worker over their
socketpair, the CLI and the master over the control socket, and (later) one generation and the
next over the handoff socket — is one frame:

     0       4       6       8                              8+length
    +-------+-------+-------+-------------------------------+
    |length | nfds  | rsvd  |  msgpack map (length bytes)   |
    +-------+-------+-------+-------------------------------+
     u32 BE  u16 BE  u16 0

A frame that carries descriptors sends them as SCM_RIGHTS ancillary data with the same
sendmsg() call as its header. On a SOCK_STREAM unix socket the kernel never merges a read
across a segment that carried descriptors, so descriptors arrive with or before the bytes of
their frame; the decoder keeps them in a FIFO and gives each frame the `nfds` it declares.

Rules of this file:
- No socket is ever touched here: `FrameDecoder.feed(bytes, fds)` returns complete frames,
  `encode(msg)` returns bytes. The caller owns IO.
- A frame is a msgpack *map* with a "type" key; anything else is a `FrameError`.
- On any error the decoder is poisoned (the stream has lost its framing) and closes every
  descriptor it still holds, so a hostile or broken peer can never leak fds into us.
"""

from __future__ import annotations

import os
import struct

import msgpack

HEADER = struct.Struct("!IHH")
MAX_FRAME = 64 * 1024 * 1024      # a 10k-endpoint snapshot is well under 1 MiB
MAX_FDS = 253                     # SCM_MAX_FD on Linux


class FrameError(Exception):
    """The peer sent something that is not a valid frame; the channel must be closed."""


def encode(msg: dict, nfds: int = 0) -> bytes:
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError("a frame is a map with a 'type' key")
    if not 0 <= nfds <= MAX_FDS:
        raise ValueError(f"too many descriptors in one frame: {nfds}")
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame too large: {len(body)} bytes")
    return HEADER.pack(len(body), nfds, 0) + body


def close_fds(fds) -> None:
    """Close each descriptor of `fds`; a negative entry is a place whose descriptor another
    owner took (ownership.TAKEN) and is skipped."""
    for fd in fds:
        if fd < 0:
            continue
        try:
            os.close(fd)
        except OSError:
            pass


class FrameDecoder:
    """Turns a byte stream (plus received descriptors) into (message, fds) pairs."""

    __slots__ = ("_buf", "_fds", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []
        self.error: str | None = None

    def feed(self, data: bytes, fds=()) -> list[tuple[dict, list[int]]]:
        if self.error is not None:
            close_fds(fds)
            raise FrameError(self.error)
        for fd in fds:
            os.set_inheritable(fd, False)      # CLOEXEC on every received descriptor
        self._fds.extend(fds)
        self._buf += data
        frames = []
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    break
                frames.append(frame)
        except FrameError as exc:
            for _, frame_fds in frames:
                close_fds(frame_fds)
            self.fail(str(exc))
            raise
        return frames

    def fail(self, reason: str) -> None:
        """Poison the decoder and release every descriptor it holds."""
        self.error = reason
        close_fds(self._fds)
        self._fds.clear()
        self._buf.clear()

    def close(self) -> None:
        """The stream ended: release what never made it into a frame."""
        if self._buf and self.error is None:
            self.error = f"stream ended inside a frame ({len(self._buf)} bytes pending)"
        close_fds(self._fds)
        self._fds.clear()
        self._buf.clear()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def _next_frame(self):
        if len(self._buf) < HEADER.size:
            return None
        length, nfds, reserved = HEADER.unpack_from(self._buf)
        if reserved != 0:
            raise FrameError("bad frame header (reserved bits set)")
        if length > MAX_FRAME:
            raise FrameError(f"frame too large: {length} bytes (max {MAX_FRAME})")
        if nfds > MAX_FDS:
            raise FrameError(f"frame declares {nfds} descriptors (max {MAX_FDS})")
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        if nfds > len(self._fds):
            raise FrameError(f"frame declares {nfds} descriptors, {len(self._fds)} received")
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        fds, self._fds[:nfds] = self._fds[:nfds], []
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            close_fds(fds)
            raise FrameError(f"undecodable frame body: {exc.__class__.__name__}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            close_fds(fds)
            raise FrameError("frame is not a map with a 'type' string")
        return msg, fds
