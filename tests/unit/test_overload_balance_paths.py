"""What the overload manager's reset_high_memory_stream counts for a stream
(worker/overload_reset.py stream_balance) does not depend on the path the stream took: a
request sent by the Stream's straight step (straight.py), which is its own router, counts its
upstream connection's unsent bytes as the Router's UpstreamRequest does (before, none: the
straight step carries HTTP/2 and filter-chain streams too, so they ranked lower than the same
stream on the Router's path)."""

from __future__ import annotations

from pathlib import Path

from baton.worker.overload_reset import stream_balance

from .test_http_express import REQUEST, Rig, _router_only, loop  # noqa: F401 - fixtures


def _balance(rig) -> int:
    rig.conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    upstream.transport.get_write_buffer_size = lambda: 5000     # the upstream does not read
    return stream_balance(rig.conn.active)


def test_a_straight_stream_counts_its_upstreams_unsent_bytes_as_the_router_does(
        tmp_path: Path, loop):
    (tmp_path / "straight").mkdir()
    (tmp_path / "router").mkdir()
    straight = _balance(Rig(tmp_path / "straight", loop, express=False))
    router = _balance(Rig(tmp_path / "router", loop, express=False, straight=False))
    assert router >= 5000
    assert straight == router
