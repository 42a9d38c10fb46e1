"""Which tunnels move with both sockets (worker/proxy/http/tunnel_move.py): only toward a
receiver that adopts record http-tunnel. An older generation (a rollback to a release, or
0.1.0) does not, so the tunnel moves client-only (tcp-split), which it knows."""

from types import SimpleNamespace

from baton.worker.proxy.http import tunnel_move


class Transport:
    def get_write_buffer_size(self):
        return 0

    def is_closing(self):
        return False


def tunnel(accepts) -> SimpleNamespace:
    upstream = SimpleNamespace(closed=False, transport=Transport(),
                               pool=SimpleNamespace(tls=None, http2=False,
                                                    host=SimpleNamespace(address="127.0.0.1")))
    ureq = SimpleNamespace(done=False, headers_received=True, request_complete=False,
                           response_complete=False, conn=upstream)
    stream = SimpleNamespace(router=SimpleNamespace(upstream=ureq))
    return SimpleNamespace(worker=SimpleNamespace(handoff_accepts=accepts), tls=None,
                           active=stream), ureq


def test_both_sockets_move_only_to_a_receiver_that_adopts_the_record():
    conn, ureq = tunnel({tunnel_move.RECORD: [1], "tcp-split": [1]})
    assert tunnel_move.movable_upstream(conn) is ureq
    older, _ = tunnel({"tcp-split": [1], "http1-idle": [1]})
    assert tunnel_move.movable_upstream(older) is None


def test_a_half_closed_or_tls_or_http2_or_internal_tunnel_moves_client_only():
    for change in (lambda c, u: setattr(u, "request_complete", True),
                   lambda c, u: setattr(u, "response_complete", True),
                   lambda c, u: setattr(c, "tls", object()),
                   lambda c, u: setattr(u.conn.pool, "http2", True),
                   lambda c, u: setattr(u.conn.pool, "tls", object()),
                   lambda c, u: setattr(u.conn.pool.host, "address", "internal:inner"),
                   lambda c, u: setattr(u, "headers_received", False)):
        conn, ureq = tunnel({tunnel_move.RECORD: [1]})
        change(conn, ureq)
        assert tunnel_move.movable_upstream(conn) is None


def test_an_export_that_runs_out_of_descriptors_leaves_the_upstream_reading(monkeypatch):
    """EMFILE at the upstream socket's dup: nothing was taken, so the upstream still reads
    (the mover keeps the tunnel here: the caller resumes the client side)."""
    import os
    import socket

    conn, ureq = tunnel({tunnel_move.RECORD: [1]})
    a, b = socket.socketpair()
    reading = []
    ureq.conn.transport.get_extra_info = lambda name: a
    ureq.conn.transport.pause_reading = lambda: reading.append(False)
    conn.moving_upstream = None

    def no_descriptors(fd):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(os, "dup", no_descriptors)
    try:
        tunnel_move.export(conn, ureq, {})
    except OSError:
        pass
    else:
        raise AssertionError("export should have failed")
    finally:
        a.close()
        b.close()
    assert reading == [] and conn.moving_upstream is None
