"""What a reload may do with tcp_proxy connections and tunneling_config (tunneling.py): an
open "tcp" record is refused by a worker whose chain for it now tunnels (the adopted
connection would send a CONNECT into a stream already open and drop what it held), and a
tunneling connection is never exported as a plain one."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker import connection
from baton.worker.connection import Lifecycle, Move
from baton.worker.proxy import tcp_proxy  # noqa: F401  (registers the "tcp" record)
from baton.worker.proxy.tunneling import TunnelingConnection

WORKER = SimpleNamespace(clusters={"backend": object()})
FIELDS = {"listener": "main", "chain": 0, "cluster": "backend"}


def listener(tcp_proxy: dict) -> SimpleNamespace:
    chain = SimpleNamespace(tcp_proxy=tcp_proxy)
    return SimpleNamespace(chains=[chain], default_chain=chain)


def test_an_open_tcp_record_is_refused_by_a_chain_that_now_tunnels():
    tunnels = listener({"clusters": [("backend", 1)], "tunneling": {"hostname": "h"}})
    assert "tunneling_config" in connection.refusal("tcp", WORKER, tunnels, FIELDS)
    plain = listener({"clusters": [("backend", 1)]})
    assert connection.refusal("tcp", WORKER, plain, FIELDS) is None
    past_the_chains = dict(FIELDS, chain=3)         # adopted into the default chain
    assert connection.refusal("tcp", WORKER, tunnels, past_the_chains) is not None


def test_a_tunneling_connection_never_moves():
    for state in (Lifecycle.CONNECTING, Lifecycle.OPEN):
        conn = object.__new__(TunnelingConnection)
        conn.state = state
        assert conn.readiness() is Move.NEVER
