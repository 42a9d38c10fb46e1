"""A CONNECT terminator over TLS that writes every TLS record in two pieces, apart in time,
so that the proxy reading from it gets part of a record first (a read with no complete record,
which must not pass for the end of the stream). HTTP/1.1 CONNECT: it answers 200 and then
echoes the tunnel's bytes, and ends the stream when the client's side ends.

    python split_tls_connect.py CERT KEY       prints "ready <port>", serves until killed

Blocking sockets and Python's ssl over memory BIOs (OpenSSL does the TLS), one thread per
connection: this is a peer for the tests, not part of Baton.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time


def _send_split(sock: socket.socket, out: ssl.MemoryBIO) -> None:
    data = out.read()
    while data:
        # Every record in two sends with a pause between, so the reader sees half a record.
        size = 5 + int.from_bytes(data[3:5], "big")
        record, data = data[:size], data[size:]
        half = max(1, len(record) // 2)
        sock.sendall(record[:half])
        time.sleep(0.005)
        sock.sendall(record[half:])


def _serve(sock: socket.socket, context: ssl.SSLContext) -> None:
    incoming, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, out, server_side=True)
    with sock:
        while True:                                  # the handshake
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                _send_split(sock, out)
                data = sock.recv(65536)
                if not data:
                    return
                incoming.write(data)
        _send_split(sock, out)
        head = b""
        connected = False
        while True:
            try:
                plain = tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return
                incoming.write(data)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                plain = b""
            if not plain:                            # the client ended the tunnel: so do we
                try:
                    tls.unwrap()
                except ssl.SSLError:
                    pass
                _send_split(sock, out)
                sock.shutdown(socket.SHUT_WR)
                return
            if not connected:
                head += plain
                if b"\r\n\r\n" not in head:
                    continue
                head, _, plain = head.partition(b"\r\n\r\n")
                tls.write(b"HTTP/1.1 200 OK\r\n\r\n")
                connected = True
                if not plain:
                    _send_split(sock, out)
                    continue
            tls.write(plain)
            _send_split(sock, out)


def main() -> None:
    cert, key = sys.argv[1:3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    print(f"ready {server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn, context), daemon=True).start()


if __name__ == "__main__":
    main()
