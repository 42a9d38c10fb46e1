"""Memory of a proxy's process tree during reloads, sampled from /proc (bench/reload.py).

RSS counts pages shared between a master and its forked workers once per process; PSS splits
them. Socket buffers and pipes are kernel memory and show in neither.
"""

from __future__ import annotations

import os
import threading
import time

import reload_report
from reload_proxies import _STARTED_MASTER, BatonCtl, LogTail

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Every `interval` s: RSS and PSS summed over every live process of every generation of
    a proxy (its ctl's process_tree()). Baton's new masters are learnt from the log line
    "reload: started new master pid N" as soon as it is written, so the new generation counts
    from its first workers on."""

    def __init__(self, ctl, interval: float = 0.02, limit_s: float = 600):
        super().__init__(daemon=True)
        self.ctl = ctl
        self.interval = interval
        self.limit_s = limit_s
        self.tail = LogTail(ctl.log_path) if isinstance(ctl, BatonCtl) else None
        self.samples: list[tuple[float, int, int, int]] = []   # (t, rss, pss, processes)
        self.halt = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.limit_s     # bounded even if nobody stops us
        while not self.halt.is_set() and time.monotonic() < end:
            if self.tail is not None:
                for pid in _STARTED_MASTER.findall(self.tail.read()):
                    self.ctl.masters.add(int(pid))
            pids = self.ctl.process_tree()
            self.samples.append((time.monotonic(), sum(_rss(p) for p in pids),
                                 sum(_pss(p) for p in pids), len(pids)))
            self.halt.wait(self.interval)

    def finish(self) -> None:
        self.halt.set()
        self.join(10)

    def summary(self, t0: float, t_gone: float) -> dict:
        def med(xs):
            return reload_report.median(xs)
        before = [s for s in self.samples if t0 - 1.0 <= s[0] < t0]
        during = [s for s in self.samples if t0 <= s[0] <= t_gone]
        after = [s for s in self.samples if t_gone + 0.5 <= s[0] <= t_gone + 1.5]
        peak = max(during, key=lambda s: s[1]) if during else (0, float("nan"), float("nan"), 0)
        return {"rss_before": med([s[1] for s in before]), "pss_before": med([s[2] for s in before]),
                "rss_peak": peak[1], "pss_peak": max((s[2] for s in during), default=float("nan")),
                "procs_at_peak": peak[3],
                "rss_after": med([s[1] for s in after]), "pss_after": med([s[2] for s in after]),
                "samples_during": len(during)}


def overlap_memory(samples: list[tuple[float, int, int, int]], spans: list[tuple[float, float]]) -> dict:
    """For a series of reloads (start, old generation exited): per reload the peak RSS/PSS of
    the whole tree while both generations ran, against the median of the samples since the
    previous reload ended (the steady state before it); medians over the reloads."""
    peaks, steadies, procs, pss_peaks, pss_steadies = [], [], [], [], []
    previous_end = float("-inf")
    for start, end in spans:
        during = [s for s in samples if start <= s[0] <= end]
        before = [s for s in samples if max(previous_end + 0.2, start - 2.0) <= s[0] < start]
        previous_end = end
        if not during or not before:
            continue
        peak = max(during, key=lambda s: s[1])
        peaks.append(peak[1])
        procs.append(peak[3])
        pss_peaks.append(max(s[2] for s in during))
        steadies.append(reload_report.median([s[1] for s in before]))
        pss_steadies.append(reload_report.median([s[2] for s in before]))
    med = reload_report.median
    return {"rss_steady": med(steadies), "rss_peak": med(peaks), "rss_peak_max": max(peaks, default=float("nan")),
            "pss_steady": med(pss_steadies), "pss_peak": med(pss_peaks), "procs_at_peak": med(procs),
            "reloads_sampled": len(peaks)}
