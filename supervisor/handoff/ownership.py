"""Who closes a descriptor received with a connection record: exactly one owner at a time.

A record's descriptors (`protocol.Incoming.fds`) belong to the adoption that receives them,
which closes whatever is left there if the record is refused or its adopter raises. An
adopter that makes a socket object of one hands that number to the object, which closes it
when it is closed or collected: were the number still in the record too, a failed adoption
would close it a second time, and by then it could be a descriptor opened meanwhile (another
client's socket). So a descriptor is taken out of the record as it becomes a socket object
(`socket_from`), and the record holds exactly the ones nobody else owns.
"""

from __future__ import annotations

import socket

TAKEN = -1      # a descriptor's place in a record once something else owns it


def socket_from(fds: list[int], index: int, family: int,
                kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket object owning the record's descriptor `fds[index]`, struck from `fds`. If
    the object cannot be made (not a socket), the descriptor stays the record's."""
    sock = socket.socket(family, kind, 0, fds[index])
    fds[index] = TAKEN
    return sock
