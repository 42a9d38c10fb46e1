"""An HTTP/1.1 connection in its idle drain (close_policy.py) that a reload exports and then
resumes, because the receiver refused its record (connection_move.py `resume`), keeps draining
as one that never moved: its drain deadline comes back as the idle drain's timer, not HTTP/2's
final GOAWAY, so a request in flight at that deadline still ends the connection once answered
(before, `idle_draining` stayed set and the connection stayed open until the client left)."""

from __future__ import annotations

import socket
from pathlib import Path

from .test_http_connection_timeouts import (REQUEST, TIMEOUT, HalfClosing, Rig, _answer,
                                            _connection, _run_until, loop)  # noqa: F401


class Exportable(HalfClosing):
    """A transport with a real socket behind it, for export()'s descriptor copy."""

    def __init__(self, sock):
        super().__init__()
        self.sock = sock

    def get_extra_info(self, key, default=None):
        return self.sock if key == "socket" else super().get_extra_info(key, default)


def _drained(tmp_path: Path, loop, moved: bool) -> tuple:
    """(idle_draining, closed) after a request in flight at the drain deadline is answered."""
    tmp_path.mkdir()
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.idle_timeout = TIMEOUT
    rig.conn.hcm.drain_timeout = 3 * TIMEOUT
    near, far = socket.socketpair()
    try:
        conn = _connection(rig, Exportable(near))
        conn.data_received(REQUEST)
        _answer(rig, conn)
        _run_until(loop, lambda: conn.idle_draining, 3)
        if moved:                       # a reload's export the receiver refused
            conn.export()
            conn.resume()
            assert conn.idle_draining and conn.drain_timer is not None
        conn.data_received(REQUEST)     # in flight when the drain deadline passes
        _run_until(loop, lambda: conn.drain_timer is None, 3)
        _answer(rig, conn)
        _run_until(loop, lambda: conn.closed, 2)
        return conn.idle_draining, conn.closed
    finally:
        near.close()
        far.close()


def test_an_idle_drain_resumed_after_a_refused_move_still_ends_the_connection(
        tmp_path: Path, loop):
    assert _drained(tmp_path / "here", loop, moved=False) == (False, True)
    assert _drained(tmp_path / "resumed", loop, moved=True) == (False, True)
