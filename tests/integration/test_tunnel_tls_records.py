"""tcp_proxy tunneling_config over an upstream TLS session whose peer writes every record in
two pieces (tests/integration/split_tls_connect.py): a read that holds part of a record gives
no plaintext yet, and must not be taken for the upstream's end. Before, the tunnel was refused
while connecting, or the client got an early FIN and lost the rest of the stream."""

from __future__ import annotations

import sys
from pathlib import Path

from ..tls_certs import leaf, make_ca
from .conftest import Baton, free_port, start_ready_process
from .test_hbone_tunnel import MESSAGES, originator, tunnel_round_trip
from .tls_upstream import upstream_tls_socket

TERMINATOR = Path(__file__).resolve().parent / "split_tls_connect.py"


def test_a_tunnel_over_tls_takes_records_split_across_reads(tmp_path):
    ca = make_ca("ecdsa")
    cert, key = leaf(ca).write(tmp_path, "terminator")
    proc, port = start_ready_process([sys.executable, str(TERMINATOR), cert, key])
    try:
        config = originator(free_port(), free_port(), port, "h1")
        cluster = config["static_resources"]["clusters"][0]
        cluster["transport_socket"] = upstream_tls_socket(ca, alpn=["http/1.1"])
        listen = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        b = Baton(tmp_path / "baton", config, concurrency=1).start()
        try:
            assert tunnel_round_trip(listen) == list(MESSAGES)
            assert "Traceback" not in b.log
        finally:
            b.stop()
    finally:
        proc.kill()
        proc.wait(10)
