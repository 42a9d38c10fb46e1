"""TLS-terminated tcp_proxy connections moving between generations and workers (record
"tls-tcp", worker/proxy/tls_proxy.py): long streams through 20 `baton reload`s and a
`baton recycle` of each worker, a move the receiver refuses, and a reload that finds the
upstream connect after the handshake in flight. Real `baton` processes and Python ssl clients."""

from __future__ import annotations

import re
import socket
import ssl

from ..tls_certs import leaf, make_ca
from ..waiting import wait_until
from .conftest import free_port
from .tls_clients import (TlsEchoStream, client_context, ssl_stats, tls_bootstrap, tls_roundtrip,
                          tls_transport_socket)


def _reload_ok(b) -> None:
    old = b.master_pid()
    result = b.reload()
    assert result.returncode == 0, result.stderr
    b.wait_previous_gone(old)


def test_tls_streams_move_through_20_reloads_and_a_recycle(baton, upstreams):
    """Long TLS-terminated streams in both directions (TLS 1.3 and TLS 1.2; one asks for a
    KeyUpdate every MiB) keep every byte, in order, with no reconnect, while their connections move
    between generations and workers with the record layer's state."""
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa"))), concurrency=2)
    streams = [TlsEchoStream(port, client_context(ca, version=version), rate=2 << 20, seed=i,
                             key_update_every=(1 << 20) if i == 2 else 0).start()
               for i, version in enumerate((ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2,
                                            ssl.TLSVersion.TLSv1_3))]
    handshakes = ssl_stats(b, port)["handshake"]
    assert handshakes == 3
    for _ in range(20):
        before = [s.got for s in streams]
        _reload_ok(b)
        # Each stream has made progress through the new generation before the next reload.
        wait_until(lambda: all(s.got > g + 65536 or s.error for s, g in zip(streams, before)),
                   20, "the streams to flow after a reload")
        assert all(s.error is None for s in streams), [s.error for s in streams]
    for worker in range(2):
        old = b.status()["workers"][worker]["pid"]
        result = b.cli("recycle", "--worker", str(worker))
        assert result.returncode == 0, result.stderr
        wait_until(lambda: b.status()["workers"][worker]["pid"] not in (old, None), 20, "the recycle")
    before = [s.got for s in streams]
    wait_until(lambda: all(s.got > g + 65536 or s.error for s, g in zip(streams, before)),
               20, "the streams to flow after the recycles")
    # KeyUpdates come with the bytes sent (one a MiB at 2 MiB/s), not with the reloads: the
    # quicker the reloads, the fewer by now, so wait for them rather than for time to pass.
    wait_until(lambda: streams[2].key_updates > 10 or streams[2].error, 20, "more KeyUpdates")
    for s in streams:
        s.finish()
    assert streams[2].key_updates > 10
    assert not re.search(r"[1-9][0-9]* stay to drain", b.log)
    # No reconnect: the same three sessions all along (counters add up across generations).
    assert ssl_stats(b, port)["handshake"] == 3


def test_a_tls_connection_the_new_generation_cannot_take_stays_and_drains(baton, upstreams):
    """The receiver refuses the record (here: its config lost the cluster; a 0.1.0 receiver
    does not adopt tls-tcp at all): the connection resumes in the old generation, exactly where
    it paused, and drains there with every byte intact."""
    import yaml
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa"))), concurrency=1)
    stream = TlsEchoStream(port, client_context(ca), rate=1 << 20).start()
    wait_until(lambda: stream.got > 65536, 20, "the stream to flow")
    renamed = tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa")), cluster="renamed")
    renamed["admin"] = yaml.safe_load(b.config.read_text())["admin"]
    b.config.write_text(yaml.safe_dump(renamed))
    result = b.reload()
    assert result.returncode == 0, result.stderr
    wait_until(lambda: "1 stay to drain" in b.log, 20, "the connection to stay")
    before = stream.got
    wait_until(lambda: stream.got > before + 65536 or stream.error, 20, "the stream to flow on")
    stream.finish()
    assert tls_roundtrip(port, client_context(ca)) == b"ping"      # the new generation serves


def test_a_reload_waits_for_the_upstream_connect_after_the_handshake(baton):
    """A connection whose handshake is done but whose upstream connect is in flight at the
    reload (WHEN_IDLE) moves as soon as it is open, with nothing read or written before."""
    import threading
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(0)                  # room for one connection in the accept queue
    filler = socket.create_connection(upstream.getsockname(), timeout=10)   # ...now taken
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(tls_bootstrap(port, upstream.getsockname()[1], tls_transport_socket(leaf(ca, "ecdsa")),
                            connect_timeout="15s"), concurrency=1)
    served = []

    def accept_and_echo():
        for _ in range(2):              # the filler, then Baton's connection
            conn, _ = upstream.accept()
            served.append(conn)
        conn.settimeout(20)
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass                        # closed by the test's cleanup
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
                # Handshaken; Baton's SYN now waits for room in the upstream's accept queue.
                wait_until(lambda: b.stats()["cluster.backend.upstream_cx_total"] == 1, 10,
                           "Baton to dial the upstream")
                old = b.master_pid()
                result = b.reload()
                assert result.returncode == 0, result.stderr
                echo = threading.Thread(target=accept_and_echo, daemon=True)
                echo.start()            # room again: Baton's retried SYN gets through
                b.wait_previous_gone(old)
                assert re.search(r"worker 0: moved 1 of 1 connection", b.log), b.log[-2000:]
                tls.sendall(b"after the move")
                assert tls.recv(100) == b"after the move"
    finally:
        for conn in served:
            conn.close()
        filler.close()
        upstream.close()
