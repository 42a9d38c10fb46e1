"""`make run` (examples/quickstart.py): its watched connection goes on through `baton reload`,
and Ctrl-C leaves no process of the run behind, with or without reloads in between.

The quickstart listens on fixed ports (examples/quickstart.yaml), so it runs in a network
namespace of its own (`unshare --net`, deleted with its last process): other runs on this
machine cannot collide with it. Ctrl-C is SIGINT to the whole process group, as a terminal
sends it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from .conftest import BATON, pid_alive

ROOT = Path(__file__).resolve().parents[2]
TICK = re.compile(r"\[watch\] tick (\d+) echoed over the same connection .*; master pid (\d+)")


class Quickstart:
    def __init__(self, tmp: Path):
        self.runtime_dir = tmp / "run"
        self.stderr = open(tmp / "quickstart.err", "w+")
        self.lines: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
             sys.executable, str(ROOT / "examples" / "quickstart.py")],
            env={**os.environ, "BATON_RUNTIME_DIR": str(self.runtime_dir)},
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.seen: set[int] = set()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_tick(self, timeout: float = 30.0) -> tuple[int, int]:
        """(count, master pid) of the next "[watch]" line; fails on a broken connection."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"the quickstart exited:\n{self.log()}"
            assert "broke" not in line, line
            match = TICK.search(line)
            if match:
                self.note_processes()
                return int(match.group(1)), int(match.group(2))

    def note_processes(self) -> None:
        self.seen |= {p.pid for p in self.session()}

    def session(self) -> list[psutil.Process]:
        out = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid:
                    out.append(proc)
            except OSError:
                pass
        return out

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-4000:]

    def ctrl_c(self) -> int:
        self.note_processes()
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(30)

    def kill(self) -> None:
        for proc in self.session():
            proc.kill()


@pytest.mark.parametrize("reloads", [0, 2])
def test_the_watched_connection_survives_reloads_and_ctrl_c_leaves_nothing(tmp_path, reloads):
    qs = Quickstart(tmp_path)
    try:
        count, master = qs.next_tick(60)
        for _ in range(reloads):
            result = subprocess.run([BATON, "reload", "--runtime-dir", str(qs.runtime_dir)],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr + qs.log()
            # The count goes on, one by one, over the same connection, under a new master.
            while True:
                following, now = qs.next_tick()
                assert following == count + 1
                count = following
                if now != master:
                    master = now
                    break
        following, _ = qs.next_tick()
        assert following == count + 1
        code = qs.ctrl_c()
        assert code == 0, (code, qs.log())
    finally:
        qs.stderr.close()
        if qs.proc.poll() is None:
            qs.kill()
    assert qs.session() == []
    assert not any(pid_alive(p) for p in qs.seen)
