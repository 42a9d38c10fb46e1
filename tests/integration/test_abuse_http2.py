"""Issue 13, points 1 and 2: one hostile HTTP/2 client cannot starve a worker.

A real `baton run` with one worker serves an HTTP listener and a tcp_proxy echo listener.
Each test runs one attack of the issue from h2_abuse.py (rapid reset, many streams with a
WINDOW_UPDATE per DATA frame, PING and SETTINGS floods from a client that never reads,
responses it never reads, an empty CONTINUATION flood, a WINDOW_UPDATE flood) while the
bystander, in its own process, does a keep-alive GET and a tcp_proxy echo every 20 ms on the
same worker: it must see no failure and a p99 under a generous bound, and the hostile
connection must be closed with Envoy's stat counted. Attack sizes are modest (each test takes
a second or two); the attack is repeated, a bounded number of times, until the bystander has
measured enough exchanges.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest
from hpack import Decoder

from . import h2_abuse
from .conftest import Baton, Upstream, free_port, start_ready_process

RECORDER = Path(__file__).resolve().parent / "differential" / "recorder.py"
# On a quiet machine the bystander's p99 is about 5 ms, and 5-40 ms under these attacks; the
# issue measured 0.8-2 s stalls and 2 s timeouts. The bound is a safety net for a shared
# 2-core machine (at a load average of 13, even the quiet p99 reached 0.7 s), not a figure:
# those are in bench/RESULTS.md, from bench/abuse.py. What a regression would break first is
# the rest: a failure (2 s timeout), a connection left open, a stat not counted.
P99_BOUND_S = 1.0
MIN_EXCHANGES = 20      # bystander exchanges measured during each attack
MAX_ROUNDS = 500        # attack repetitions to get them (the quick attacks take ~10 ms)...
MAX_ATTACK_S = 15.0     # ... and time


class Proxy:
    def __init__(self, workdir: Path):
        self.recorder, recorder_port = start_ready_process([sys.executable, str(RECORDER), "app"])
        self.echo = Upstream("echo")
        self.http_port, self.tcp_port = free_port(), free_port()
        self.baton = Baton(workdir, h2_abuse.bootstrap(free_port(), self.http_port, self.tcp_port,
                                                       recorder_port, self.echo.port),
                           concurrency=1)

    def stop(self) -> None:
        self.baton.stop()
        self.echo.stop()
        self.recorder.kill()
        self.recorder.wait(10)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    proxy = Proxy(tmp_path_factory.mktemp("abuse") / "baton")
    try:
        proxy.baton.start()
        yield proxy
    finally:
        proxy.stop()


def under_attack(proxy: Proxy, attack) -> tuple[list, h2_abuse.Damage]:
    """Run `attack()` (repeated until the bystander measured enough) beside the bystander."""
    outcomes = []
    with h2_abuse.Bystander(proxy.http_port, proxy.tcp_port) as bystander:
        deadline = time.monotonic() + MAX_ATTACK_S
        while not outcomes or (bystander.exchanges < MIN_EXCHANGES and
                               len(outcomes) < MAX_ROUNDS and time.monotonic() < deadline):
            outcomes.append(attack())
    return outcomes, bystander.damage


def assert_unharmed(damage: h2_abuse.Damage) -> None:
    assert damage.requests >= MIN_EXCHANGES // 2, damage
    assert damage.failures == 0, damage.errors
    assert damage.p99() < P99_BOUND_S, f"p99 {damage.p99() * 1000:.1f} ms"


def counted(proxy: Proxy, stat: str, before: dict) -> int:
    return proxy.baton.stats()[stat] - before.get(stat, 0)


def test_envoys_stats_exist_from_the_start_and_the_first_http2_connection(proxy):
    """The manager's stat from the start; the codec's (http2.*) from the first HTTP/2
    connection on, as Envoy creates them (test_differential_http2_stats.py)."""
    assert "http.ingress_http.downstream_rq_too_many_premature_resets" in proxy.baton.stats()
    with h2_abuse._connect(proxy.http_port) as sock:
        sock.sendall(h2_abuse.PREFACE + h2_abuse.frame(4, 0, 0))
        assert sock.recv(9)[3] == 4         # the proxy's SETTINGS: its codec exists
        stats = proxy.baton.stats()
    for name in ("http2.outbound_flood", "http2.outbound_control_flood",
                 "http2.inbound_empty_frames_flood", "http2.inbound_priority_frames_flood",
                 "http2.inbound_window_update_frames_flood"):
        assert name in stats


def test_rapid_reset_connections_are_closed(proxy):
    before = proxy.baton.stats()
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.rapid_reset(proxy.http_port, connections=10, pairs=5000))
    assert_unharmed(damage)
    connections = sum(o.connections for o in outcomes)
    assert sum(o.closed for o in outcomes) == connections
    stat = "http.ingress_http.downstream_rq_too_many_premature_resets"
    assert counted(proxy, stat, before) == connections
    # Envoy's rule: closed once 250 of its first 500 streams were reset early. The streams the
    # manager saw reset stay near that per connection, whatever the attacker sent.
    resets = counted(proxy, "http.ingress_http.downstream_rq_rx_reset", before)
    assert resets <= 260 * connections
    # A stream reset in the read that opened it gives its upstream connection back unsent
    # (pool.py, Batches): the hostile streams neither close the bystander's keep-alive
    # connection nor make it connect again. (Before: one connection per reset stream.)
    opened = counted(proxy, "cluster.app.upstream_cx_total", before)
    print(f"rapid reset: {resets} streams reset, {opened} upstream connections opened")
    assert opened <= max(resets // 20, 5), (opened, resets)


def test_many_streams_with_a_window_update_per_data_frame(proxy):
    worker = psutil.Process(proxy.baton.worker_pids()[0])
    cpu = sum(worker.cpu_times()[:2])
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.many_streams_window_updates(proxy.http_port, streams=1500,
                                                            window=256))
    assert_unharmed(damage)
    for outcome in outcomes:
        # Envoy's 1024 concurrent streams: the rest refused; every accepted response served
        # in full through the tiny windows, and the connection stays (it broke no rule).
        assert outcome.answered == 1024 and outcome.refused == 476, outcome.note
        assert not outcome.closed
    # Linear in streams and frames: well under a millisecond of worker CPU per stream.
    per_stream = (sum(worker.cpu_times()[:2]) - cpu) / (1500 * len(outcomes))
    assert per_stream < 0.001, f"{per_stream * 1e6:.0f} us of worker CPU per stream"


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_flood_from_a_client_that_never_reads_is_closed(proxy, kind):
    before = proxy.baton.stats()
    worker = psutil.Process(proxy.baton.worker_pids()[0])
    rss = worker.memory_info().rss
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.control_flood(proxy.http_port, kind, frames=2_000_000))
    assert_unharmed(damage)
    assert all(o.closed == 1 for o in outcomes), outcomes
    assert counted(proxy, "http2.outbound_control_flood", before) == len(outcomes)
    # The acks never read were dropped with the connection, not kept (the issue: +50 MB).
    assert worker.memory_info().rss - rss < 20 * 1024 * 1024


def test_responses_never_read_are_an_outbound_flood(proxy):
    before = proxy.baton.stats()
    outcomes, damage = under_attack(proxy, lambda: h2_abuse.response_flood(proxy.http_port))
    assert_unharmed(damage)
    assert all(o.closed == 1 for o in outcomes), outcomes
    assert counted(proxy, "http2.outbound_flood", before) == len(outcomes)


def test_empty_continuation_flood_is_closed(proxy):
    before = proxy.baton.stats()
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.empty_continuation_flood(proxy.http_port, connections=20))
    assert_unharmed(damage)
    connections = sum(o.connections for o in outcomes)
    assert sum(o.closed for o in outcomes) == connections
    assert counted(proxy, "http2.inbound_empty_frames_flood", before) == connections


def test_settings_frames_changing_every_window_do_not_stall_the_worker(proxy):
    # Each frame's 2,730 entries once walked the 1,000 streams each (270 ms a frame, 64
    # frames a turn: the bystander's 2 s timeouts); now the streams once per frame, and the
    # frame counts against the turn's budget by the streams it walks.
    worker = psutil.Process(proxy.baton.worker_pids()[0])
    cpu = worker.cpu_times()
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.settings_window_flood(proxy.http_port, streams=1000, frames=200))
    assert_unharmed(damage)
    frames = sum(o.frames for o in outcomes)
    spent = sum(worker.cpu_times()[:2]) - sum(cpu[:2])
    assert spent < frames * 0.01, (spent, frames)       # ~1 ms a frame; it was 270 ms


def test_window_update_flood_is_closed(proxy):
    before = proxy.baton.stats()
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.window_update_flood(proxy.http_port, connections=20))
    assert_unharmed(damage)
    connections = sum(o.connections for o in outcomes)
    assert sum(o.closed for o in outcomes) == connections
    assert counted(proxy, "http2.inbound_window_update_frames_flood", before) == connections


def statuses(sock, streams: set, timeout: float = 10.0) -> dict:
    """The :status of each of `streams`' responses, or "RST <code>", read from raw frames."""
    decoder, found, buf = Decoder(), {}, b""
    deadline = time.monotonic() + timeout
    while set(found) != streams and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(1 << 16)
        assert data, f"closed with {found}"
        buf += data
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length, kind, stream_id = int.from_bytes(buf[:3], "big"), buf[3], \
                int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            if kind == h2_abuse.HEADERS:
                found[stream_id] = dict(decoder.decode(buf[9:9 + length]))[":status"]
            elif kind == 3:                 # RST_STREAM
                found[stream_id] = "RST %d" % int.from_bytes(buf[9:13], "big")
            buf = buf[9 + length:]
    return found


def test_requests_of_thousands_of_header_fields_do_not_stall_the_worker(proxy):
    # 5,000 fields a request (~190 KB decoded, over the 60 KiB limit: the stream is reset,
    # INTERNAL_ERROR, as Envoy 1.40 does; the connection lives on). Their HPACK decoding took 15-23 ms in one turn of the loop; it is now spread
    # over turns (h2slice.py), the connection's later frames waiting behind it.
    outcomes, damage = under_attack(
        proxy, lambda: h2_abuse.header_block_flood(proxy.http_port, requests=24, fields=5000))
    assert_unharmed(damage)
    assert not any(o.closed for o in outcomes), outcomes
    # Behind a big block, on the same connection, in one write: its reset, then an ordinary
    # request answered.
    block = h2_abuse.request_block("/direct") + b"".join(
        b"\x00" + bytes((len(name),)) + name + b"\x01v"
        for name in (b"x-%d" % i for i in range(5000)))
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    data = h2_abuse.PREFACE + h2_abuse.frame(h2_abuse.SETTINGS, 0, 0) + \
        h2_abuse.frame(h2_abuse.HEADERS, h2_abuse.END_STREAM, 1, chunks[0]) + b"".join(
            h2_abuse.frame(h2_abuse.CONTINUATION, h2_abuse.END_HEADERS if i == len(chunks) - 1
                           else 0, 1, chunk) for i, chunk in enumerate(chunks[1:], 1)) + \
        h2_abuse.frame(h2_abuse.HEADERS, h2_abuse.END_STREAM | h2_abuse.END_HEADERS, 3,
                       h2_abuse.request_block("/direct"))
    with h2_abuse._connect(proxy.http_port) as sock:
        sock.sendall(data)
        assert statuses(sock, {1, 3}) == {1: "RST 2", 3: "200"}
    stats = proxy.baton.stats()
    assert stats["http2.header_overflow"] >= 1 and stats["http2.header_list_size_too_large"] == 0
