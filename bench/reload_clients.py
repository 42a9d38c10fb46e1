"""Client side of the reload benchmark.

Two things live here:

- `IdleClients`, used inside bench/reload.py: opens N connections through a proxy to the echo
  upstream, checks each one end to end, holds them idle while the proxy reloads, then checks
  every one again (a byte sent must come back).
- the steady load, run as its own process so that the benchmark's own work (starting
  `baton reload`, polling pids) does not disturb its timing:

      .venv/bin/python bench/reload_clients.py load --port P [--conn-rate R] [--long N] ...

  (a) "churn": new connection per exchange — connect, send 1 KiB, read the 1 KiB echo,
      compare, close — at a fixed total rate from a few concurrent tasks;
  (b) "long": N long-lived connections, each doing one 1 KiB exchange every --long-interval
      seconds for as long as it lives. A broken one is counted and replaced by a new one.
- two more loads for the HTTP and UDP phases, the same way (until SIGTERM, then one JSON line):

      .venv/bin/python bench/reload_clients.py slow --port P   # 2 s responses and 2 s SSE streams
      .venv/bin/python bench/reload_clients.py udp --port P    # numbered datagrams, echoes counted
      .venv/bin/python bench/reload_clients.py h2load --port P # h2load -c10 -m10 runs back to back

  The steady load runs until SIGTERM, lets the exchanges in flight finish, and prints one
  JSON object on stdout: counts per load and per failure kind, and every failure and every
  slow exchange with its CLOCK_MONOTONIC time (the same clock as the benchmark's, so failures
  can be placed against reload windows).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import re
import resource
import selectors
import signal
import socket
import sys
import time

HOST = "127.0.0.1"
PAYLOAD = 1024


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def classify(exc: BaseException) -> str:
    """A short failure kind for a client-side exception."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed" if not exc.partial else "short"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return type(exc).__name__


# ---- idle connections (in-process) ------------------------------------------------------------

class IdleClients:
    """N established connections through the proxy, idle between checks.

    Opened in batches (connect a batch, send one byte on each, read every echo) so the proxy's
    accept queue never overflows and every connection is proven open end to end — the proxy
    has connected its upstream side — before the next batch starts.
    """

    def __init__(self, port: int, count: int, batch: int = 500, timeout: float = 30.0):
        self.port = port
        self.count = count
        self.batch = batch
        self.timeout = timeout
        self.socks: list[socket.socket] = []

    def open(self) -> dict:
        """Open them all; returns {"opened", "failed": {kind: n}, "seconds"}."""
        failed: dict[str, int] = {}
        t0 = time.monotonic()
        while len(self.socks) < self.count:
            n = min(self.batch, self.count - len(self.socks))
            fresh = []
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(self.timeout)
                try:
                    s.connect((HOST, self.port))
                except OSError as exc:
                    s.close()
                    failed[classify(exc)] = failed.get(classify(exc), 0) + 1
                    if sum(failed.values()) > 50:
                        raise RuntimeError(f"cannot open idle connections: {failed}")
                    continue
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                fresh.append(s)
            good, bad = self._check(fresh, b"o")
            for kind, socks in bad.items():
                failed[kind] = failed.get(kind, 0) + len(socks)
                for s in socks:
                    s.close()
            self.socks += good
            if sum(failed.values()) > 50:
                raise RuntimeError(f"cannot open idle connections: {failed}")
        return {"opened": len(self.socks), "failed": failed, "seconds": time.monotonic() - t0}

    def verify(self) -> dict:
        """Send a byte on every connection and read its echo: {"ok", "failed": {kind: n}}."""
        good, bad = [], {}
        for i in range(0, len(self.socks), self.batch):
            g, b = self._check(self.socks[i:i + self.batch], b"v")
            good += g
            for kind, socks in b.items():
                bad.setdefault(kind, []).extend(socks)
        failed = {kind: len(socks) for kind, socks in bad.items()}
        for socks in bad.values():
            for s in socks:
                s.close()
        self.socks = good
        return {"ok": len(good), "failed": failed}

    def _check(self, socks: list[socket.socket], byte: bytes):
        """One byte out on each socket, the same byte back; (good, {kind: [bad sockets]})."""
        bad: dict[str, list[socket.socket]] = {}
        waiting = {}
        sel = selectors.DefaultSelector()
        for s in socks:
            try:
                s.send(byte)
            except OSError as exc:
                bad.setdefault(classify(exc), []).append(s)
                continue
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            waiting[s.fileno()] = s
        good = []
        deadline = time.monotonic() + self.timeout
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                s = key.fileobj
                try:
                    data = s.recv(16)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    kind = classify(exc)
                else:
                    kind = None if data == byte else ("closed" if not data else "wrong")
                sel.unregister(s)
                del waiting[s.fileno()]
                if kind is None:
                    good.append(s)
                else:
                    bad.setdefault(kind, []).append(s)
        for s in waiting.values():
            sel.unregister(s)
            bad.setdefault("timeout", []).append(s)
        sel.close()
        for s in good:
            s.settimeout(self.timeout)
        return good, bad

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


# ---- the steady load (its own process) --------------------------------------------------------

class Stats:
    def __init__(self, slow_s: float):
        self.slow_s = slow_s
        self.ok = {"churn": 0, "long": 0}
        self.failed = {"churn": {}, "long": {}}
        self.long_connects = 0          # long-lived connections opened (the first N, then replacements)
        self.events: list[list] = []    # [time, load, kind] for every failure
        self.slow: list[list] = []      # [time, load, seconds] for every exchange slower than slow_s
        self.max_latency = {"churn": 0.0, "long": 0.0}

    def success(self, load: str, started: float) -> None:
        self.ok[load] += 1
        took = time.monotonic() - started
        if took > self.max_latency[load]:
            self.max_latency[load] = took
        if took > self.slow_s:
            self.slow.append([round(started, 4), load, round(took, 4)])

    def failure(self, load: str, kind: str) -> None:
        self.failed[load][kind] = self.failed[load].get(kind, 0) + 1
        self.events.append([round(time.monotonic(), 4), load, kind])


def _payload(tag: int) -> bytes:
    head = b"%016d|" % tag
    return head + bytes((tag + i) % 251 for i in range(PAYLOAD - len(head)))


async def _exchange(reader, writer, tag: int, timeout: float) -> None:
    data = _payload(tag)
    writer.write(data)
    got = await asyncio.wait_for(reader.readexactly(len(data)), timeout)
    if got != data:
        raise ValueError("wrong answer")


def _close(writer) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - already broken
        pass


async def churn_task(args, stats: Stats, stop: asyncio.Event, index: int, tasks: int) -> None:
    """New connection per exchange, paced so that all tasks together make --conn-rate per s."""
    interval = tasks / args.conn_rate
    next_at = time.monotonic() + interval * index / tasks
    tag = index
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except asyncio.TimeoutError:
                pass
        next_at = max(next_at + interval, time.monotonic() - interval)   # no catch-up bursts
        tag += tasks
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, args.port), args.timeout)
            await _exchange(reader, writer, tag, args.timeout)
        except ValueError:
            stats.failure("churn", "wrong")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            stats.failure("churn", classify(exc))
        else:
            stats.success("churn", started)
        finally:
            if writer is not None:
                _close(writer)


async def long_task(args, stats: Stats, stop: asyncio.Event, index: int) -> None:
    """One long-lived connection doing an exchange every --long-interval s; replaced if broken."""
    tag = index
    await asyncio.sleep(args.long_interval * index / max(1, args.long))    # spread the exchanges
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, args.port), args.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            stats.failure("long", "connect " + classify(exc))
            await asyncio.sleep(0.05)
            continue
        stats.long_connects += 1
        try:
            while not stop.is_set():
                tag += args.long
                started = time.monotonic()
                await _exchange(reader, writer, tag, args.timeout)
                stats.success("long", started)
                try:
                    await asyncio.wait_for(stop.wait(), args.long_interval)
                except asyncio.TimeoutError:
                    pass
        except ValueError:
            stats.failure("long", "wrong")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            stats.failure("long", classify(exc))
        finally:
            _close(writer)
        if not stop.is_set():
            await asyncio.sleep(0.01)   # then replace the broken connection


async def run_load(args) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = Stats(args.slow)
    tasks = [asyncio.ensure_future(churn_task(args, stats, stop, i, args.conn_tasks))
             for i in range(args.conn_tasks if args.conn_rate > 0 else 0)]
    tasks += [asyncio.ensure_future(long_task(args, stats, stop, i)) for i in range(args.long)]
    t0 = time.monotonic()
    print(json.dumps({"started": t0}), flush=True)
    await stop.wait()
    t1 = time.monotonic()
    # Exchanges in flight finish (each is bounded by --timeout); nothing new starts.
    done, pending = await asyncio.wait(tasks, timeout=args.timeout + 2)
    for t in pending:
        t.cancel()
    return {"started": t0, "stopped": t1, "ok": stats.ok, "failed": stats.failed,
            "long_connects": stats.long_connects, "max_latency": stats.max_latency,
            "events": stats.events, "slow": stats.slow, "unfinished_tasks": len(pending)}


# ---- slow HTTP/1.1 responses (its own process) -------------------------------------------------

class HttpStats:
    """Requests ok / failed per kind of request, every failure with its time."""

    def __init__(self, kinds: tuple[str, ...]):
        self.ok = {k: 0 for k in kinds}
        self.failed: dict[str, dict[str, int]] = {k: {} for k in kinds}
        self.events: list[list] = []
        self.reconnects = 0         # connections the proxy closed cleanly (connection: close)

    def failure(self, kind: str, what: str) -> None:
        self.failed[kind][what] = self.failed[kind].get(what, 0) + 1
        self.events.append([round(time.monotonic(), 4), kind, what])


async def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: (status, lower-case headers, body), content-length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, bytes(body)
            body += (await reader.readexactly(size + 2))[:-2]
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


async def slow_task(args, stats: HttpStats, stop: asyncio.Event, kind: str) -> None:
    """Keep-alive requests back to back on one connection: "delay" asks the recorder upstream
    to answer after --delay-ms, "events" for --events server-sent events --event-ms apart. A
    connection the proxy closes cleanly (connection: close on a complete response) is replaced
    without counting a failure; any other end of a request is one."""
    if kind == "delay":
        extra = f"x-test-delay-ms: {args.delay_ms}\r\n"
    else:
        extra = f"x-test-events: {args.events},{args.event_ms}\r\n"
    request = (f"GET /slow/{kind} HTTP/1.1\r\nhost: bench\r\n{extra}\r\n").encode()
    timeout = args.timeout + (args.delay_ms if kind == "delay" else args.events * args.event_ms) / 1000
    writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, args.port), args.timeout)
            writer.write(request)
            status, headers, body = await asyncio.wait_for(read_response(reader), timeout)
            if status != 200:
                stats.failure(kind, f"status {status}")
            elif kind == "events" and body.count(b"data: ") != args.events:
                stats.failure(kind, "events missing")
            else:
                stats.ok[kind] += 1
            if headers.get("connection", "").lower() == "close":
                stats.reconnects += 1
                _close(writer)
                writer = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            stats.failure(kind, classify(exc))
            if writer is not None:
                _close(writer)
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        _close(writer)


async def run_slow(args) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = HttpStats(("delay", "events"))
    tasks = [asyncio.ensure_future(slow_task(args, stats, stop, kind))
             for kind in ("delay", "events") for _ in range(args.connections)]
    t0 = time.monotonic()
    print(json.dumps({"started": t0}), flush=True)
    await stop.wait()
    t1 = time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=args.timeout + args.events * args.event_ms / 1000 + 5)
    for t in pending:
        t.cancel()
    return {"started": t0, "stopped": t1, "ok": stats.ok, "failed": stats.failed, "events": stats.events,
            "reconnects": stats.reconnects, "unfinished_tasks": len(pending)}


# ---- UDP datagrams (its own process) -----------------------------------------------------------

class UdpSession(asyncio.DatagramProtocol):
    """One client socket (one proxy session): numbered datagrams out, their echoes back."""

    def __init__(self, index: int):
        self.index = index
        self.sent: dict[int, float] = {}     # sequence -> send time, until its echo arrives
        self.answered = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            seq = int(data.split(b"|", 2)[1])
        except (IndexError, ValueError):
            return
        if self.sent.pop(seq, None) is not None:
            self.answered += 1

    def error_received(self, exc):
        pass        # ICMP unreachable while nobody listens: the datagram just counts as lost


async def run_udp(args) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sessions = []
    for i in range(args.sessions):
        _, proto = await loop.create_datagram_endpoint(lambda i=i: UdpSession(i), remote_addr=(HOST, args.port))
        sessions.append(proto)
    interval = args.sessions / args.rate
    t0 = time.monotonic()
    print(json.dumps({"started": t0}), flush=True)
    seq, sent = 0, 0
    next_at = t0
    while not stop.is_set():
        for s in sessions:
            seq += 1
            s.sent[seq] = time.monotonic()
            s.transport.sendto(b"u|%d|%s" % (seq, b"p" * 48))
            sent += 1
        next_at = max(next_at + interval, time.monotonic() - interval)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    t1 = time.monotonic()
    await asyncio.sleep(args.timeout)      # the last echoes
    lost = sorted(t for s in sessions for t in s.sent.values())
    for s in sessions:
        s.transport.close()
    return {"started": t0, "stopped": t1, "ok": {"datagrams": sum(s.answered for s in sessions)},
            "sent": sent, "failed": {"datagrams": {"lost": len(lost)} if lost else {}},
            "events": [[round(t, 4), "datagrams", "lost"] for t in lost]}


# ---- h2load runs back to back (its own process) -----------------------------------------------

H2LOAD_SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                            r"(\d+) failed, (\d+) errored, (\d+) timeout")
H2LOAD_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")


async def run_h2load(args) -> dict:
    """h2load -c10 -m10 in runs of --run-seconds, one after the other until SIGTERM (h2load
    prints its counts only at the end of a run); the run in progress then finishes."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ok, failed, runs, seconds = 0, {}, [], 0.0
    t0 = time.monotonic()
    print(json.dumps({"started": t0}), flush=True)
    while not stop.is_set():
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "h2load", f"-c{args.clients}", f"-m{args.streams}", "-D", str(args.run_seconds),
            f"http://{HOST}:{args.port}/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), args.run_seconds + 60))[0].decode(errors="replace")
        summary, codes, finished = H2LOAD_SUMMARY.search(out), H2LOAD_CODES.search(out), H2LOAD_FINISHED.search(out)
        if not summary or not codes:
            failed["no summary"] = failed.get("no summary", 0) + 1
            runs.append({"started": started, "output": out[-2000:]})
            continue
        total, _, done, succeeded, n_failed, errored, timeouts = map(int, summary.groups())
        non2xx = sum(map(int, codes.groups()[1:]))
        for kind, n in (("failed", n_failed), ("errored", errored), ("timeout", timeouts), ("non-2xx", non2xx)):
            if n:
                failed[kind] = failed.get(kind, 0) + n
        ok += int(codes.group(1))
        if finished:
            seconds += float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
        runs.append({"started": started, "ended": time.monotonic(), "succeeded": succeeded,
                     "failed": n_failed, "errored": errored, "timeout": timeouts, "non2xx": non2xx})
    return {"started": t0, "stopped": time.monotonic(), "ok": {"requests": ok}, "failed": {"requests": failed},
            "requests_per_s": ok / seconds if seconds else float("nan"), "runs": runs, "events": []}


def parse_h2load_args(argv):
    ap = argparse.ArgumentParser(prog="reload_clients.py h2load")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=10, help="h2load -c")
    ap.add_argument("--streams", type=int, default=10, help="h2load -m")
    ap.add_argument("--run-seconds", type=int, default=15, help="h2load -D of each run")
    return ap.parse_args(argv)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="reload_clients.py load")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conn-rate", type=float, default=300.0, help="new connections per second (a)")
    ap.add_argument("--conn-tasks", type=int, default=8, help="concurrent tasks making them")
    ap.add_argument("--long", type=int, default=50, help="long-lived connections (b)")
    ap.add_argument("--long-interval", type=float, default=0.05,
                    help="seconds between two exchanges on one long-lived connection")
    ap.add_argument("--timeout", type=float, default=5.0, help="connect or exchange timeout")
    ap.add_argument("--slow", type=float, default=0.1, help="report exchanges slower than this")
    return ap.parse_args(argv)


def parse_slow_args(argv):
    ap = argparse.ArgumentParser(prog="reload_clients.py slow")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10, help="keep-alive connections per kind")
    ap.add_argument("--delay-ms", type=int, default=2000, help="the delayed responses' delay")
    ap.add_argument("--events", type=int, default=20, help="server-sent events per streamed response")
    ap.add_argument("--event-ms", type=int, default=100, help="between two events")
    ap.add_argument("--timeout", type=float, default=5.0, help="connect timeout, and on top of the response's own time")
    return ap.parse_args(argv)


def parse_udp_args(argv):
    ap = argparse.ArgumentParser(prog="reload_clients.py udp")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=10, help="client sockets (proxy sessions)")
    ap.add_argument("--rate", type=float, default=200.0, help="datagrams per second, all sessions together")
    ap.add_argument("--timeout", type=float, default=2.0, help="after the stop: wait this long for echoes")
    return ap.parse_args(argv)


RUNNERS = {"load": (parse_args, run_load), "h2load": (parse_h2load_args, run_h2load), "slow": (parse_slow_args, run_slow), "udp": (parse_udp_args, run_udp)}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in RUNNERS:
        print(__doc__, file=sys.stderr)
        return 2
    parse, run = RUNNERS[argv[0]]
    args = parse(argv[1:])
    raise_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
