"""How long Baton's worker loop is held, for bench/abuse.py --turns (never part of Baton).

Put this directory on a Baton process's PYTHONPATH with BATON_LOOP_PROBE=<directory>: Python
imports this module at start, and it wraps uvloop.run so that each worker's loop runs a 1 ms
timer that notes, between two of its calls, the thread CPU time the loop spent (the work of
the loop iterations in between: what another connection waited for, whatever else ran on the
machine) and the wall time. The pairs go to <directory>/<pid>.txt twice a second, one line
"<unix time> <cpu us>,<wall us> ...". The master's loop is left alone.
"""

import os
import time

_DIRECTORY = os.environ.get("BATON_LOOP_PROBE")
_INTERVAL = 0.001
_WRITE_EVERY = 0.5

if _DIRECTORY:
    import uvloop

    _run = uvloop.run

    def _probe(loop) -> None:
        path = os.path.join(_DIRECTORY, f"{os.getpid()}.txt")
        samples = []
        state = {"cpu": time.thread_time(), "wall": time.perf_counter(), "written": time.time()}

        def tick() -> None:
            cpu, wall = time.thread_time(), time.perf_counter()
            samples.append(f"{(cpu - state['cpu']) * 1e6:.0f},"
                           f"{(wall - state['wall'] - _INTERVAL) * 1e6:.0f}")
            now = time.time()
            if now - state["written"] >= _WRITE_EVERY:
                state["written"] = now
                with open(path, "a") as out:
                    out.write(f"{now:.3f} {' '.join(samples)}\n")
                samples.clear()
            loop.call_later(_INTERVAL, tick)
            state["cpu"], state["wall"] = time.thread_time(), time.perf_counter()

        loop.call_later(_INTERVAL, tick)

    def run(main, **kwargs):
        async def probed():
            import asyncio
            with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
                if b"worker" in f.read():
                    _probe(asyncio.get_running_loop())
            return await main
        return _run(probed(), **kwargs)

    uvloop.run = run
