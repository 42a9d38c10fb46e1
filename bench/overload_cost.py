"""What the overload manager costs a worker: one refresh tick (three monitors, two actions)
and the screen every accepted socket goes through under a global connection limit.

    .venv/bin/python bench/overload_cost.py

Runs the worker's own OverloadManager on a stand-in worker (no sockets): the figures are
the Python work per tick and per accept, on this machine, median of five runs.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import timeit
from types import SimpleNamespace

from baton.worker import overload_manager as om
from baton.worker.stats import Stats


class _Listener:
    held = False
    ignore_global_limit = False
    stat_global_cx_overflow = "listener.bench.downstream_global_cx_overflow"
    stat_overload_reject = "listener.bench.downstream_cx_overload_reject"
    chains = ()

    def hold(self, on):
        self.held = on


class _Loop:
    def call_soon(self, fn):
        return SimpleNamespace(cancel=lambda: None)

    def call_later(self, delay, fn):
        return SimpleNamespace(cancel=lambda: None)


def main() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".pressure", delete=False) as f:
        f.write("0.1")
    worker = SimpleNamespace(id=0, loop=_Loop(), stats=Stats(), listeners={"l": _Listener()},
                             connections={i: None for i in range(1000)})
    config = {"refresh_interval": 1.0, "loadshed_points": [],
              "monitors": [{"name": "heap", "kind": "fixed_heap", "limit": 1 << 30},
                           {"name": "cx", "kind": "downstream_connections", "limit": 10 ** 6},
                           {"name": "file", "kind": "injected_resource", "filename": f.name}],
              "actions": [{"name": om.STOP_ACCEPTING_REQUESTS,
                           "triggers": [{"monitor": "heap", "threshold": 0.95}]},
                          {"name": om.DISABLE_HTTP_KEEPALIVE,
                           "triggers": [{"monitor": "file", "scaling_threshold": 0.5,
                                         "saturation_threshold": 0.9}]}]}
    manager = om.OverloadManager(worker, config)
    listener = worker.listeners["l"]
    try:
        ticks = [timeit.timeit(manager._refresh, number=2000) / 2000 for _ in range(5)]
        screens = [timeit.timeit(lambda: manager.screen_accept(listener), number=100000) / 100000
                   for _ in range(5)]
    finally:
        manager.stop()
        os.unlink(f.name)
    print(f"refresh tick (3 monitors, 2 actions): {statistics.median(ticks) * 1e6:.0f} us")
    print(f"accept screen, global connection limit: {statistics.median(screens) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
