"""One request/response exchange through the connection manager: Envoy's ActiveStream.

The request head is mutated as Envoy's connection manager mutates it (x-forwarded-for,
x-forwarded-proto, x-request-id, the x-envoy-* controls an external client may not send),
routed (routing.py), passed through the stream filters (filter.py) and handed to the router
(router.py); the response comes back through the filters in reverse, gets the headers Envoy
adds (server, date, x-envoy-upstream-service-time) and goes to the codec. Local replies (404
route miss, 503 no healthy upstream, the filters' 429 and fault aborts, codec errors) take
the same way out.
"""

from __future__ import annotations

import logging
import random
import time

from ...codecs.h2server import CANCEL, INTERNAL_ERROR
from ...codecs.message import Headers, Response
from . import downstream_end, grpc_reply, path_normalize
from . import xfcc
from .body_filters import chain_for, replaced_by
from .filter import PAUSE, Delay, LocalReply, plan_for_route
from .held_chunks import with_chunk
from .route_again import refilter
from . import route_step         # (its needs_router looked up there: the express tests patch it)
from .route_step import RouteStep
from .router import Router, expected_timeout_header
from .straight import FIELDS as STRAIGHT_FIELDS, StraightSteps
from .stream_info import StreamInfo

log = logging.getLogger("baton.http")

_TEXT_PLAIN = ("content-type", "text/plain")
_DATE_ONLY = frozenset({"date"})
_PROTOCOLS = {"1.1": "HTTP/1.1", "2": "HTTP/2", "1.0": "HTTP/1.0"}     # %PROTOCOL%, per version


class _DateCache:
    """The Date header value, rebuilt at most once per second (Envoy's DateProvider)."""

    __slots__ = ("second", "value")

    def __init__(self):
        self.second = -1
        self.value = ""

    def get(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        return self.value


DATE = _DateCache()


# The variant nibble of a random UUID (10xx): hex digit -> the digit with its top bits 10.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_request_id(_bits=random.getrandbits, _variant=_VARIANT) -> str:
    """A random (version 4) UUID string, without uuid.uuid4()'s object: Envoy's request ids
    are random UUIDs too, not secrets. The version and variant digits are written over
    the random hex (cheaper than masking a 128-bit int)."""
    h = "%032x" % _bits(128)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_variant[h[16]]}{h[17:20]}-{h[20:]}"


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


# The x-envoy-* request headers that steer Envoy itself: removed from every external request
# before anything reads them, and three more from requests at the edge (use_remote_address).
EXTERNAL_STRIPPED = ("x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
                     "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
                     "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
                     "x-envoy-upstream-rq-per-try-timeout-ms",
                     "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
                     "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
                     "x-envoy-hedge-on-per-try-timeout")
EDGE_STRIPPED = ("x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
                 "x-envoy-downstream-service-node")
EXTERNAL_STRIPPED_SET = frozenset(EXTERNAL_STRIPPED) | {"x-envoy-internal"}
EDGE_STRIPPED_SET = EXTERNAL_STRIPPED_SET | frozenset(EDGE_STRIPPED)


def mutate_request_headers(hcm, request, peer, tls=None) -> tuple:
    """What Envoy's connection manager does to every request before routing
    (ConnectionManagerUtility::mutateRequestHeaders): x-forwarded-for and -proto, the
    internal/external decision, the x-envoy-* controls an external client may not send,
    and x-request-id, x-forwarded-client-cert (xfcc.py). `tls`: the connection's TLS
    session facts, None for plain TCP. Returns (request id, whether the router reads
    x-envoy-* controls). Shared by the Stream and the express lane (express.py)."""
    headers = request.headers
    if tls is not None and request.version != "2":
        request.scheme = "https"        # HTTP/1.1 has no :scheme: the connection says it
    remote_ip = peer[0] if peer else ""
    # One pass over the names: most requests carry none of the headers looked at here.
    present = {name for name, _ in headers.items}
    if tls is not None or xfcc.HEADER in present:
        xfcc.mutate(headers, present, hcm.spec.get("xfcc"), tls)
    xff = headers.get("x-forwarded-for") if "x-forwarded-for" in present else None
    if hcm.use_remote_address:
        if not hcm.skip_xff_append:
            # A loopback peer is recorded as this node's own address, as Envoy does.
            appended = hcm.node_address if _is_loopback(remote_ip) else remote_ip
            if xff is None:
                headers.add("x-forwarded-for", appended)
            else:
                headers.set("x-forwarded-for", f"{xff},{appended}")
        if "x-forwarded-proto" in present:
            headers.set("x-forwarded-proto", request.scheme)
        else:
            headers.add("x-forwarded-proto", request.scheme)
        # Internal only when the peer is the whole chain (no x-forwarded-for came in).
        internal = xff is None and hcm.is_internal(remote_ip)
    else:
        if "x-forwarded-proto" not in present:
            headers.items.append(("x-forwarded-proto", request.scheme))
        # Without use_remote_address the client is what x-forwarded-for names, when it
        # names exactly one address.
        internal = xff is not None and "," not in xff and hcm.is_internal(xff.strip())
    edge = hcm.use_remote_address and not internal
    # x-envoy-* controls survive only on internal requests (and route mutations may add
    # them): only then does the router look.
    controls = internal or (hcm.routes is not None and hcm.routes.adds_request_headers)
    if internal:
        headers.set("x-envoy-internal", "true")
    else:
        # An external request may not steer the proxy (Envoy's cleanInternalHeaders).
        doomed = present & (EDGE_STRIPPED_SET if edge else EXTERNAL_STRIPPED_SET)
        if doomed:
            headers.items = [kv for kv in headers.items if kv[0] not in doomed]
        if edge:
            headers.set("x-envoy-external-address", remote_ip)
    if hcm.generate_request_id:
        request_id = headers.get("x-request-id") if "x-request-id" in present else None
        if request_id is None:
            request_id = new_request_id()
            headers.items.append(("x-request-id", request_id))
        elif edge and not hcm.preserve_external_request_id:
            request_id = new_request_id()
            headers.set("x-request-id", request_id)
        return request_id, controls
    return headers.get("x-request-id"), controls


def own_response_headers(hcm, headers, service_time) -> None:
    """The response headers the proxy owns, replaced in one pass: date (Envoy's
    DateProvider), server (OVERWRITE, the default) and x-envoy-upstream-service-time
    (`service_time`: its (name, value) pair, or None). Shared with express.py."""
    transformation = hcm.server_header_transformation
    overwrite = hcm.owned_response_headers if transformation == "OVERWRITE" else _DATE_ONLY
    items = headers.items = [kv for kv in headers.items if kv[0] not in overwrite]
    if service_time is not None:
        if transformation != "OVERWRITE" and headers.remove("x-envoy-upstream-service-time"):
            items = headers.items
        items.append(service_time)
    items.append(("date", DATE.get()))     # before server, as Envoy's encodeHeaders sets them
    if transformation == "OVERWRITE":
        items.append(("server", hcm.server_name))
    elif transformation == "APPEND_IF_ABSENT" and "server" not in headers:
        items.append(("server", hcm.server_name))


class FilterPlan:
    """What a chain of filter factories asks of every request, decided once per chain and
    kept on the connection manager's config (HttpConfig.filter_plan); decided again for a
    list replaced or grown (a replaced config's factories go with it: a memo by the list's id
    kept them alive).

    `calls`: the factories a request calls. A factory whose config gave it nothing to do
    (`idle`) is left out, unless some factory's filters may clear the route cache
    (`reroutes`: then every factory is called and those that made nothing are recorded, as
    refilter needs: route_again.py). `per_route`: {route: the factories its requests call}
    (filter.plan_for_route, filled at each route's first request); `by_route`: some factory
    is off by default (HttpFilter.disabled), so every route has its own plan (else only a
    route whose FilterConfig turns a filter off)."""

    __slots__ = ("factories", "count", "calls", "reroutes", "per_route", "by_route")

    def __init__(self, factories):
        self.factories = factories
        self.count = len(factories)
        self.reroutes = any(getattr(f, "clears_route_cache", True) for f in factories)
        self.calls = tuple(factories) if self.reroutes else \
            tuple(f for f in factories if not getattr(f, "idle", False))
        self.per_route = {}
        self.by_route = any(getattr(f, "disabled_by_default", False) for f in factories)


class Stream(RouteStep, StraightSteps, StreamInfo):
    """One request/response exchange (Envoy's ActiveStream), and what is known of it: a
    Stream is its own StreamInfo (`info` is the stream itself, a property, not a reference:
    a stored one would make every Stream a cycle for the collector). One object a request
    fewer; the stream's own code writes the fields on itself. Its routing step, once the
    filters are through, is route_step.py's (RouteStep); a request that needs nothing of the
    router but a host and an idle connection is sent and answered by the stream itself
    (straight.py: StraightSteps), its router the stream until a failure makes one."""

    __slots__ = ("conn", "id", "loop", "worker", "stats", "hcm", "route",
                 "filters", "filter_index", "router", "request_complete", "response_started",
                 "response_complete", "trailers", "held_body", "held_bytes", "close_connection",
                 "done", "cluster_name", "delay_timer", "buffer_limit", "paused_downstream",
                 "upgrade", "expect_continue", "end_at_head", "controls", "last_activity",
                 "idle_timeout", "window_held", "picked", "body_watcher", "body_chain",
                 "route_stale", "skipped_factories") + STRAIGHT_FIELDS

    def __init__(self, conn, event):
        """`conn`: the HttpConnection (connection_manager.py); `event`: the RequestHead, or
        None for a request the codec could not parse (for_error)."""
        self.conn = conn
        loop = self.loop = conn.loop
        worker = self.worker = conn.worker
        self.stats = worker.stats.counters
        hcm = self.hcm = conn.hcm
        # The StreamInfo fields, written here rather than by StreamInfo.__init__: a call a
        # request fewer, and the request's facts written once (test_stream_info_fields.py
        # holds them to StreamInfo.__init__'s).
        self.start_time = time.time()
        now = self.start_monotonic = self.last_activity = loop.time()
        if event is not None:
            request = self.request = event.request
            self.id = event.stream_id
            self.upgrade = event.upgrade
            self.expect_continue = event.expect_continue
            self.original_path = request.path
            self.protocol = _PROTOCOLS.get(request.version) or f"HTTP/{request.version}"
            if event.end_stream:        # complete as it began: REQUEST_DURATION 0
                self.end_at_head = self.request_complete = True
                self.last_request_byte = now
            else:
                self.end_at_head = self.request_complete = False
                self.last_request_byte = None
        else:
            self.request = None
            self.id = 0
            self.end_at_head = self.request_complete = True
            self.upgrade = None
            self.expect_continue = False
            self.original_path = ""
            self.protocol = "HTTP/1.1"
            self.last_request_byte = None
        self.response = None
        self.response_code = 0
        self.response_code_details = ""
        self.response_flags = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.downstream_remote = conn.peer
        self.downstream_local = conn.local
        self.upstream_host = None
        self.upstream_local = None
        self.upstream_cluster = None
        self.route_name = ""
        self.request_id = None
        self.attempts = 0
        self.first_upstream_byte = None
        self.last_downstream_byte = None
        self.upstream_failure = ""
        self.connection_id = conn.id
        self.response_trailers = None
        self.dynamic_metadata = None
        self.route = None
        self.filters = ()
        self.filter_index = 0
        self.router = None
        self.response_started = False
        self.response_complete = False
        self.trailers = None
        self.held_body = ()             # body that arrived before the router took over
                                        # (a list once some did)
        self.held_bytes = 0
        self.close_connection = False
        self.done = False
        self.cluster_name = None
        self.delay_timer = None
        self.buffer_limit = hcm.buffer_limit
        self.paused_downstream = False
        self.controls = False
        self.idle_timeout = hcm.stream_idle_timeout
        self.window_held = False
        self.picked = None              # (host,): the express lane asked the balancer already
        self.body_watcher = None        # a PAUSEd filter waiting for body (ext_authz)
        self.body_chain = None          # the filters' body/trailer hooks (body_filters.py)
        self.route_stale = False        # a filter cleared the route cache (route_again.py)
        self.skipped_factories = None   # [factory] whose create() made no filter here

    @property
    def info(self) -> "Stream":
        """The stream's StreamInfo: the stream itself (for the filters, the access log, the
        formatter, which read `stream.info`)."""
        return self

    @classmethod
    def from_express(cls, exchange) -> "Stream":
        """The Stream the full path would have built for an express exchange (express.py), in
        the state it would have reached by now, with its StreamInfo, Router and
        UpstreamRequest: routed (no filters: the lane runs only without them), the request
        sent whole, the response begun or not."""
        stream = cls(exchange.conn, exchange.event)
        # (the lane's requests end at their head: REQUEST_DURATION 0, as the full path's)
        stream.start_monotonic = stream.last_request_byte = exchange.start_monotonic
        stream.express_facts(exchange)
        stream.route = exchange.route
        stream.cluster_name = exchange.cluster.name
        stream.idle_timeout = exchange.idle_timeout
        stream.last_activity = exchange.last_activity
        stream.paused_downstream = exchange.paused
        stream.response_started = exchange.response_started
        stream.done = exchange.done
        stream.router = Router.from_express(stream, exchange)
        return stream

    @classmethod
    def for_error(cls, conn, stream_id: int) -> "Stream":
        """A stream for a request the codec could not parse: answered with its error."""
        stream = cls(conn, None)
        stream.id = stream_id
        hcm = conn.hcm
        stream.stats[hcm.stat_rq_total] += 1
        stream.stats[hcm.stat_rq_http2_total if conn.codec.multiplexed else
                     hcm.stat_rq_http1_total] += 1             # as Envoy counts a stream
        conn.worker.stats.gauges[hcm.stat_rq_active] += 1     # _end() counts it down
        return stream

    # -- request path -----------------------------------------------------------------------

    def start(self) -> None:
        hcm = self.hcm
        request = self.request
        worker = self.worker
        counters = self.stats
        version = request.version
        counters[hcm.stat_rq_total] += 1
        counters[hcm.stat_rq_http2_total if version == "2" else hcm.stat_rq_http1_total] += 1
        worker.stats.gauges[hcm.stat_rq_active] += 1
        if worker.overload.shedding and worker.overload.rejects_request(self):
            return
        if hcm.plain_streams and version != "1.0" and request.authority and not self.upgrade \
                and not self.expect_continue:
            # The config's verdict (HttpConfig.plain_streams, the lane's without its codec):
            # no edit below but the request headers', no filter, a route table that routes
            # the edited request as the lane routes the unedited one.
            conn = self.conn
            self.request_id, self.controls = mutate_request_headers(hcm, request, conn.peer,
                                                                    conn.tls)
            route = self.route = hcm.routes.route(request)
            if route is not None:
                self.route_name = route.name
                if route.idle_timeout_set:
                    self.idle_timeout = route.idle_timeout
                name = route.express_cluster
                cluster = worker.clusters.get(name) if name is not None else None
                if cluster is not None:
                    # The route's verdict (Route.express_cluster): one cluster, no mutation,
                    # rewrite, grpc-timeout, retry or hash policy; and no x-envoy-* control
                    # read (the config's verdict: never internal, no table that adds one).
                    # _route's steps come down to these.
                    self.cluster_name = self.upstream_cluster = name
                    timeout = route.timeout
                    if timeout and not hcm.suppress_envoy_headers:
                        request.headers.items.append(expected_timeout_header(timeout))
                    if route_step.needs_router(self, None, cluster, None, None) or \
                            not self.send_straight(cluster, timeout):
                        self.to_router(route, cluster, None, timeout, None)
                    return
                if route.kind == "cluster":
                    self.cluster_name = self.upstream_cluster = \
                        route.single_cluster or route.pick_cluster(request, random.random)
            self._route()
            return
        if version == "1.0" and not hcm.accept_http_10:
            downstream_end.http10_refused(self)
            self.close_connection = True
            self.local_reply(426, "Upgrade Required", "low_version")
            return
        if not request.authority:
            if request.version == "1.0" and hcm.default_host_for_http_10:
                request.authority = hcm.default_host_for_http_10
            else:
                self.close_connection = request.version != "2"
                self.local_reply(400, "missing host header", "missing_host_header")
                return
        if self.expect_continue and request.version != "2":
            self.conn.codec.send_head(self.id, Response(100, Headers()), False)
        conn = self.conn
        self.request_id, self.controls = mutate_request_headers(hcm, request, conn.peer,
                                                                     conn.tls)
        if hcm.normalize_path or hcm.escaped_slashes != "KEEP_UNCHANGED" or (
                hcm.merge_slashes and "//" in request.path):
            if not self._normalize_path(hcm, request):
                return
        if (hcm.strip_any_host_port or hcm.strip_matching_host_port) and ":" in request.authority:
            host, _, port = request.authority.rpartition(":")
            if port.isdigit() and "]" not in port and (
                    hcm.strip_any_host_port or int(port) == self.conn.listener.port):
                request.authority = host
        if hcm.via:
            via = request.headers.get("via")
            request.headers.set("via", f"{via}, {hcm.via}" if via else hcm.via)
        table = hcm.routes
        route = table.route(request) if table is not None else None
        if self.upgrade and not (route.allows_upgrade(self.upgrade, hcm.upgrade_types)
                                 if route is not None else self.upgrade in hcm.upgrade_types):
            self.local_reply(403, "", "upgrade_failed")     # (no route: no route headers)
            return
        self.route = route
        if route is not None:
            self.route_name = route.name
            if route.idle_timeout_set:
                self.idle_timeout = route.idle_timeout      # 0s: none for this route
            if route.kind == "cluster":
                # Chosen with the route, before the filters: the fault filter's
                # upstream_cluster condition reads it.
                self.cluster_name = self.upstream_cluster = \
                    route.single_cluster or route.pick_cluster(request, random.random)
        factories = hcm.filter_factories
        if factories:
            plan = hcm.filter_plan
            if plan is None or plan.factories is not factories or plan.count != len(factories):
                plan = hcm.filter_plan = FilterPlan(factories)
            calls = everyone = plan.calls
            if plan.by_route or route is not None and route.filter_states is not None:
                calls = plan_for_route(plan, route)     # filters on or off for this route
            # A plain loop: a generator inside a comprehension resumed once per factory.
            filters = self.filters = []
            if plan.reroutes:
                for factory in factories:
                    made = factory.create(self) if calls is everyone or factory in calls \
                        else None
                    if made is not None:
                        filters.append(made)
                    elif self.skipped_factories is None:    # (for refilter: route_again.py)
                        self.skipped_factories = [factory]
                    else:
                        self.skipped_factories.append(factory)
            else:               # no re-route can come: no record of what made nothing
                for factory in calls:
                    made = factory.create(self)
                    if made is not None:
                        filters.append(made)
            if filters:
                self._continue_filters()
                return
        self._route()       # no filter for this request: nothing to continue

    @property
    def route_adds_headers(self) -> bool:
        return self.hcm.routes is not None and self.hcm.routes.adds_request_headers

    def _continue_filters(self, reply: LocalReply | None = None) -> None:
        self.delay_timer = None
        filters = self.filters
        if not self.filter_index:
            for stream_filter in filters:
                if stream_filter.body_hooks:    # else no chain: the plain body path
                    self.body_chain = chain_for(self, filters)
                    break
        while self.filter_index < len(filters) or reply is not None:
            if reply is not None:
                result, reply = reply, None
            else:
                if self.route_stale:
                    refilter(self)      # the filters still to come read the new route
                result = filters[self.filter_index].on_request_headers(self.request,
                                                                       self.end_at_head)
                self.filter_index += 1
            if result is None:
                continue
            if result is PAUSE:
                if self.body_chain is not None:
                    self.body_chain.headers_paused()    # the body still reaches the filter
                return                  # the filter calls resume_filters
            if isinstance(result, LocalReply):
                if result.flags:
                    self.response_flags.append(result.flags)
                self.local_reply(result.status, result.body, result.details,
                                 extra=result.headers, grpc_status=result.grpc_status)
                return
            if isinstance(result, Delay):
                if result.flags:
                    self.response_flags.append(result.flags)
                then = result.then
                self.delay_timer = self.loop.call_later(
                    result.seconds, self._continue_filters if then is None else
                    lambda: self._continue_filters(then))
                if self.body_chain is not None:
                    self.body_chain.headers_advanced()
                return
        if self.route_stale:
            # What the router will ask for, as Envoy's lazy pick; a factory after the last
            # filter may make one for the new route.
            refilter(self)
            if self.filter_index < len(filters):
                self._continue_filters()
                return
        if self.body_chain is not None:
            self.body_chain.headers_advanced()
            if self.done:
                return
        self._route()

    def resume_filters(self, result: LocalReply | None = None) -> None:
        """A PAUSEd filter's answer: go on with the next filter, or reply."""
        if not self.done:
            self._continue_filters(result)

    def clear_route_cache(self) -> None:
        """A filter changed what routing reads (Envoy's clearRouteCache): the route is
        chosen again on the request as it is once the filters are through."""
        self.route_stale = True

    def _apply_mutations(self, headers: Headers, plan) -> None:
        """A route's header mutations: its plan (route_rewrite.MutationPlan), whose steps run
        as one function made with the route; only a template with %-operators is rendered
        per request."""
        if plan:
            plan.apply(headers, self, self.hcm.render_header_value)

    def on_request_body(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        self.last_activity = self.loop.time()
        self.bytes_received += len(data)
        if self.body_chain is not None and self.body_chain.decodes:
            # Through the filters' body hooks; the chain says when the request is complete.
            if end_stream:
                self.last_request_byte = self.loop.time()
            self.conn.codec.consumed(self.id, len(data))
            self.body_chain.request_data(data, end_stream)
            return
        if end_stream:
            self.request_complete = True
            self.last_request_byte = self.loop.time()
        router = self.router
        if router is not None:
            if router is self:              # (straight: the request came whole; a late
                router = self.hand_to_router()  # body is the router's to refuse)
            router.request_body(data, end_stream)
            self.conn.codec.consumed(self.id, len(data))
            return
        # Held while the filters decide (a fault delay): bounded by the buffer limit.
        self.held_body = with_chunk(self.held_body, data)
        self.held_bytes += len(data)
        self.conn.codec.consumed(self.id, len(data))
        if self.held_bytes > self.buffer_limit and not self.response_started:
            self.stats[self.hcm.stat_rq_too_large] += 1
            self.local_reply(413, "Payload Too Large", "request_payload_too_large")
        elif self.body_watcher is not None:
            self.body_watcher()

    def on_request_trailers(self, headers) -> None:
        # Trailers end the request: %REQUEST_DURATION% reads when (review R2, finding 3).
        self.last_request_byte = self.loop.time()
        if self.body_chain is not None and self.body_chain.decodes:
            self.body_chain.request_trailers(headers)
            return
        self.request_complete = True
        self.trailers = headers
        router = self.router
        if router is not None:
            if router is self:
                router = self.hand_to_router()
            router.request_trailers(headers)
        elif self.body_watcher is not None:
            self.body_watcher()

    # -- response path ----------------------------------------------------------------------

    # (An upstream response's head comes from Router.on_response_head: the route's response
    # mutations, then _send_head.)

    def upstream_response_body(self, data: bytes, end_stream: bool, filtered=False) -> None:
        """`filtered`: the filters' body hooks passed it (body_filters.py)."""
        if self.done:
            return
        chain = self.body_chain
        if chain is not None and chain.encodes and not filtered:
            chain.response_data(data, end_stream)
            return
        now = self.last_activity = self.loop.time()
        conn = self.conn
        self.bytes_sent += len(data)
        codec = conn.codec
        codec.send_body(self.id, data, end_stream)
        if end_stream:
            # _response_done, inline: every response. No mark_dirty: the stream's end writes
            # (HttpConnection.stream_done), as the express lane's does. The last byte's time
            # is the one just read (a clock read a response fewer).
            self.response_complete = True
            self._end(now)
            return
        conn.mark_dirty()
        if not self.window_held and codec.pending(self.id) > self.buffer_limit:
            # HTTP/2: the client's window holds bytes in the codec; stop reading the upstream
            # until WINDOW_UPDATE lets them out (no unbounded buffer).
            self.window_held = True
            self.downstream_paused(True)

    def upstream_response_trailers(self, trailers, filtered=False) -> None:
        if self.done:
            return
        chain = self.body_chain
        if chain is not None and chain.encodes and not filtered:
            chain.response_trailers(trailers)
            return
        self.response_trailers = trailers
        self.conn.codec.send_trailers(self.id, trailers)
        self.conn.mark_dirty()
        self._response_done()

    def _send_head(self, response, end_stream: bool, service_time=None) -> None:
        hcm = self.hcm
        headers = response.headers
        own_response_headers(hcm, headers, service_time)
        if hcm.via:                     # every response, local replies and codec errors too
            via = headers.get("via")
            headers.set("via", f"{via}, {hcm.via}" if via else hcm.via)
        if hcm.always_set_request_id_in_response and self.request_id:
            headers.set("x-request-id", self.request_id)

        if self.filter_index:           # (no filter passed: no slice to reverse)
            for stream_filter in reversed(self.filters[:self.filter_index]):
                answer = stream_filter.on_response_headers(response, end_stream)
                if answer is not None and replaced_by(self, answer, stream_filter, response,
                                                      end_stream):
                    return              # a local reply went out instead, or the head waits
        self.response_started = True
        self.response = response
        self.response_code = response.status
        if not self.response_code_details:
            self.response_code_details = "via_upstream"
        conn = self.conn
        codec = conn.codec
        limit = hcm.max_requests_per_connection
        if self.close_connection or (limit and conn.requests >= limit) or conn.draining or (
                self.worker.overload.disable_keepalive and self.worker.overload.closes_connection(self)):
            codec.goaway()      # HTTP/1.1: this response says connection: close; HTTP/2: GOAWAY
        codec.send_head(self.id, response, end_stream)
        conn.mark_dirty()
        if end_stream:
            self._response_done()

    def _normalize_path(self, hcm, request) -> bool:
        """normalize_path, merge_slashes and path_with_escaped_slashes_action, in Envoy's
        order (path_normalize.py). -> False when the request got its answer (400 or 307)."""
        grpc = (request.headers.get("content-type") or "").startswith("application/grpc")
        action, path = path_normalize.normalize(request.path, hcm.normalize_path,
                                                hcm.merge_slashes, hcm.escaped_slashes, grpc)
        if action == path_normalize.REJECT:
            self.stats[hcm.stat_rq_failed_path_normalization] += 1
            self.local_reply(400, "", "path_normalization_failed")
            return False
        request.path = path
        if action == path_normalize.REDIRECT:
            self.stats[hcm.stat_rq_redirected_with_normalized_path] += 1
            self.local_reply(307, "", "path_normalization_failed", extra=(("location", path),))
            return False
        return True

    def local_reply(self, status: int, body, details: str, extra=(), content_type=True,
                    grpc_status=None) -> None:
        """Answer from the proxy itself, as Envoy's sendLocalReply does (to a gRPC request,
        trailers-only: grpc_reply.py)."""
        if self.done:
            return
        if self.response_started:
            self.reset(details)
            return
        chain = self.body_chain
        if chain is not None and chain.held_head is not None:
            chain.drop_held_head()      # Envoy's sendDirectLocalReply: it replaces the held
            self.filter_index = 0       # head and passes no filter
        router = self.router
        if router is self:                  # straight (straight.py): the Router cancels
            router = self.hand_to_router()
        if router is not None and not router.finished:
            router.cancel()
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        if isinstance(body, str):
            body = body.encode()
        info = self
        info.response_code_details = details
        # Envoy writes no content-length on a 1xx/204 (RFC 9110 8.6), nor on an empty body
        # (its HTTP/1.1 codec adds "content-length: 0" on the wire; %RESP()% logs "-").
        headers = Headers([] if status < 200 or status == 204 or not body else
                          [("content-length", str(len(body)))])
        if body and content_type:
            headers.add(*_TEXT_PLAIN)
        if status >= 200 and self.request is not None and grpc_reply.is_grpc(self.request.headers):
            headers = Headers(grpc_reply.reply_headers(status, body, grpc_status))
            status, body = 200, b""
        for name, value in extra:
            headers.add(name, value)
        if self.route is not None and self.request is not None and details != "route_not_found":
            self._apply_mutations(headers, self.route.response_plan(self.cluster_name))
        if not self.request_complete and not self.remote_complete and \
                self.request is not None and not self.conn.codec.multiplexed:
            # The rest of the request body would be read as the next request: close after.
            self.conn.codec.goaway()
        head_request = self.request is not None and self.request.method == "HEAD"
        if body and not head_request:
            self._send_head(Response(status, headers), False)
            chain = self.body_chain
            if chain is not None and chain.held_head is not None:
                chain.reply_body_behind_head(body)     # a filter holds the reply's head
                return
            self.bytes_sent += len(body)
            self.conn.codec.send_body(self.id, body, True)
            self._response_done()
        else:
            self._send_head(Response(status, headers), True)
        if not self.conn.codec.multiplexed:
            self.conn.flush()
        # HTTP/2: the stream's end wrote it, or left it to the turn's one write (flush_soon).

    @property
    def remote_complete(self) -> bool:
        """The codec delivered the request's end (Envoy's remoteDecodeComplete), whether or
        not it has passed the filters' body hooks (request_complete: it has)."""
        chain = self.body_chain
        if chain is None or not chain.decodes:
            return self.request_complete
        return chain.remote_end or self.end_at_head

    def _response_done(self) -> None:
        self.response_complete = True
        self._end()

    # -- backpressure -----------------------------------------------------------------------

    def pause_downstream(self, on: bool) -> None:
        if on != self.paused_downstream:
            self.paused_downstream = on
            self.conn.pause_reading(on)

    def downstream_paused(self, on: bool) -> None:
        """The client cannot take more (its socket, or its HTTP/2 window): hold the upstream."""
        router = self.router
        if router is self:                  # straight (straight.py): its own connection
            if on != self.holding:
                self.holding = on
                self.upstream.pause_reading(on)
        elif router is not None and router.upstream is not None:
            router.upstream.hold_upstream(on)

    # -- ending -----------------------------------------------------------------------------

    def reset(self, reason: str, notify: bool = True, code: int = CANCEL,
              stat: str | None = None) -> None:
        """Abort this stream (client reset, upstream reset after the response began); with
        `notify`, the client is told (HTTP/2 RST_STREAM `code`) and `stat` counted (default
        downstream_rq_tx_reset)."""
        if self.done:
            return
        router = self.router
        if router is self:                  # straight (straight.py): the Router cancels
            router = self.hand_to_router()
        if router is not None:
            router.cancel()
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        if not self.response_code_details:
            self.response_code_details = reason.replace(" ", "_")
        if notify:
            self.stats[stat or self.hcm.stat_rq_tx_reset] += 1
            codec = self.conn.codec
            codec.reset(self.id, code)
            self.conn.flush()
            if not codec.multiplexed:
                self.conn.queued.clear()    # the connection dies: nothing queued may start
                self.conn.active = None
                self._end()
                self.conn.abort()
                return
        self._end()

    def reset_by_overload(self) -> None:
        """reset_high_memory_stream chose this stream (worker/overload_reset.py). Envoy's codec
        resets it (RST_STREAM INTERNAL_ERROR, as Envoy 1.40 sends it; HTTP/1.1 ends the
        connection) and its connection
        manager takes that as any reset: downstream_rq_rx_reset, flag OM, details overload."""
        if self.done:
            return
        self.response_flags.append("OM")
        self.response_code_details = "overload"
        self.reset("overload", code=INTERNAL_ERROR, stat=self.hcm.stat_rq_rx_reset)

    def timed_out(self, status: int, body: str, details: str, stat: str) -> None:
        """request_timeout / stream_idle_timeout: Envoy's 408 before the response began, a
        reset after; an idle timeout once the whole request came is 504 (Envoy 1.40's
        onIdleTimeout, measured: 504 "stream timeout" to a GET, 408 to a POST short of its
        body)."""
        self.stats[stat] += 1
        if self.response_started:
            self.reset(details)
        else:
            if self.remote_complete and stat == self.hcm.stat_rq_idle_timeout:
                status = 504                # (the connection stays, as Envoy's)
            else:
                self.close_connection = not self.conn.codec.multiplexed
            self.local_reply(status, body, details)

    def reset_downstream(self, reason: str) -> None:
        """The upstream failed after the response began: the client must see it broken."""
        self.response_flags.append("UPE" if "protocol" in reason else "UR")
        self.reset(reason)

    def _end(self, now: float | None = None) -> None:
        """`now`: the loop's time, when the caller just read it (the last byte sent)."""
        if self.done:
            return
        self.done = True
        if self.paused_downstream:
            self.paused_downstream = False
            self.conn.pause_reading(False)
        hcm = self.hcm
        info = self
        info.last_downstream_byte = self.loop.time() if now is None else now
        code = info.response_code
        if code:
            name = hcm.stat_rq_class.get(code // 100)
            if name is not None:
                self.stats[name] += 1
        self.worker.stats.gauges[hcm.stat_rq_active] -= 1
        for access_log in hcm.access_logs:
            try:
                access_log.log(info)
            except Exception:       # a log line must never take the stream down with it
                log.exception("access log")
        for stream_filter in self.filters:
            stream_filter.on_log()
        self.conn.stream_done(self)
        # The Router points back at the stream: dropped here, the request's objects go by
        # reference counting, not by the collector (~10% of an HTTP/2 request's CPU).
        self.router = None
