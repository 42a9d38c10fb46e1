"""Who holds a batch of connections whose answer is late: the sender or the receiver, never both.

A batch's sockets are in both processes from the moment it is sent (SCM_RIGHTS duplicates
them). If the receiver answers within the deadline, the answer decides. If it does not, the
sender cannot tell a receiver that never read the batch from one about to adopt it: taking
the batch back then, as protocol version 2 did, let a slow receiver adopt it later, and two
workers read and wrote one socket.

So the batch carries a token both sides can take, and only one can: a pipe holding one byte.
The sender writes the byte, closes the write end and sends the read end with the batch. The
receiver reads the byte before it adopts anything (`claim`); the sender, at the deadline,
reads it to take the batch back (`BatchToken.revoke`). A one-byte read from a pipe is atomic,
so exactly one of them gets it; the other reads nothing (EAGAIN, or EOF once the write end is
closed) and knows the batch is the other's. On the normal path this costs no round trip: the
receiver's claim is one read before the answer it sends anyway.
"""

from __future__ import annotations

import os

_TOKEN = b"\x01"


def _take(fd: int) -> bool:
    try:
        return os.read(fd, 1) == _TOKEN
    except BlockingIOError:
        return False


class BatchToken:
    """The sender's side of one batch's token: `fd` goes with the batch (and stays open here
    until the batch is answered: the channel sends it without a copy)."""

    __slots__ = ("fd", "_revoked")

    def __init__(self):
        self._revoked = None
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(write, _TOKEN)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.fd = read

    def revoke(self) -> bool:
        """Take the batch back. True: the receiver had not claimed it, and now never will
        (it refuses it): resume it here. False: the receiver claimed it: it adopts or refuses
        it and answers; wait for that answer. The outcome is final, so a second call returns
        it again, even once the token is closed (a batch given up after its settle revoked
        it: batch_ownership.give_up); a token closed unrevoked is taken to be claimed."""
        if self._revoked is None:
            self._revoked = self.fd >= 0 and _take(self.fd)
        return self._revoked

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim(fd: int) -> bool:
    """The receiver's side: True if this process now owns the batch (adopt it), False if the
    sender took it back (refuse it: the sender serves it on). Closes `fd`."""
    try:
        return _take(fd)
    finally:
        os.close(fd)
