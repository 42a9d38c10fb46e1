"""A finished HTTP/2 request leaves nothing for the garbage collector: its objects (the Stream,
its StreamInfo and Router, the Request and Response with their Headers, ~18 objects) go by
reference counting when the stream ends. While the Stream and its Router pointed at each other,
every request was a cycle that only a collection freed: ~10% of the in-process CPU of an
HTTP/2 request (bench/RESULTS.md, issue 17)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections import Counter
from pathlib import Path

from tests.unit.test_http_express import Rig

# bench/h2_cost.py's rig helpers (bench/ is not a package).
_spec = importlib.util.spec_from_file_location(
    "h2_cost", Path(__file__).resolve().parents[2] / "bench" / "h2_cost.py")
h2_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h2_cost)


def test_finished_requests_leave_no_cycles(tmp_path):
    loop = asyncio.new_event_loop()
    rig = Rig(tmp_path, loop)
    ups = list(rig.upstreams.values()) + h2_cost.idle_upstreams(rig)
    client = h2_cost.H2loadClient()
    conn, down = rig.conn, rig.down
    conn.data_received(client.PREFACE)
    conn.data_received(client.SETTINGS_ACK)
    down.take()

    def batch() -> int:
        conn.data_received(client.batch())
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(h2_cost.RESPONSE)
        loop.call_soon(loop.stop)
        loop.run_forever()
        return down.take().count(b"\x00\x00\x40\x00\x01")    # 64-byte DATA, END_STREAM

    enabled = gc.isenabled()
    gc.disable()
    try:
        assert batch() == 10        # caches and first-use objects made here
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        answered = sum(batch() for _ in range(3))
        found = gc.collect()
        kinds = Counter(type(obj).__name__ for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
        loop.close()
    assert answered == 30
    assert found < 10, f"{found} objects in cycles after 30 requests: {kinds.most_common(8)}"
