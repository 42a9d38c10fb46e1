"""Proof that a TLS session moves between processes with its socket (worker/tls/).

Real processes, real sockets, no baton: tests/tls_move_peer.py does the handshake with OpenSSL,
switches to Baton's record layer, and on MOVE exports the layer's state and passes the socket
(SCM_RIGHTS, the handoff framing) to the next process, which carries the session on. The
clients — Python's ssl and `openssl s_client` — never know: they keep exchanging data both
ways, KeyUpdates included, and every byte is checked.
"""

from __future__ import annotations

import base64
import os
import random
import select
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..tls_certs import leaf, make_ca
from ..tls_move_peer import pattern

PEER = str(Path(__file__).resolve().parents[1] / "tls_move_peer.py")
DEADLINE = 20.0


class Lines:
    """Lines from a subprocess's stdout, each waited for with a deadline (never a sleep)."""

    def __init__(self, proc: subprocess.Popen, stream=None) -> None:
        self.proc = proc
        self.stream = stream or proc.stdout
        self.buf = bytearray()

    def next(self, timeout: float = DEADLINE) -> bytes:
        deadline = time.monotonic() + timeout
        fd = self.stream.fileno()
        while (newline := self.buf.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from {self.proc.args[:3]} within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{self.proc.args[:3]} exited ({self.proc.wait(5)}) before a line")
            self.buf += chunk
        line = bytes(self.buf[:newline])
        del self.buf[:newline + 1]
        return line


@pytest.fixture
def spawn():
    procs = []

    def start(*argv):
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def random_loopback() -> str:
    return f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"


def start_chain(spawn, tmp_path, hops: int, max_version: str | None = None):
    """Process 1 listens; each next one waits for the connection from the one before."""
    cert, key = leaf(make_ca("ecdsa"), "ecdsa").write(tmp_path, "server")
    host = random_loopback()
    argv = [PEER, "--cert", cert, "--key", key, "--listen", host]
    if max_version:
        argv += ["--max-version", max_version]
    procs = []
    for hop in range(hops):
        send_to = ["--send-to", str(tmp_path / f"h{hop}.sock")] if hop < hops - 1 else []
        proc = spawn(*(argv if hop == 0 else [PEER, "--receive-from", str(tmp_path / f"h{hop - 1}.sock")]), *send_to)
        procs.append((proc, Lines(proc)))
    port = int(procs[0][1].next().split()[1])
    for _proc, lines in procs[1:]:
        assert lines.next() == b"ready"
    return host, port, [p for p, _ in procs]


class Client:
    """Python's ssl on a blocking socket, speaking tls_move_peer's line protocol."""

    def __init__(self, host: str, port: int, max_version=None) -> None:
        context = ssl.create_default_context(cadata=make_ca("ecdsa").cert_pem.decode())
        if max_version:
            context.maximum_version = max_version
        raw = socket.create_connection((host, port), timeout=DEADLINE)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        assert chunk, "the server closed the connection"
        self.buf += chunk

    def line(self) -> bytes:
        while (newline := self.buf.find(b"\n")) < 0:
            self._fill()
        line = bytes(self.buf[:newline])
        del self.buf[:newline + 1]
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def ask(self, line: bytes) -> bytes:
        self.send(line + b"\n")
        return self.line()


def exchange(client: Client, pid: int, rng: random.Random, tls13: bool) -> None:
    """Data both ways in many record sizes, a bulk push, and (TLS 1.3) a KeyUpdate each way."""
    for size in (1, 700, 12000, 50000):
        text = base64.b64encode(rng.randbytes(size))
        assert client.ask(b"ECHO " + text) == b"%d %s" % (pid, text)
    assert client.ask(b"PUSH 200000") == b"%d push 200000" % pid
    assert client.exact(200001) == pattern(200000) + b"\n"
    if tls13:
        before = int(client.ask(b"STATS").split(b"=")[1])
        # Baton updates its write key and asks the client to update too; Python's ssl
        # answers with its own KeyUpdate in front of its next write.
        assert client.ask(b"UPDATEKEYS") == b"%d keyupdated" % pid
        text = base64.b64encode(rng.randbytes(30000))
        assert client.ask(b"ECHO " + text) == b"%d %s" % (pid, text)
        assert client.ask(b"STATS") == b"%d key_updates_received=%d" % (pid, before + 1)


@pytest.mark.parametrize("max_version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_python_client_session_moves_through_three_processes(spawn, tmp_path, max_version):
    tls13 = max_version is None
    host, port, procs = start_chain(spawn, tmp_path, hops=3,
                                    max_version=None if tls13 else "TLSv1_2")
    pids = [p.pid for p in procs]
    client = Client(host, port, max_version)
    assert client.sock.version() == ("TLSv1.3" if tls13 else "TLSv1.2")
    rng = random.Random(12)
    for hop, pid in enumerate(pids):
        exchange(client, pid, rng, tls13)
        if hop < len(pids) - 1:
            # MOVE and the next request in one write: the request may be read (as ciphertext
            # or as plaintext) by the old process and must be answered by the new one. With
            # TLS 1.3 the old process also asks for a KeyUpdate just before it moves: the
            # client's answer reaches the new process, which must take it.
            if tls13:
                client.send(b"UPDATEKEYS\nMOVE\nECHO pipelined\n")
                assert client.line() == b"%d keyupdated" % pid
            else:
                client.send(b"MOVE\nECHO pipelined\n")
            assert client.line() == b"%d moving" % pid
            assert client.line() == b"%d pipelined" % pids[hop + 1]
            if tls13:
                assert client.ask(b"STATS") == b"%d key_updates_received=1" % pids[hop + 1]
            assert procs[hop].wait(DEADLINE) == 0
    client.sock.unwrap()                        # close_notify, and the server's in reply
    client.sock.close()
    assert procs[-1].wait(DEADLINE) == 0


class SClient:
    """`openssl s_client` as a line client of tls_move_peer (its own output is skipped)."""

    def __init__(self, host: str, port: int, tmp_path, version_flag: str) -> None:
        ca_path = tmp_path / "ca.crt"
        ca_path.write_bytes(make_ca("ecdsa").cert_pem)
        self.proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "localhost",
             "-CAfile", str(ca_path), "-verify_return_error", version_flag],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = Lines(self.proc), Lines(self.proc, self.proc.stderr)

    def ask(self, line: bytes) -> bytes:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        while True:                             # s_client prints its session details too
            reply = self.out.next()
            if reply.split(b" ", 1)[0].isdigit():
                return reply

    def say(self, line: bytes) -> None:
        """An s_client command (k, K): wait until s_client says it took it, because a line
        sent with it in the same read would be swallowed by the command."""
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        while self.err.next() != b"KEYUPDATE":
            pass

    def close(self) -> None:
        """EOF on stdin: s_client ends the session with close_notify."""
        self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_openssl_s_client_tls13_session_moves(spawn, tmp_path):
    host, port, procs = start_chain(spawn, tmp_path, hops=2)
    client = SClient(host, port, tmp_path, "-tls1_3")
    ask, say = client.ask, client.say
    try:
        first, second = procs[0].pid, procs[1].pid
        assert ask(b"ECHO hello") == b"%d hello" % first
        assert ask(b"UPDATEKEYS") == b"%d keyupdated" % first
        assert ask(b"ECHO answered") == b"%d answered" % first   # s_client's KeyUpdate rides along
        say(b"k")                               # s_client's own KeyUpdate, update_not_requested
        assert ask(b"ECHO after-keyupdates") == b"%d after-keyupdates" % first
        assert ask(b"STATS") == b"%d key_updates_received=2" % first
        assert ask(b"MOVE") == b"%d moving" % first
        assert procs[0].wait(DEADLINE) == 0
        assert ask(b"ECHO moved") == b"%d moved" % second
        say(b"K")                               # s_client asks Baton to update as well
        assert ask(b"ECHO after-K") == b"%d after-K" % second
        assert ask(b"STATS") == b"%d key_updates_received=1" % second
        assert ask(b"UPDATEKEYS") == b"%d keyupdated" % second
        text = b"x" * 30000
        assert ask(b"ECHO " + text) == b"%d %s" % (second, text)
        client.close()
        assert procs[1].wait(DEADLINE) == 0
    finally:
        client.stop()


def test_openssl_s_client_tls12_session_moves(spawn, tmp_path):
    host, port, procs = start_chain(spawn, tmp_path, hops=3, max_version="TLSv1_2")
    client = SClient(host, port, tmp_path, "-tls1_2")
    try:
        for hop, proc in enumerate(procs):
            assert client.ask(b"ECHO hop %d" % hop) == b"%d hop %d" % (proc.pid, hop)
            text = b"y" * 20000
            assert client.ask(b"ECHO " + text) == b"%d %s" % (proc.pid, text)
            if hop < len(procs) - 1:
                assert client.ask(b"MOVE") == b"%d moving" % proc.pid
                assert proc.wait(DEADLINE) == 0
        client.close()
        assert procs[-1].wait(DEADLINE) == 0
    finally:
        client.stop()
