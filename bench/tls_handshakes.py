"""New TLS handshakes for the TLS benchmark: full handshakes, no resumption, no request.

    python bench/tls_handshakes.py PORT SECONDS CONNECTIONS

Keeps CONNECTIONS handshakes in flight from one process (non-blocking sockets, one selector):
connect, full handshake, close, at once the next one. Prints JSON: handshakes completed,
failures, seconds, and the version and suite of the last handshake.

Why not wrk with `Connection: close`: wrk keeps each connection's SSL object and resumes the
previous session on reconnect (a proxy's `ssl.session_reused` counts nearly every handshake),
which measures PSK resumption, not new handshakes (a proxy could refuse it with
`disable_stateless_session_resumption`, but then the benchmark would measure a config the
other proxies are not given). `openssl s_time -new`
does full handshakes but one at a time per process and cost more client CPU per handshake here.
Python's `ssl` client resumes only when given a session, and a fresh SSLSocket per connection
has none: every handshake is full (ECDHE with the certificate's signature). The client work is
OpenSSL's (key share, signature check) plus a little Python per connection, so one load CPU
can keep a proxy's core busy; the proxy's per-core figure does not depend on it either way.
The client's OpenSSL configuration (OPENSSL_CONF, set by bench/tls_bench.py) pins TLS 1.3,
the cipher suite and the key-exchange group for every proxy alike.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import ssl
import sys
import time

HOST = "127.0.0.1"


class Handshakes:
    def __init__(self, port: int, connections: int):
        self.port = port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE    # the signature is still checked: that is TLS 1.3
        self.sel = selectors.DefaultSelector()
        self.done = self.failed = 0
        self.last = ("", "")
        self.connections = connections

    def _open(self) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = raw.connect_ex((HOST, self.port))
        if err not in (0, errno.EINPROGRESS):
            raw.close()
            self.failed += 1
            return
        self.sel.register(raw, selectors.EVENT_WRITE)

    def _connected(self, raw: socket.socket) -> None:
        """The connect finished (writable): wrap the socket and send the ClientHello."""
        self.sel.unregister(raw)
        if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raw.close()
            self.failed += 1
            self._open()
            return
        tls = self.ctx.wrap_socket(raw, do_handshake_on_connect=False)
        self.sel.register(tls, selectors.EVENT_WRITE)
        self._step(tls)

    def _step(self, tls: ssl.SSLSocket) -> None:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(tls, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(tls, selectors.EVENT_WRITE)
            return
        except OSError:
            self.failed += 1
        else:
            self.done += 1
            self.last = (tls.version(), tls.cipher()[0])
        self.sel.unregister(tls)
        tls.close()     # no close_notify: a client that got what it came for
        self._open()

    def run(self, seconds: float) -> dict:
        started = time.perf_counter()
        end = started + seconds
        for _ in range(self.connections):
            self._open()
        while time.perf_counter() < end:
            for key, _ in self.sel.select(0.5):
                sock = key.fileobj
                (self._step if isinstance(sock, ssl.SSLSocket) else self._connected)(sock)
        elapsed = time.perf_counter() - started
        return {"handshakes": self.done, "failed": self.failed, "seconds": elapsed,
                "version": self.last[0], "cipher": self.last[1]}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(Handshakes(int(argv[0]), int(argv[2])).run(float(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
