"""How long the old master lives after it logs "master exiting" at a `baton reload`
(bench/RESULTS.md, "Where a reload's time goes": the old master's exit).

    .venv/bin/python bench/old_master_exit.py [RELOADS] [WORKDIR]

Starts Baton (an HTTP listener, `--concurrency 2`) in front of the tests' recording upstream,
keeps one HTTP/1.1 keep-alive client that sends a request before each reload (so a connection
moves every time), and for each reload prints the time from the old master's "master exiting"
line (its log timestamp) to its exit (its pidfd turning readable), then the median and maximum.
Both clocks are the wall clock of this machine. To compare two trees, run each with
PYTHONPATH naming a directory whose `baton` is a link to that tree (`git archive` it first):
both the fixtures and the Baton processes then come from it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from baton.tests.integration.clients import Http1Reader
from baton.tests.integration.conftest import (RECORDER, Baton, free_port, http_bootstrap,
                                              start_ready_process)

EXITING = re.compile(r"^\[([^]]+)\]\[(\d+)\]\[INFO\]\[baton\.master\] all workers exited; master exiting$", re.M)


def exiting_at(log: str, pid: int) -> float:
    """When `pid` logged "master exiting" (seconds since the epoch)."""
    stamps = [m.group(1) for m in EXITING.finditer(log) if int(m.group(2)) == pid]
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def main(reloads: int, workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    upstream, upstream_port = start_ready_process([sys.executable, str(RECORDER), "app"])
    port = free_port()
    baton = Baton(workdir, http_bootstrap(free_port(), port, upstream_port))
    figures = []
    try:
        baton.start()
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        reader = Http1Reader(client)
        for i in range(reloads):
            client.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            assert reader.response()[0] == 200
            old = baton.master_pid()
            pidfd = os.pidfd_open(old)
            result = baton.reload()
            assert result.returncode == 0, result.stderr
            select.select([pidfd], [], [], 60)
            gone = time.time()
            os.close(pidfd)
            figures.append(gone - exiting_at(baton.log, old))
            print(f"reload {i + 1}: old master {old} exited {figures[-1] * 1000:.0f} ms after "
                  "'master exiting'", flush=True)
        client.close()
    finally:
        baton.stop()
        upstream.kill()
        upstream.wait(10)
    print(f"median {statistics.median(figures) * 1000:.0f} ms, max {max(figures) * 1000:.0f} ms "
          f"over {len(figures)} reloads; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6,
         Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/baton-old-master-exit"))
