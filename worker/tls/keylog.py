"""Learning a handshake's secrets from OpenSSL through Python's `ssl` module.

Python exposes no call that returns a session's traffic secrets or master secret, but OpenSSL
has a key log callback (SSL_CTX_set_keylog_callback), which gives NSS key log lines for every
handshake on the context:

    CLIENT_RANDOM <client_random hex> <master secret hex>                TLS 1.2
    CLIENT_TRAFFIC_SECRET_0 <client_random hex> <secret hex>             TLS 1.3
    SERVER_TRAFFIC_SECRET_0 <client_random hex> <secret hex>             TLS 1.3
    (and *_HANDSHAKE_TRAFFIC_SECRET, EXPORTER_SECRET, which are not kept)

Baton sets that callback itself through ctypes (openssl.py): each line reaches `_add` inside
the handshake call that made it, with no file in between. Where those calls are unavailable,
`SSLContext.keylog_filename` installs Python's own callback, which writes the lines to a file.
That "file" is /proc/self/fd/N of a pipe's write end, so nothing touches a disk; Python opens
it itself (append mode, non-inheritable) and the pipe end we created is closed at once. The
callback runs inside do_handshake(), so once a handshake step returns its lines are in the
pipe: `collect()` then reads them without blocking. Workers are single-threaded and collect
after every step, so the pipe never holds more than a few hundred bytes; a full pipe would
block the handshaking thread, which is why the pipe is also enlarged.

Lines are matched to a connection by client_random (hello.py reads it from the ClientHello).
Secrets of handshakes never handed over are evicted oldest first past `max_sessions`.
"""

from __future__ import annotations

import fcntl
import os
import ssl
from collections import OrderedDict

from . import openssl

KEPT_LABELS = frozenset((b"CLIENT_RANDOM", b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0"))
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


class KeyLog:
    """The key log of one SSLContext (from its callback, or read from a pipe), indexed by
    client_random."""

    def __init__(self, context: ssl.SSLContext, max_sessions: int = 4096) -> None:
        self._fd = -1
        self._partial = b""
        self._sessions: OrderedDict[bytes, dict[str, bytes]] = OrderedDict()
        self._max_sessions = max_sessions
        if openssl.set_keylog_callback(context, self._add):
            return
        read_fd, write_fd = os.pipe()
        try:
            try:
                fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass                        # above /proc/sys/fs/pipe-max-size: keep 64 KiB
            os.set_blocking(read_fd, False)
            context.keylog_filename = f"/proc/self/fd/{write_fd}"
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)              # OpenSSL holds its own open file on the pipe
        self._fd = read_fd

    def collect(self) -> None:
        """Read every line OpenSSL has written so far (the pipe route; with Baton's own
        callback the lines are already in)."""
        if self._fd < 0:
            return
        chunks = [self._partial]
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        for line in lines:
            self._add(line)

    def _add(self, line: bytes) -> None:
        fields = line.split()
        if len(fields) != 3 or fields[0] not in KEPT_LABELS:
            return                          # comments, handshake and exporter secrets
        try:
            client_random, secret = bytes.fromhex(fields[1].decode()), bytes.fromhex(fields[2].decode())
        except ValueError:
            return
        session = self._sessions.setdefault(client_random, {})
        session[fields[0].decode()] = secret
        self._sessions.move_to_end(client_random)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def take(self, client_random: bytes) -> dict[str, bytes]:
        """The secrets logged for this session (removed from the log), {} if none."""
        self.collect()
        return self._sessions.pop(client_random, {})

    def close(self) -> None:
        """Only with the context: OpenSSL keeps writing to the pipe for every handshake on the
        context, and for every KeyUpdate a session still in OpenSSL's hands processes; a write
        to a pipe without a reader fails the SSL call it happens in ([BIO] system lib). (The
        callback route has nothing to close: lines that come later are kept, then evicted.)"""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._sessions.clear()
