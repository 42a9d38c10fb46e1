"""The overload manager with a real `baton run`: the global connection limit, a heap over its
limit, pressure injected through a file and taken back, and the same bootstrap through a real
Envoy 1.40 for the answers and stat names that must match.

Pressure that must come and go is Envoy's injected_resource monitor (a file holding a number):
the test writes it and waits for the overload stats to say the action took effect. Every wait
polls a stat or a socket against a deadline.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hpack import Encoder

from baton.worker.overload_monitors import anonymous_resident_bytes

from .conftest import Baton, free_port, http_bootstrap, wait_until
from .differential.client import Closed, Connection, curl
from .differential.proxies import Envoy
from .h2_abuse import PREFACE, frame

HEAP = "envoy.resource_monitors.fixed_heap"
CX = "envoy.resource_monitors.global_downstream_max_connections"
REQUESTS = "requests_pressure"        # injected_resource monitors, named as the test likes
ACCEPTING = "accepting_pressure"
STOP_RQ = "envoy.overload_actions.stop_accepting_requests"
KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_CX = "envoy.overload_actions.stop_accepting_connections"
SHRINK = "envoy.overload_actions.shrink_heap"
RESET = "envoy.overload_actions.reset_high_memory_stream"
MONITORS = "type.googleapis.com/envoy.extensions.resource_monitors."
GET = [("host", "overload.test")]


def bootstrap(admin: int, port: int, overload: dict) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "ingress",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "served"}}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "overload_manager": {"refresh_interval": "0.05s", **overload},
            "static_resources": {"listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}]}}


def heap_monitor(limit: int) -> dict:
    return {"name": HEAP, "typed_config": {"@type": MONITORS + "fixed_heap.v3.FixedHeapConfig",
                                           "max_heap_size_bytes": limit}}


def connection_monitor(limit: int) -> dict:
    return {"name": CX, "typed_config": {
        "@type": MONITORS + "downstream_connections.v3.DownstreamConnectionsConfig",
        "max_active_downstream_connections": limit}}


def injected_monitor(name: str, path: Path) -> dict:
    return {"name": name, "typed_config": {
        "@type": MONITORS + "injected_resource.v3.InjectedResourceConfig", "filename": str(path)}}


def action(name: str, monitor: str, threshold: float = 0.9) -> dict:
    return {"name": name, "triggers": [{"name": monitor, "threshold": {"value": threshold}}]}


@pytest.fixture
def readable_dir():
    """A directory the workers can read when they run as an unprivileged user (pytest's own
    temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="baton-overload-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def inject(path: Path, pressure) -> None:
    """Envoy's contract for injected_resource: the file is replaced atomically."""
    tmp = path.with_suffix(".new")
    tmp.write_text(f"{pressure}\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def start_baton(tmp_path: Path, overload: dict, concurrency: int) -> tuple[Baton, int]:
    port = free_port()
    baton = Baton(tmp_path / "baton", bootstrap(free_port(), port, overload), concurrency=concurrency)
    return baton.start(), port


def wait_stat(proxy, name: str, predicate, what: str, timeout: float = 10.0) -> None:
    wait_until(lambda: predicate(proxy.stats().get(name, 0)), timeout, what)


def served(port: int) -> bool:
    """A fresh connection is accepted and served (False when closed at once)."""
    try:
        with Connection(port, timeout=5) as conn:
            return conn.request("GET", "/", GET).status == 200
    except (Closed, ConnectionResetError):
        return False


# --- tests -------------------------------------------------------------------------------------

def test_the_connection_limit_is_global_and_closes_new_connections_at_once(tmp_path):
    """Envoy accepts a connection over global_downstream_max_connections and closes it at once
    (the client reads EOF, it does not wait in the backlog), counting it on the listener and as
    a failed update of the monitor. Two workers share the one limit."""
    baton, port = start_baton(tmp_path, {"resource_monitors": [connection_monitor(3)]}, concurrency=2)
    listener = f"listener.127.0.0.1_{port}."
    held = []
    try:
        for _ in range(3):
            conn = Connection(port)
            assert conn.request("GET", "/", GET).status == 200
            held.append(conn)
        for _ in range(4):          # whichever worker takes them, the three above count
            started = time.monotonic()
            with Connection(port) as extra:
                assert extra.wait_closed(timeout=5.0), "a connection over the limit stayed open"
                assert not extra.buf
            assert time.monotonic() - started < 2.0
        stats = baton.stats()
        assert stats[listener + "downstream_global_cx_overflow"] == 4
        assert stats[f"overload.{CX}.failed_updates"] == 4
        wait_stat(baton, f"overload.{CX}.pressure", lambda v: v == 100, "pressure 100%")
        # One place frees up: a new connection is served again (the closing worker's count
        # reaches the other worker at its next refresh).
        held.pop().close()
        wait_until(lambda: served(port), 10, "a connection served once a place is free")
        for conn in held:           # the first ones were never disturbed
            assert conn.request("GET", "/", GET).status == 200
    finally:
        for conn in held:
            conn.close()
        baton.stop()


def test_a_heap_over_its_limit_sheds_requests_and_keepalive(tmp_path):
    """fixed_heap with a max_heap_size_bytes far below a worker's memory: every request gets
    Envoy's 503 "envoy overloaded", and the connection is closed after it."""
    overload = {"resource_monitors": [heap_monitor(1_000_000)],
                "actions": [action(STOP_RQ, HEAP, 0.95), action(KEEPALIVE, HEAP, 0.9)]}
    baton, port = start_baton(tmp_path, overload, concurrency=2)
    try:
        wait_stat(baton, f"overload.{STOP_RQ}.active", lambda v: v == 1, "stop_accepting_requests")
        wait_stat(baton, f"overload.{KEEPALIVE}.active", lambda v: v == 1, "disable_http_keepalive")
        with Connection(port) as conn:
            resp = conn.request("GET", "/", GET)
            assert (resp.status, resp.body) == (503, b"envoy overloaded")
            assert resp.header("content-type") == "text/plain"
            assert resp.header("connection") == "close"
            assert conn.wait_closed(timeout=5.0)
        stats = baton.stats()
        assert stats[f"overload.{HEAP}.pressure"] > 100
        assert stats[f"overload.{STOP_RQ}.scale_percent"] == 100
        assert stats["http.ingress.downstream_rq_overload_close"] == 1
        assert stats["http.ingress.downstream_cx_overload_disable_keepalive"] == 1
        assert stats["http.ingress.downstream_rq_5xx"] == 1
        status, body = baton.admin("/stats/prometheus")
        assert status == 200
        assert "envoy_overload_envoy_resource_monitors_fixed_heap_pressure" in body
    finally:
        baton.stop()


def test_pressure_that_drops_gives_service_back(tmp_path, readable_dir):
    """Injected pressure: requests are refused while it is high and served again once it drops;
    stop_accepting_connections leaves new connections in the backlog (Envoy disables its
    listeners) and they are served when it drops. A file that does not parse is a failed update
    and changes nothing."""
    requests, accepting = readable_dir / "requests", readable_dir / "accepting"
    inject(requests, 0.0)
    inject(accepting, 0.0)
    overload = {"resource_monitors": [injected_monitor(REQUESTS, requests),
                                      injected_monitor(ACCEPTING, accepting)],
                "actions": [action(STOP_RQ, REQUESTS), action(KEEPALIVE, REQUESTS),
                            action(STOP_CX, ACCEPTING)]}
    # One worker: "the worker stopped accepting" is then what the merged gauge says.
    baton, port = start_baton(tmp_path, overload, concurrency=1)
    try:
        inject(requests, 1.0)
        wait_stat(baton, f"overload.{STOP_RQ}.active", lambda v: v == 1, "requests refused")
        with Connection(port) as conn:
            assert conn.request("GET", "/", GET).status == 503
        inject(requests, 0.0)
        wait_stat(baton, f"overload.{STOP_RQ}.active", lambda v: v == 0, "requests served again")
        with Connection(port) as conn:          # served, and kept alive again
            assert [conn.request("GET", "/", GET).status for _ in range(2)] == [200, 200]
            assert conn.request("GET", "/", GET).header("connection") is None

        inject(accepting, 1.0)
        wait_stat(baton, f"overload.{STOP_CX}.active", lambda v: v == 1, "listeners held")
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)   # the backlog takes it
        try:
            waiting.sendall(b"GET / HTTP/1.1\r\nhost: overload.test\r\n\r\n")
            waiting.settimeout(0.5)
            with pytest.raises(socket.timeout):
                waiting.recv(1)                 # not accepted, so not answered ...
            inject(accepting, 0.0)
            waiting.settimeout(5)
            assert waiting.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")   # ... until it drops
        finally:
            waiting.close()

        failed = f"overload.{REQUESTS}.failed_updates"
        before = baton.stats()[failed]
        inject(requests, "not a number")
        wait_stat(baton, failed, lambda v: v > before, "a failed update counted")
        assert baton.stats()[f"overload.{REQUESTS}.pressure"] == 0
        assert served(port)
    finally:
        baton.stop()


def overload_stat_names(stats: dict) -> set[str]:
    return {name for name in stats
            if name.startswith(("overload.", "envoy.overload_actions.")) or name.endswith(
                ("downstream_global_cx_overflow", "downstream_cx_overload_reject",
                 "downstream_rq_overload_close", "downstream_cx_overload_disable_keepalive"))}


def envoy_stats(envoy: Envoy) -> dict[str, int]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=5) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def held_then_served(proxy, port: int, accepting: Path, what: str) -> tuple[bool, int]:
    """stop_accepting_connections on, a request sent on a new connection: (whether it went
    unanswered while the action was on, the status it got once the action was off)."""
    inject(accepting, 1.0)
    wait_stat(proxy, f"overload.{STOP_CX}.active", lambda v: v == 1, f"{what}: listeners held")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as waiting:
        waiting.sendall(b"GET / HTTP/1.1\r\nhost: overload.test\r\n\r\n")
        waiting.settimeout(0.5)
        try:
            held = waiting.recv(1) == b""       # closed would be an answer too, a wrong one
        except socket.timeout:
            held = True
        inject(accepting, 0.0)
        waiting.settimeout(5)
        head = waiting.recv(65536)
    return held, int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def test_differential_envoy_and_baton_on_one_bootstrap(tmp_path, readable_dir):
    """The same bootstrap through Envoy 1.40 and Baton (one worker each): the local reply under
    stop_accepting_requests over HTTP/1.1 and HTTP/2, a connection over the global limit,
    a connection left in the backlog by stop_accepting_connections, and the stat names."""
    answers, names = {}, {}
    for name in ("envoy", "baton"):
        requests = readable_dir / f"{name}.requests"
        accepting = readable_dir / f"{name}.accepting"
        inject(requests, 1.0)
        inject(accepting, 0.0)
        overload = {"resource_monitors": [injected_monitor(REQUESTS, requests),
                                          injected_monitor(ACCEPTING, accepting),
                                          connection_monitor(1)],
                    "actions": [action(STOP_RQ, REQUESTS), action(KEEPALIVE, REQUESTS),
                                action(STOP_CX, ACCEPTING), action(SHRINK, REQUESTS)]}
        port = free_port()
        doc = bootstrap(free_port(), port, overload)
        if name == "envoy":
            proxy = Envoy(tmp_path / "envoy", doc).start()
            proxy.stats = lambda proxy=proxy: envoy_stats(proxy)
        else:
            proxy = Baton(tmp_path / "baton", doc, concurrency=1).start()
        active = f"listener.127.0.0.1_{port}.downstream_cx_active"
        try:
            wait_stat(proxy, f"overload.{STOP_RQ}.active", lambda v: v == 1, f"{name}: overloaded")
            with Connection(port) as conn:
                wait_stat(proxy, active, lambda v: v == 1, f"{name}: the first connection accepted")
                with Connection(port) as extra:             # over the limit of one
                    over_limit_closed = extra.wait_closed(timeout=5.0)
                resp = conn.request("GET", "/", GET)
            # Not compared: when each closes the connection after its `connection: close`.
            # Envoy waits for the client up to drain_timeout + delayed_close_timeout (~6 s);
            # Baton up to delayed_close_timeout.
            wait_stat(proxy, active, lambda v: v == 0, f"{name}: the client's close seen")
            h2 = curl(port, "/", "-H", "host: overload.test", http2=True)
            wait_stat(proxy, active, lambda v: v == 0, f"{name}: curl's close seen")
            answers[name] = (resp.status, resp.body, resp.header("content-type"),
                             resp.header("connection"), over_limit_closed, h2.status, h2.body,
                             held_then_served(proxy, port, accepting, name))
            stats = proxy.stats()
            names[name] = overload_stat_names(stats)
            assert stats[f"listener.127.0.0.1_{port}.downstream_global_cx_overflow"] == 1, name
            assert stats["http.ingress.downstream_rq_overload_close"] == 3, name
        finally:
            proxy.stop()
        names[name] = {n.replace(f"_{port}.", "_PORT.") for n in names[name]}
    assert answers["baton"] == answers["envoy"] == (
        503, b"envoy overloaded", "text/plain", "close", True, 503, b"envoy overloaded", (True, 503))
    # Envoy also has listener.admin.* and http.admin.* (its admin listener is a listener with
    # a connection manager). Both have envoy.overload_actions.reset_high_memory_stream.count,
    # the action configured or not.
    assert RESET_COUNT in names["baton"]
    envoy_only = {n for n in names["envoy"] if n.startswith(("listener.admin.", "http.admin."))}
    assert names["baton"] == names["envoy"] - envoy_only


# --- reset_high_memory_stream ----------------------------------------------------------------

RESET_COUNT = "envoy.overload_actions.reset_high_memory_stream.count"
HEAP_LIMIT = 256 << 20
HEAP_THRESHOLD = 0.5
MARGIN = 48 << 20           # what the hostile stream holds beyond the threshold


def hostile_h2_request(port: int, size: int) -> socket.socket:
    """An HTTP/2 client that asks for `size` bytes and never reads: its default 64 KiB windows
    leave the rest of the response in the proxy."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"), (":path", "/big"),
                              (":authority", "overload.test"), ("x-test-body-size", str(size))])
    sock.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    return sock


def rst_stream_code(sock: socket.socket, stream_id: int, deadline: float) -> int | None:
    """Read frames until RST_STREAM on `stream_id` (its error code) or the end."""
    buf = b""
    while time.monotonic() < deadline:
        while len(buf) >= 9:
            length_type, _, sid = struct.unpack(">LBL", buf[:9])
            length, kind = length_type >> 8, length_type & 0xFF
            if len(buf) < 9 + length:
                break
            payload, buf = buf[9:9 + length], buf[9 + length:]
            if kind == 3 and sid & 0x7FFFFFFF == stream_id:
                return struct.unpack(">L", payload)[0]
        data = sock.recv(1 << 20)
        if not data:
            return None
        buf += data
    return None


def closed_before(sock: socket.socket, size: int, deadline: float) -> tuple[bool, int]:
    """Read an HTTP/1.1 response until the connection ends: (ended early, bytes read)."""
    got = 0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return True, got
        if not data:
            return got < size, got
        got += len(data)
    return False, got


class KeepAliveClient(threading.Thread):
    """The well-behaved neighbour: keep-alive GETs on one connection until stopped."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.stop, self.statuses, self.errors = port, threading.Event(), [], []

    def run(self) -> None:
        with Connection(self.port, timeout=5) as conn:
            while not self.stop.wait(0.05):
                try:
                    self.statuses.append(conn.request("GET", "/small", GET).status)
                except Exception as exc:        # noqa: BLE001 - recorded, asserted on
                    self.errors.append(repr(exc))
                    return


def test_reset_high_memory_stream_resets_the_stream_holding_memory_not_its_neighbours(
        tmp_path, recorder):
    """A real fixed_heap threshold: an HTTP/2 client that never reads a large response makes
    the worker's heap cross it, and reset_high_memory_stream resets that stream (RST_STREAM
    INTERNAL_ERROR, downstream_rq_rx_reset, the action's count) while a neighbour's keep-alive GETs
    and a slow HTTP/2 request in flight on another connection of the same worker finish. Then
    the same with an HTTP/1.1 client that never reads: its connection ends."""
    port = free_port()
    doc = http_bootstrap(free_port(), port, recorder)
    # Large enough that the proxy keeps reading the upstream until the heap crosses the line.
    doc["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 512 << 20
    doc["overload_manager"] = {
        "refresh_interval": "0.05s", "resource_monitors": [heap_monitor(HEAP_LIMIT)],
        "actions": [action(RESET, HEAP, HEAP_THRESHOLD)],
        "buffer_factory_config": {"minimum_account_to_track_power_of_two": 20}}
    baton = Baton(tmp_path / "baton", doc, concurrency=1).start()
    neighbour = KeepAliveClient(port)
    try:
        [pid] = baton.worker_pids()
        baseline = anonymous_resident_bytes(f"/proc/{pid}/statm")
        line = int(HEAP_LIMIT * HEAP_THRESHOLD)
        assert baseline < line - MARGIN, f"a worker at rest holds {baseline >> 20} MiB"
        size = line - baseline + MARGIN
        stats = baton.stats()
        assert stats[RESET_COUNT] == 0 and stats[f"overload.{RESET}.active"] == 0
        neighbour.start()
        slow = {}
        slow_h2 = threading.Thread(target=lambda: slow.setdefault("response", curl(
            port, "/slow", "-H", "host: overload.test", "-H", "x-test-delay-ms: 3000",
            http2=True)), daemon=True)
        slow_h2.start()
        wait_stat(baton, "http.ingress_http.downstream_rq_active", lambda v: v >= 1,
                  "the slow request in flight")

        hostile = hostile_h2_request(port, size)
        try:
            wait_stat(baton, RESET_COUNT, lambda v: v == 1, "the hostile stream reset", 30)
            assert rst_stream_code(hostile, 1, time.monotonic() + 10) == 0x2   # INTERNAL_ERROR
        finally:
            hostile.close()
        stats = baton.stats()
        assert stats["http.ingress_http.downstream_rq_rx_reset"] == 1
        assert stats["http.ingress_http.downstream_rq_tx_reset"] == 0
        wait_stat(baton, f"overload.{RESET}.active", lambda v: v == 0, "the memory given back", 30)
        slow_h2.join(15)
        assert slow["response"].status == 200

        with socket.create_connection(("127.0.0.1", port), timeout=10) as h1:
            h1.sendall(b"GET /big HTTP/1.1\r\nhost: overload.test\r\n"
                       b"x-test-body-size: %d\r\n\r\n" % size)
            wait_stat(baton, RESET_COUNT, lambda v: v == 2, "the HTTP/1.1 stream reset", 30)
            early, got = closed_before(h1, size, time.monotonic() + 30)
            assert early, f"read {got} of {size} bytes"
        assert baton.stats()["http.ingress_http.downstream_rq_rx_reset"] == 2
    finally:
        neighbour.stop.set()
        neighbour.join(10)
        baton.stop()
    assert neighbour.errors == [] and len(neighbour.statuses) > 10
    assert set(neighbour.statuses) == {200}


def reset_bootstrap(port: int, upstream: int, heap_limit: int) -> dict:
    doc = http_bootstrap(free_port(), port, upstream)
    doc["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 512 << 20
    doc["overload_manager"] = {
        "refresh_interval": "0.05s", "resource_monitors": [heap_monitor(heap_limit)],
        "actions": [action(RESET, HEAP, HEAP_THRESHOLD)],
        "buffer_factory_config": {"minimum_account_to_track_power_of_two": 20}}
    return doc


def test_differential_reset_high_memory_stream_answers_as_envoy(tmp_path, recorder):
    """Envoy 1.40 and Baton, each with its heap line set a little above its own memory at rest
    (the only difference in the bootstrap), and an HTTP/2 client that never reads 64 MiB: the
    same RST_STREAM code and the same stats. (Envoy buffers at most its stream window per
    stream, 16 MiB here, so its line sits closer.)"""
    seen = {}
    for name in ("envoy", "baton"):
        port = free_port()
        if name == "envoy":
            # Envoy's heap at rest, as its own monitor reports it against 1 GiB.
            probe = Envoy(tmp_path / "envoy-probe", reset_bootstrap(free_port(), recorder, 1 << 30))
            probe.start()
            try:
                stats = envoy_stats(probe)
            finally:
                probe.stop()
            rest = max(stats[f"overload.{HEAP}.pressure"] * (1 << 30) // 100,
                       stats["server.memory_allocated"])
            proxy = Envoy(tmp_path / "envoy", reset_bootstrap(
                port, recorder, int((rest + (6 << 20)) / HEAP_THRESHOLD))).start()
            proxy.stats = lambda proxy=proxy: envoy_stats(proxy)
        else:
            # Baton's line is computed once its worker runs: the limit is set from a first
            # look at a worker of the same bootstrap.
            probe = Baton(tmp_path / "baton-probe", reset_bootstrap(free_port(), recorder, 1 << 30),
                          concurrency=1).start()
            try:
                rest = anonymous_resident_bytes(f"/proc/{probe.worker_pids()[0]}/statm")
            finally:
                probe.stop()
            proxy = Baton(tmp_path / "baton", reset_bootstrap(
                port, recorder, int((rest + (24 << 20)) / HEAP_THRESHOLD)), concurrency=1).start()
        try:
            assert proxy.stats()[RESET_COUNT] == 0
            hostile = hostile_h2_request(port, 64 << 20)
            try:
                wait_stat(proxy, RESET_COUNT, lambda v: v == 1, f"{name}: the stream reset", 30)
                code = rst_stream_code(hostile, 1, time.monotonic() + 10)
            finally:
                hostile.close()
            stats = proxy.stats()
            seen[name] = (code, stats[RESET_COUNT], stats["http.ingress_http.downstream_rq_rx_reset"],
                          stats["http.ingress_http.downstream_rq_tx_reset"])
        finally:
            proxy.stop()
    assert seen["baton"] == seen["envoy"] == (0x2, 1, 1, 0)
