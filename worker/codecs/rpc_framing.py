"""What the Dubbo and Bolt decoders share: bytes in, whole frames out (sans-IO).

A subclass says where the frame starting at an offset ends (`_frame_at`); `feed()` buffers
the bytes, cuts every complete frame and keeps a partial one for the next call, so any way
the bytes are split gives the same frames.
"""

from __future__ import annotations


class FrameDecoder:
    __slots__ = ("buffer", "limit")

    def __init__(self, limit: int):
        self.buffer = bytearray()
        self.limit = limit                  # the largest frame (or body) accepted, in bytes

    def feed(self, data) -> list:
        """Every frame the new bytes complete; raises the codec's error on a bad frame."""
        buf = self.buffer
        buf += data
        frames = []
        pos = 0
        while True:
            found = self._frame_at(buf, pos)
            if found is None:
                break
            frame, pos = found
            frames.append(frame)
        if pos:
            del buf[:pos]
        return frames

    def _frame_at(self, buf: bytearray, pos: int):
        """(frame, its end) for the frame at `pos`, or None while it is incomplete."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self.buffer)
