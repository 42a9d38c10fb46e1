"""The HTTP/1.1 express lane (worker/proxy/http/express.py): when it is taken (and that every
config field is declared safe or blocking for it), that it writes the very bytes the full path
(stream.py, router.py) writes, and that anything but the happy ending is handed to the full
path's objects in the state the full path would have them, with the same outcome. The same
for the Stream's straight step (worker/proxy/http/straight.py), which the full path takes
for such a request without the Router: it writes what the Router writes, and hands over to
a Router in the state the Router's own path would have reached.

A connection manager and one upstream connection run in process on fake transports: bytes
in, bytes out, no sockets.
"""

import asyncio
import textwrap
import weakref
from types import SimpleNamespace

import pytest

from baton.worker.proxy.cluster import ClusterManager
from baton.worker.proxy.http import express
from baton.worker.proxy.http import route_step
from baton.worker.proxy.http.config import HttpConfig
from baton.worker.proxy.http.connection_manager import HttpConnection
from baton.worker.overload_manager import OverloadManager
from baton.worker.proxy.http.pool import PoolManager, UpstreamConnection
from baton.worker.proxy.http.routing import Route, RouteTable, _VirtualHost
from baton.worker.proxy.http.stream import Stream
from baton.worker.proxy.http.straight import FIELDS as STRAIGHT_FIELDS
from baton.worker.proxy.http.stream_info import StreamInfo
from baton.worker.stats import Stats
from baton.xds.bootstrap import load_bootstrap
from tests.unit.test_http_config import ok_rc, rc, route

REQUEST = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nX-Envoy-Retry-On: 5xx\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 05:20:28 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody")

BOOTSTRAP = """\
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream%s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 10001}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 10002}}}
"""


class FakeTransport:
    def __init__(self):
        self.written = []
        self.aborted = False
        self.reading = True

    def write(self, data):
        self.written.append(data)

    def take(self) -> bytes:
        data, self.written = b"".join(self.written), []
        return data

    def set_write_buffer_limits(self, high=None):
        pass

    def get_extra_info(self, key, default=None):
        return ("127.0.0.1", 10000) if key == "sockname" else default

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return self.aborted

    def close(self):
        self.aborted = True

    def abort(self):
        self.aborted = True

    def can_write_eof(self):
        return False

    def get_write_buffer_size(self):
        return 0


# Connections whose streams never take the straight step (a Rig with straight=False): the
# Router's own path, which the lane and the straight step are compared with.
ROUTER_ONLY = weakref.WeakSet()


@pytest.fixture(autouse=True)
def _router_only(monkeypatch):
    real = route_step.needs_router

    def needs_router(stream, *args):
        return stream.conn in ROUTER_ONLY or real(stream, *args)

    monkeypatch.setattr(route_step, "needs_router", needs_router)


class Rig:
    """One client connection and an idle upstream connection to each host; with `express`
    False every request takes the full path (the Stream), with `straight` False too every
    request takes the Router (no straight step)."""

    def __init__(self, tmp_path, loop, route_extra="", express=True, straight=True):
        path = tmp_path / "bootstrap.yaml"
        path.write_text(BOOTSTRAP % route_extra)
        snap = load_bootstrap(str(path))
        worker = SimpleNamespace(loop=loop, stats=Stats(), connection_closed=lambda c: None,
                                 is_own_listener=lambda a: False)
        worker.clusters = ClusterManager(loop=loop, stats=worker.stats)
        worker.clusters.apply(snap["clusters"])
        worker.http_pools = PoolManager(loop, worker.stats)
        worker.overload = OverloadManager(worker, None)     # as a Worker without overload_manager
        self.worker = worker
        spec = snap["listeners"][0]["filter_chains"][0]["http"]
        chain = SimpleNamespace(http_config=HttpConfig(spec, worker, 1 << 20), index=0)
        if not express:
            # Not conn.express: the connection sets it from the config when the first bytes
            # choose HTTP/1.1.
            chain.http_config.express = False
        listener = SimpleNamespace(name="http", port=10000, stat_cx_active="l.active",
                                   local_address=None)
        self.conn = HttpConnection(worker, listener, chain, ("127.0.0.1", 40000), None, 1)
        if not straight:
            ROUTER_ONLY.add(self.conn)
        self.down = FakeTransport()
        self.conn.connection_made(self.down)
        self.cluster = worker.clusters.get("upstream")
        self.upstreams = {}
        for host in self.cluster.hosts:
            pool = worker.http_pools.get(self.cluster, host)
            conn = UpstreamConnection(pool)
            conn.connection_made(FakeTransport())
            self.cluster.active += 1
            host.active += 1
            pool.idle.append(conn)
            self.upstreams[host.port] = conn

    def busy_upstream(self):
        return next(c for c in self.upstreams.values() if c.streams)

    def exchange(self, request=REQUEST, response=RESPONSE):
        """(bytes sent upstream, bytes sent to the client, upstream port)."""
        self.conn.data_received(request)
        upstream = self.busy_upstream()
        self.taken_by = type(next(iter(upstream.streams.values()))).__name__
        sent = upstream.transport.take()
        upstream.data_received(response)
        return sent, self.down.take(), upstream.pool.host.port


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _normalised(data: bytes) -> bytes:
    """Random request ids, the date and the upstream's time (1 ms apart on a busy machine)
    differ between runs."""
    lines = [b"x-request-id: ID" if line.startswith(b"x-request-id: ") else
             b"date: DATE" if line.startswith(b"date: ") else
             b"x-envoy-upstream-service-time: MS"
             if line.startswith(b"x-envoy-upstream-service-time: ") else line
             for line in data.split(b"\r\n")]
    return b"\r\n".join(lines)


def test_the_plain_config_allows_the_lane(tmp_path, loop):
    assert Rig(tmp_path, loop).conn.hcm.express


def test_options_that_edit_requests_close_the_lane():
    plain = dict(codec_type="AUTO", routes=SimpleNamespace(adds_request_headers=False,
                                                           matches_proxy_headers=False),
                 filter_factories=[], access_logs=[], via="", merge_slashes=False,
                 strip_matching_host_port=False, strip_any_host_port=False,
                 use_remote_address=False, internal_networks=[],
                 always_set_request_id_in_response=False, normalize_path=False,
                 escaped_slashes="KEEP_UNCHANGED", max_stream_duration=None)
    assert express.config_allows(SimpleNamespace(**plain))
    for name, value in [("codec_type", "HTTP2"), ("routes", None), ("filter_factories", [1]),
                        ("access_logs", [1]), ("via", "1.1 baton"), ("merge_slashes", True),
                        ("strip_any_host_port", True), ("use_remote_address", True),
                        ("internal_networks", [1]), ("always_set_request_id_in_response", True),
                        ("normalize_path", True), ("escaped_slashes", "REJECT_REQUEST"),
                        ("max_stream_duration", 5.0)]:
        assert not express.config_allows(SimpleNamespace(**{**plain, name: value})), name
    for name in ("adds_request_headers", "matches_proxy_headers"):
        routes = SimpleNamespace(**{"adds_request_headers": False, "matches_proxy_headers": False,
                                    name: True})
        assert not express.config_allows(SimpleNamespace(**{**plain, "routes": routes})), name


# The two ways around the Router for a plain request: the express lane's Exchange, the
# Stream's straight step (the lane closed).
FAST_PATHS = {"express": "Exchange", "straight": "Stream"}


@pytest.mark.parametrize("path", FAST_PATHS)
def test_express_writes_what_the_full_path_writes(tmp_path, loop, path):
    fast = Rig(tmp_path, loop, express=path == "express")
    full = Rig(tmp_path, loop, express=False, straight=False)
    for _ in range(3):      # round robin over both hosts, each way
        a, b = fast.exchange(), full.exchange()
        assert (fast.taken_by, full.taken_by) == (FAST_PATHS[path], "UpstreamRequest")
        assert _normalised(a[0]) == _normalised(b[0])
        assert _normalised(a[1]) == _normalised(b[1])
        assert a[2] == b[2]
    assert b"x-envoy-retry-on" not in a[0] and b"x-forwarded-proto: http" in a[0]
    assert b"server: envoy" in a[1] and b"x-envoy-upstream-service-time: " in a[1]
    assert dict(fast.worker.stats.counters) == dict(full.worker.stats.counters)
    assert dict(fast.worker.stats.gauges) == dict(full.worker.stats.gauges)
    assert not fast.conn.streams and fast.cluster.rq_active == 0


def test_the_lane_is_taken_only_for_plain_requests(tmp_path, loop, monkeypatch):
    rig = Rig(tmp_path, loop)
    taken = []
    real_take = express.take

    def spy(conn, event):
        result = real_take(conn, event)
        taken.append(result[0] is not None)
        return result

    monkeypatch.setattr(express, "take", spy)
    rig.exchange()
    rig.exchange(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    rig.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
    rig.conn.data_received(b"GET / HTTP/1.1\r\n\r\n")        # no Host: 400
    assert taken == [True, False, False, False]
    assert rig.down.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_no_idle_connection_hands_over_the_picked_host(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    for conn in rig.upstreams.values():
        conn.pool.idle.clear()
    rig.cluster.max_connections = rig.cluster.active   # it waits, rather than connects
    rig.conn.data_received(REQUEST)
    stream = rig.conn.active
    assert isinstance(stream, Stream)
    (first,) = stream.router.tried
    assert rig.cluster.pick() is not first      # round robin moved on once, not twice
    assert stream.router.upstream.pool.waiters   # waiting for a connection


def test_a_reset_mid_response_goes_through_the_full_path(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    upstream.data_received(RESPONSE[:-2])       # the head and half the body
    assert rig.down.take().endswith(b"\r\n\r\nbo")
    upstream.connection_lost(None)
    counters = rig.worker.stats.counters
    assert counters["cluster.upstream.upstream_rq_rx_reset"] == 1
    assert counters["http.ingress_http.downstream_rq_tx_reset"] == 1
    assert rig.down.aborted                     # the client sees the response broken
    assert rig.cluster.rq_active == 0
    assert rig.worker.stats.gauges["http.ingress_http.downstream_rq_active"] == 0


def test_a_route_timeout_is_the_full_path_504(tmp_path, loop):
    rig = Rig(tmp_path, loop, ", timeout: 0.001s")
    rig.conn.data_received(REQUEST)
    exchange = rig.conn.active
    assert isinstance(exchange, express.Exchange)
    exchange.deadline = 0.5                     # long past on the monotonic clock
    rig.conn._on_deadline()
    reply = rig.down.take()
    assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert reply.endswith(b"upstream request timeout")
    assert rig.worker.stats.counters["cluster.upstream.upstream_rq_timeout"] == 1
    assert rig.cluster.rq_active == 0 and not rig.conn.streams


def test_a_client_gone_mid_request_resets_the_upstream(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    rig.conn.connection_lost(None)
    assert upstream.closed                      # HTTP/1.1 cannot cancel but by closing
    assert rig.worker.stats.counters["cluster.upstream.upstream_rq_tx_reset"] == 1
    assert rig.cluster.rq_active == 0


def test_pipelined_requests_are_answered_in_order(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.data_received(REQUEST.replace(b"/a?b=1", b"/one") + REQUEST.replace(b"/a?b=1", b"/two"))
    first = rig.busy_upstream()
    assert b"GET /one " in first.transport.take()
    first.data_received(RESPONSE)
    second = rig.busy_upstream()
    assert b"GET /two " in second.transport.take()
    second.data_received(RESPONSE.replace(b"body", b"BODY"))
    out = rig.down.take()
    assert out.index(b"body") < out.index(b"BODY")


def test_a_response_is_one_write_and_nothing_is_flushed_twice(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    for _ in range(3):
        rig.conn.data_received(REQUEST)
        upstream = rig.busy_upstream()
        assert len(upstream.transport.written) == 1
        upstream.transport.take()
        upstream.data_received(RESPONSE[:-4])          # the head alone: written at the batch end
        assert len(rig.down.written) == 1 and rig.down.written[0].endswith(b"\r\n\r\n")
        upstream.data_received(RESPONSE[-4:])
        assert rig.down.written[1] == b"body" and len(rig.down.written) == 2
        rig.down.take()
        rig.conn.data_received(REQUEST)
        upstream = rig.busy_upstream()
        upstream.transport.take()
        upstream.data_received(RESPONSE)                # head and body in one read: one write
        assert len(rig.down.written) == 1 and rig.down.written[0].endswith(b"body")
        rig.down.take()
    assert not rig.worker.http_pools.dirty and not rig.conn.dirty


# -- which config fields the lane must know about ------------------------------------------------

def _fields(obj) -> set:
    return set(type(obj).__slots__) if hasattr(type(obj), "__slots__") else set(vars(obj))


def test_every_config_field_is_declared_safe_or_blocking(tmp_path, loop):
    """A field added to the connection manager's config or to the route objects fails here
    until its class says whether the lane honours it (EXPRESS_SAFE) or must stand aside while
    it is set (EXPRESS_BLOCKING): the lane would otherwise ignore it silently."""
    hcm = Rig(tmp_path, loop).conn.hcm
    table = hcm.routes
    vhost = table.virtual_hosts[0]
    route = vhost.routes[0]
    for obj, cls in ((hcm, HttpConfig), (table, RouteTable), (vhost, _VirtualHost),
                     (route, Route)):
        assert type(obj) is cls
        safe, blocking = cls.EXPRESS_SAFE, set(cls.EXPRESS_BLOCKING)
        prefix = getattr(cls, "EXPRESS_SAFE_PREFIX", None)
        fields = {f for f in _fields(obj) if not (prefix and f.startswith(prefix))}
        assert not safe & blocking, (cls.__name__, safe & blocking)
        assert fields - safe - blocking == set(), \
            f"{cls.__name__}: declare these in EXPRESS_SAFE or EXPRESS_BLOCKING"
        assert (safe | blocking) - fields == set(), f"{cls.__name__}: declared, not fields"
        assert express.blockers(obj) == [], cls.__name__     # the plain config: lane open
    assert route.express_cluster == "upstream"


@pytest.mark.parametrize("option", [
    ", prefix_rewrite: /b", ", regex_rewrite: {pattern: {regex: a}, substitution: b}",
    ", host_rewrite_literal: b.example", ", auto_host_rewrite: true",
    ", retry_policy: {retry_on: 5xx}", ", hash_policy: [{header: {header_name: x}}]",
])
def test_route_options_that_edit_requests_close_the_lane(tmp_path, loop, option):
    route = Rig(tmp_path, loop, option).conn.hcm.routes.virtual_hosts[0].routes[0]
    assert route.express_cluster is None
    assert express.blockers(route)


def _first_route(config: dict):
    table = RouteTable(ok_rc(config, clusters=None))
    return table.virtual_hosts[0].routes[0]


HEADER = {"header": {"key": "x-a", "value": "b"}}


@pytest.mark.parametrize("config", [
    rc({"match": {"prefix": "/"}, "route": {"cluster": "c1"}, "request_headers_to_add": [HEADER]}),
    rc({"match": {"prefix": "/"}, "route": {"cluster": "c1"}, "response_headers_to_add": [HEADER]}),
    rc(route(cluster_header="x-cluster")),
    rc(route(weighted_clusters={"clusters": [{"name": "c1", "weight": 1},
                                             {"name": "c2", "weight": 1}]})),
    rc({"match": {"prefix": "/"}, "redirect": {"path_redirect": "/b"}}),
    rc({"match": {"prefix": "/"}, "direct_response": {"status": 200}}),
    rc(route(match={"prefix": "/", "headers": [{"name": "x-forwarded-for",
                                                 "present_match": True}]})),
    rc(request_headers_to_add=[HEADER]),
    rc(request_headers_to_add=[{"header": {"key": "x-envoy-max-retries", "value": "1"}}]),
], ids=["route_request_headers", "route_response_headers", "cluster_header", "weighted",
        "redirect", "direct_response", "matches_proxy_header", "table_request_headers",
        "table_adds_x_envoy"])
def test_route_tables_that_edit_requests_close_the_lane(config):
    assert _first_route(config).express_cluster is None
    assert _first_route(rc(route())).express_cluster == "c1"


def test_a_route_table_that_comes_later_opens_the_lane(tmp_path, loop):
    """RDS: a connection manager may serve before its table arrives (a 404 meanwhile)."""
    rig = Rig(tmp_path, loop)
    table = rig.conn.hcm.spec["route_config"]
    rig.conn.hcm.set_routes(None)
    assert not rig.conn.hcm.express
    rig.conn.hcm.set_routes(table)
    assert rig.conn.hcm.express
    rig.exchange()
    assert rig.worker.stats.counters["cluster.upstream.upstream_rq_200"] == 1


def test_a_route_table_gone_under_an_open_connection_is_a_404(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.exchange()                              # the connection chose HTTP/1.1 and the lane
    rig.conn.hcm.set_routes(None)
    rig.conn.data_received(REQUEST)
    assert rig.down.take().startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert rig.worker.stats.counters["http.ingress_http.no_route"] == 1


# -- handing back to the full path ---------------------------------------------------------------

_MASKED = {"x-request-id": "ID", "date": "DATE", "x-envoy-upstream-service-time": "MS"}


def _plain(value):
    """A field's value comparable between two rigs: times (they differ) as whether they are
    set, config objects by name, hosts by port, headers with ids and dates masked."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    kind = type(value).__name__
    if kind == "Host":
        return ("Host", value.port)
    if kind in ("Route", "Cluster"):
        return (kind, value.name)
    if kind == "Headers":
        return [(k, _MASKED.get(k, v)) for k, v in value.items]
    if kind == "Request":
        return (value.method, value.path, value.authority, _plain(value.headers))
    if kind == "Response":
        return (value.status, _plain(value.headers))
    return kind


def _state(stream) -> dict:
    """Every field of the Stream, its StreamInfo, Router and UpstreamRequest (a Stream is its
    own StreamInfo: the info fields are its inherited slots)."""
    router = stream.router
    state = {}
    # (the straight step's own fields are what its Router is made of: compared there)
    for name, obj, slots, links in (("stream", stream, Stream.__slots__,
                                     {"router", *STRAIGHT_FIELDS}),
                                    ("info", stream.info, StreamInfo.__slots__, set()),
                                    ("router", router, None, {"upstream"}),
                                    ("upstream", router and router.upstream, None, set())):
        state[name] = None if obj is None else {
            f: _plain(getattr(obj, f, "unset")) for f in slots or type(obj).__slots__
            if f not in links}
    state["info"]["request_id"] = bool(state["info"]["request_id"])    # random
    return state


def _before_head(rig):
    rig.conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    upstream.transport.take()
    return upstream


def _mid_body(rig):
    upstream = _before_head(rig)
    upstream.data_received(RESPONSE[:-2])       # the head and half the body
    return upstream


def _client_full(rig):
    upstream = _mid_body(rig)
    rig.conn.pause_writing()                    # the client reads no more: hold the upstream
    return upstream


def _route_timeout(rig, upstream, loop):
    rig.conn.active.router.deadline = 0.5      # long past on the monotonic clock
    rig.conn._on_deadline()


def _stream_idle(rig, upstream, loop):
    rig.conn.active.last_activity = loop.time() - 10_000
    rig.conn._sweep_streams()


def _upstream_gone(rig, upstream, loop):
    upstream.connection_lost(None)


def _upstream_garbage(rig, upstream, loop):
    upstream.data_received(b"HTTP/1.1 2000 OK\r\n\r\n")


def _client_gone(rig, upstream, loop):
    rig.conn.connection_lost(None)


HAND_BACKS = [(point, event) for point in (_before_head, _mid_body, _client_full)
              for event in (_route_timeout, _stream_idle, _upstream_gone, _client_gone)] + [
    (_before_head, _upstream_garbage)]     # mid-body, garbage would be read as the body


def _handed_state(exchange) -> dict:
    """_state of the objects an express exchange or a straight stream would hand over to
    now, made without handing over."""
    if isinstance(exchange, express.Exchange):
        return _state(Stream.from_express(exchange))
    assert type(exchange) is Stream and exchange.router is exchange
    exchange.router = exchange.router_now()
    try:
        return _state(exchange)
    finally:
        exchange.router = exchange


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("point, event", HAND_BACKS,
                         ids=[f"{p.__name__[1:]}-{e.__name__[1:]}" for p, e in HAND_BACKS])
def test_handing_back_is_the_full_path(tmp_path, loop, point, event, path):
    """At each point where the lane or the straight step hands back: the objects each class
    rebuilds (from_express) hold what the Router's own path holds at that point, and the
    event then has the same outcome: bytes to the client and upstream, connections closed,
    stats."""
    fast = Rig(tmp_path, loop, express=path == "express")
    full = Rig(tmp_path, loop, express=False, straight=False)
    fast_upstream, full_upstream = point(fast), point(full)
    exchange, stream = fast.conn.active, full.conn.active
    assert type(exchange).__name__ == FAST_PATHS[path] and type(stream) is Stream
    assert _handed_state(exchange) == _state(stream)
    assert _normalised(fast.down.take()) == _normalised(full.down.take())

    event(fast, fast_upstream, loop)
    event(full, full_upstream, loop)
    if path == "express":
        assert exchange.handed_to is not None
    else:
        assert exchange.router is not exchange and exchange.upstream is None
    assert _normalised(fast.down.take()) == _normalised(full.down.take())
    assert fast.down.aborted == full.down.aborted
    assert fast_upstream.transport.take() == full_upstream.transport.take()
    assert fast_upstream.closed == full_upstream.closed
    assert dict(fast.worker.stats.counters) == dict(full.worker.stats.counters)
    assert dict(fast.worker.stats.gauges) == dict(full.worker.stats.gauges)
    assert fast.cluster.rq_active == full.cluster.rq_active
    assert list(fast.conn.streams) == list(full.conn.streams)
    if full.conn.active is not None:
        assert _state(fast.conn.active) == _state(full.conn.active)
