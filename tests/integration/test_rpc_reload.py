"""Dubbo and Bolt connections through `baton reload` and `baton recycle` (issue 16 point 4):
each moves to the new generation at once, with the bytes of a frame not complete yet; the
requests already sent upstream are answered by the old worker through the new one
(worker/proxy/rpc/move.py). The clients never reconnect and every answer reaches its own
request id exactly once."""

from __future__ import annotations

from baton.tests.integration.conftest import free_port, pid_alive
from baton.tests.integration.rpc_peers.frames import bolt_request, dubbo_request, dubbo_value
from baton.tests.integration.rpc_peers.stream import SERVICE, RpcStream
from baton.tests.integration.test_rpc_proxy import (RawClient, processes, provider,  # noqa: F401
                                                   rpc_bootstrap)
from baton.tests.waiting import wait_until

RELOADS = 20            # issue 16: "through 20 reloads"


def rpc_baton(baton, processes):
    ports = {"dubbo": free_port(), "bolt": free_port()}
    clusters = {"up": provider(processes, "dubbo", "P"), "bolt_up": provider(processes, "bolt", "Q")}
    routes = {"bolt": [{"interface": SERVICE, "routes": [
        {"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
         "route": {"cluster": "bolt_up"}}]}]}
    return baton(rpc_bootstrap(free_port(), ports, clusters, routes=routes), concurrency=1), ports


def test_pipelined_dubbo_and_bolt_streams_go_through_reloads_and_a_recycle(baton, processes):
    b, ports = rpc_baton(baton, processes)
    # Slow calls of 0.15-0.5 s: with up to 16 in flight per stream, every reload finds some, and
    # each old generation is gone within half a second of its move (with calls of 0.3-1 s, each
    # of the 21 rounds waited about 0.9 s for it).
    streams = [RpcStream(kind, ports[kind], seed=i, slow_seconds=(0.15, 0.5)).start()
               for i, kind in enumerate(("dubbo", "dubbo", "bolt", "bolt"))]
    try:
        for round_ in range(RELOADS + 1):
            # Traffic on every connection in this generation, slow calls in flight included.
            marks = [s.answered for s in streams]
            wait_until(lambda: all(s.answered >= m + 30 for s, m in zip(streams, marks))
                       or any(s.errors for s in streams), 30, "answers in this generation")
            assert not any(s.errors for s in streams), [s.errors for s in streams]
            # The old generation (or recycled worker) ends once the slow calls it still
            # serves are answered; at most two generations run at once.
            old = [b.master_pid()] if round_ < RELOADS else b.worker_pids()
            result = b.reload() if round_ < RELOADS else b.cli("recycle", "--worker", "0",
                                                               timeout=120)
            assert result.returncode == 0, result.stderr
            wait_until(lambda: not any(map(pid_alive, old)), 30, f"{old} to exit")
    finally:
        for s in streams:
            s.stop()
    for s in streams:
        assert s.errors == [], (s.kind, s.errors[:5])
        assert s.answered == s.sent and s.sent > 100 * (RELOADS // 2)
    # Every connection is still the first one its client opened.
    stats = b.stats()
    assert [v for k, v in stats.items() if k.endswith("downstream_cx_total")] == [2, 2], stats


def test_a_call_in_flight_at_a_reload_is_answered_and_the_connection_serves_on(baton, processes):
    """A slow call and half a frame cross the reload: the old generation answers the call
    through the new one, which completes the frame and serves the next calls itself."""
    b, ports = rpc_baton(baton, processes)
    d, q = RawClient("dubbo", ports["dubbo"]), RawClient("bolt", ports["bolt"])
    slow = dubbo_request(1, SERVICE, "sleep", ["1.5"])
    half = dubbo_request(2, SERVICE, "echo", ["split"])
    d.send(slow, half[:20])
    q.send(bolt_request(1, f"{SERVICE}:1.0", "sleepy", extra_headers={"delay": "1.5"}))
    wait_until(lambda: b.stats()["dubbo.rpc_in.request_active"] == 1 and
               b.stats()["bolt.rpc_in.request_active"] == 1, 10, "the calls in flight")
    old = b.master_pid()
    assert b.reload().returncode == 0
    d.send(half[20:], dubbo_request(3, SERVICE, "echo", ["new"]))
    answers = {f.request_id: dubbo_value(f) for f in d.receive(3)}
    assert answers == {1: "P:sleep:1.5", 2: "P:echo:split", 3: "P:echo:new"}
    assert q.receive(1)[0].request_id == 1
    b.wait_previous_gone(old)           # its last answers forwarded, the old generation ends
    q.send(bolt_request(2, f"{SERVICE}:1.0", "hello"))
    assert q.receive(1)[0].request_id == 2
    stats = b.stats()                   # counters carry across generations
    assert stats["dubbo.rpc_in.request"] == 3 and stats["bolt.rpc_in.request"] == 2
    assert stats["dubbo.rpc_in.response_success"] == 3
    d.close()
    q.close()
