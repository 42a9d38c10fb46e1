"""A TLS server process for tests/unit/test_tls_movement.py: the handshake by OpenSSL, the
session carried on by Baton's record layer, and moved to another process with its socket.

    tls_move_peer.py --cert C --key K --listen 127.0.0.1     # prints "ready PORT"
    tls_move_peer.py --receive-from PATH [--send-to PATH]    # prints "ready"

A line protocol on top of TLS; every reply starts with the pid that answered it:

    ECHO <text>   -> "<pid> <text>"
    PUSH <n>      -> "<pid> push <n>", then n pattern bytes and a newline
    UPDATEKEYS    -> Baton sends a KeyUpdate(update_requested), then "<pid> keyupdated"
    STATS         -> "<pid> key_updates_received=<n>"
    MOVE          -> "<pid> moving", then the record-layer state, the bytes of plaintext not
                     yet answered, and the socket (SCM_RIGHTS) go to --send-to; this
                     process exits 0 without touching the connection again.

(No command starts with k, K, Q or R: s_client takes such a line as its own command.)
At the peer's close_notify it answers with its own and exits 0; a TLS alert exits 1.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton.supervisor.handoff.framing import FrameDecoder, encode  # noqa: E402
from baton.worker.tls.handover import TlsHandshake  # noqa: E402
from baton.worker.tls.keylog import KeyLog  # noqa: E402
from baton.worker.tls.records import TLSAlert  # noqa: E402
from baton.worker.tls.state import export_state, import_state  # noqa: E402
from baton.worker.tls.suites import TLS12_CIPHERS  # noqa: E402

PATTERN = bytes(range(97, 123)) * 2521          # a-z repeated, no newline


def pattern(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def accept_and_handshake(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_ciphers(TLS12_CIPHERS)          # TLS 1.2: only suites Baton's layer carries on
    if args.max_version:
        context.maximum_version = ssl.TLSVersion[args.max_version]
    keylog = KeyLog(context)
    listener = socket.socket(socket.AF_INET6 if ":" in args.listen else socket.AF_INET)
    listener.bind((args.listen, 0))
    listener.listen(1)
    print(f"ready {listener.getsockname()[1]}", flush=True)
    listener.settimeout(30)
    sock, _ = listener.accept()
    listener.close()
    sock.settimeout(30)
    hs = TlsHandshake(context, keylog, server_side=True)
    while not hs.done:
        data = sock.recv(65536)
        if not data:
            sys.exit("peer left during the handshake")
        hs.receive_data(data)
        sock.sendall(hs.step())
    layer = hs.handover()
    keylog.close()
    return sock, layer, b""


def receive_handoff(args):
    path = args.receive_from
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    listener.settimeout(30)
    channel, _ = listener.accept()
    channel.settimeout(30)
    decoder = FrameDecoder()
    while True:
        data, fds, _flags, _addr = socket.recv_fds(channel, 1 << 20, 4)
        if not data and not fds:
            sys.exit("handoff channel closed before the connection arrived")
        frames = decoder.feed(data, fds)
        if frames:
            msg, fds = frames[0]
            break
    channel.close()
    sock = socket.socket(fileno=fds[0])
    sock.settimeout(30)
    return sock, import_state(msg["tls"]), msg["app_pending"]


def hand_off(args, sock, layer, app_pending: bytes) -> None:
    msg = {"type": "tls_connection", "tls": export_state(layer), "app_pending": app_pending}
    channel = socket.socket(socket.AF_UNIX)
    channel.connect(args.send_to)
    socket.send_fds(channel, [encode(msg, nfds=1)], [sock.fileno()])
    channel.close()
    sock.detach()                # the next process owns the connection now; never close it here


def serve(args, sock, layer, buffer: bytes) -> int:
    pid = os.getpid()
    # The layer may already hold whole records: what arrived behind the client's Finished, or
    # what the previous process had read but not processed.
    buffer = bytearray(buffer) + layer.receive_data(b"")
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            data = sock.recv(1 << 16)
            if not data:
                print("peer closed the TCP connection without close_notify", file=sys.stderr)
                return 1
            try:
                buffer += layer.receive_data(data)
            except TLSAlert as exc:
                sock.sendall(layer.data_to_send())
                print(f"tls: {exc}", file=sys.stderr)
                return 1
            sock.sendall(layer.data_to_send())      # a KeyUpdate answer, if one was asked for
            if layer.peer_closed and buffer.find(b"\n") < 0:
                sock.sendall(layer.close())
                sock.close()
                return 0
            continue
        line = bytes(buffer[:newline]).rstrip(b"\r")
        del buffer[:newline + 1]
        command, _, rest = line.partition(b" ")
        if command == b"ECHO":
            sock.sendall(layer.send_data(b"%d %s\n" % (pid, rest)))
        elif command == b"PUSH":
            n = int(rest)
            sock.sendall(layer.send_data(b"%d push %d\n" % (pid, n) + pattern(n) + b"\n"))
        elif command == b"UPDATEKEYS":
            sock.sendall(layer.update_keys(request_peer=True) + layer.send_data(b"%d keyupdated\n" % pid))
        elif command == b"STATS":
            sock.sendall(layer.send_data(b"%d key_updates_received=%d\n" % (pid, layer.key_updates_received)))
        elif command == b"MOVE":
            sock.sendall(layer.send_data(b"%d moving\n" % pid))
            hand_off(args, sock, layer, bytes(buffer))
            return 0
        else:
            sock.sendall(layer.send_data(b"%d unknown command\n" % pid))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--listen")
    parser.add_argument("--max-version", choices=["TLSv1_2", "TLSv1_3"])
    parser.add_argument("--receive-from")
    parser.add_argument("--send-to")
    args = parser.parse_args()
    if args.listen:
        sock, layer, pending = accept_and_handshake(args)
    else:
        sock, layer, pending = receive_handoff(args)
    return serve(args, sock, layer, pending)


if __name__ == "__main__":
    sys.exit(main())
