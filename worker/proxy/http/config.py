"""One http_connection_manager's config, compiled once per snapshot for the data path.

The snapshot's plain dict (xds/http.py) becomes: a RouteTable (routing.py), the filter
factories in order (the router is the connection manager's own last step, not a factory),
the access logs, and every stat name precomputed, so a request builds no strings to count.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from ...codecs.h2limits import ENVOY_DEFAULTS as H2_LIMIT_DEFAULTS
from ...codecs.h2limits import TOO_MANY_PREMATURE_RESETS
from . import ecds
from . import filter as filters
from .express import blockers, config_allows
from .routing import RouteTable

log = logging.getLogger("baton.http.config")

ROUTER = "envoy.filters.http.router"


def _load_builtin_filters() -> None:
    # Importing registers them (filter.register).
    from . import cors, ext_authz, fault, grpc_stats, local_ratelimit, rbac, wasm  # noqa: F401
    from . import buffer  # noqa: F401
    from ..istio import alpn, authn, connect_baggage, http_stats, peer_metadata  # noqa: F401


class HttpConfig:
    # The express lane (express.py) and each field: safe (the lane honours it, or it does not
    # change a request on the lane) or blocking (name -> whether a value keeps the lane closed
    # for this config). tests/unit/test_http_express.py fails on a field declared neither way.
    EXPRESS_SAFE = frozenset({
        "spec", "_templates", "express", "plain_streams", "node_address",
        # Timers and limits of the connection, the codec and the stream sweep, which the
        # lane's connection keeps (a stream timeout hands the exchange back):
        "buffer_limit", "max_header_bytes", "max_headers", "request_headers_timeout",
        "idle_timeout", "stream_idle_timeout", "shortest_idle", "request_timeout",
        "max_connection_duration", "delayed_close_timeout", "drain_timeout",
        "max_requests_per_connection",
        # Request and response headers through the full path's own functions
        # (stream.mutate_request_headers, stream.own_response_headers):
        "skip_xff_append", "generate_request_id", "preserve_external_request_id",
        "server_name", "server_header_transformation", "owned_response_headers",
        "suppress_envoy_headers",
        # Never on the lane, which takes HTTP/1.1 requests without an upgrade only:
        "accept_http_10", "default_host_for_http_10", "http2_options", "upgrade_types",
        "filter_plan",
    })
    EXPRESS_SAFE_PREFIX = "stat_"       # stat names: counted alike on both paths
    EXPRESS_BLOCKING = {
        "codec_type": lambda codec_type: codec_type == "HTTP2",
        "routes": lambda table: table is None or bool(blockers(table, RouteTable.EXPRESS_BLOCKING)),
        "filter_factories": bool, "access_logs": bool, "via": bool, "merge_slashes": bool,
        "normalize_path": bool, "escaped_slashes": lambda action: action != "KEEP_UNCHANGED",
        "strip_matching_host_port": bool, "strip_any_host_port": bool,
        # Never internal, so the router reads no x-envoy-* control header:
        "use_remote_address": bool, "internal_networks": bool,
        "always_set_request_id_in_response": bool,
        "max_stream_duration": bool,        # the router runs it (router.py)
    }
    # The Stream's plain step (stream.py, Stream.start): the lane's verdict without the codec
    # (an HTTP/2 request has none of the edits either), kept on HttpConfig.plain_streams.
    STREAM_BLOCKING = {name: blocks for name, blocks in EXPRESS_BLOCKING.items()
                       if name != "codec_type"}

    def __init__(self, spec: dict, worker, listener_buffer_limit: int):
        _load_builtin_filters()
        self.spec = spec
        self.stat_prefix = prefix = spec["stat_prefix"]
        self.codec_type = spec.get("codec_type", "AUTO")
        self.buffer_limit = spec.get("buffer_limit") or listener_buffer_limit
        self.max_header_bytes = int(spec.get("max_request_headers_kb", 60)) * 1024
        self.max_headers = int(spec.get("max_request_headers_count", 100))
        self.request_headers_timeout = spec.get("request_headers_timeout")
        self.idle_timeout = spec.get("idle_timeout", 3600.0)
        self.stream_idle_timeout = spec.get("stream_idle_timeout", 300.0)
        self.set_routes(spec.get("route_config"))
        self.request_timeout = spec.get("request_timeout")
        self.max_connection_duration = spec.get("max_connection_duration")
        # common_http_protocol_options.max_stream_duration; a route may replace it.
        self.max_stream_duration = spec.get("max_stream_duration")
        self.via = spec.get("via") or ""
        self.merge_slashes = bool(spec.get("merge_slashes"))
        self.normalize_path = bool(spec.get("normalize_path"))
        self.escaped_slashes = spec.get("escaped_slashes") or "KEEP_UNCHANGED"
        self.strip_matching_host_port = bool(spec.get("strip_matching_host_port"))
        self.strip_any_host_port = bool(spec.get("strip_any_host_port"))
        self.delayed_close_timeout = spec.get("delayed_close_timeout", 1.0)
        self.drain_timeout = spec.get("drain_timeout") or 5.0
        self.max_requests_per_connection = spec.get("max_requests_per_connection")
        self.use_remote_address = bool(spec.get("use_remote_address"))
        # internal_address_config: who counts as internal (Envoy 1.40: nobody by default).
        self.internal_networks = [ipaddress.ip_network(cidr, strict=False)
                                  for cidr in spec.get("internal_cidrs") or ()]
        self.node_address = node_address()
        self.skip_xff_append = bool(spec.get("skip_xff_append"))
        self.generate_request_id = spec.get("generate_request_id", True)
        self.preserve_external_request_id = bool(spec.get("preserve_external_request_id"))
        self.always_set_request_id_in_response = bool(spec.get("always_set_request_id_in_response"))
        self.server_name = spec.get("server_name") or "envoy"
        self.server_header_transformation = spec.get("server_header_transformation", "OVERWRITE")
        self.owned_response_headers = frozenset({"date", "server"})
        self.upgrade_types = {u.lower() for u in spec.get("upgrade_types") or ()}
        http1 = spec.get("http1") or {}
        self.accept_http_10 = bool(http1.get("accept_http_10"))
        self.default_host_for_http_10 = http1.get("default_host_for_http_10") or ""
        self.http2_options = _h2_options(spec.get("http2") or {})
        router_config = {}
        self.filter_factories = []
        # What that chain asks of each request (stream.FilterPlan), decided by the first
        # stream after the list is made or replaced: the full path's own.
        self.filter_plan = None
        for entry in spec.get("http_filters") or ():
            given = entry
            if entry["name"] == ecds.ECDS:          # given by config_discovery (xds/ecds.py)
                entry = ecds.effective(entry)
            name = entry["name"]
            if name == ROUTER:
                router_config = entry.get("config") or {}
                continue
            factory_class = filters.registry.get(name)
            if factory_class is None:
                factory_class = _entry_point(name)
            factory = factory_class(entry.get("config") or {}, _FilterContext(worker, prefix))
            # (MX: HttpFilter.disabled, on for the routes that say so: filter.enabled_for)
            factory.config_name = given.get("filter_name") or entry.get("filter_name") or (
                entry.get("config") or {}).get("filter_name") or name
            factory.disabled_by_default = bool(given.get("disabled"))
            self.filter_factories.append(factory)
        self._tell_factories_routes()
        self.suppress_envoy_headers = bool(router_config.get("suppress_envoy_headers"))
        if not self.suppress_envoy_headers:
            # The router's own header replaces whatever the upstream sent.
            self.owned_response_headers |= {"x-envoy-upstream-service-time"}
        self.access_logs = _access_logs(spec.get("access_log") or (), worker)
        self._templates: dict = {}
        self.express = config_allows(self)     # HTTP/1.1 requests may take the express lane
        self.plain_streams = not blockers(self, HttpConfig.STREAM_BLOCKING)

        http = f"http.{prefix}."
        self.stat_cx_total = http + "downstream_cx_total"
        self.stat_cx_active = http + "downstream_cx_active"
        self.stat_cx_http1_total = http + "downstream_cx_http1_total"
        self.stat_cx_http2_total = http + "downstream_cx_http2_total"
        self.stat_cx_protocol_error = http + "downstream_cx_protocol_error"
        self.stat_cx_idle_timeout = http + "downstream_cx_idle_timeout"
        # A connection's end (downstream_end.py).
        self.stat_cx_destroy = http + "downstream_cx_destroy"
        self.stat_cx_destroy_local = http + "downstream_cx_destroy_local"
        self.stat_cx_destroy_remote = http + "downstream_cx_destroy_remote"
        self.stat_cx_destroy_active_rq = http + "downstream_cx_destroy_active_rq"
        self.stat_cx_destroy_local_active_rq = http + "downstream_cx_destroy_local_active_rq"
        self.stat_cx_destroy_remote_active_rq = http + "downstream_cx_destroy_remote_active_rq"
        self.stat_cx_delayed_close_timeout = http + "downstream_cx_delayed_close_timeout"
        self.stat_rq_total = http + "downstream_rq_total"
        self.stat_rq_active = http + "downstream_rq_active"
        self.stat_rq_http1_total = http + "downstream_rq_http1_total"
        self.stat_rq_http2_total = http + "downstream_rq_http2_total"
        self.stat_rq_rx_reset = http + "downstream_rq_rx_reset"
        self.stat_rq_tx_reset = http + "downstream_rq_tx_reset"
        self.stat_rq_too_large = http + "downstream_rq_too_large"
        self.stat_rs_too_large = http + "rs_too_large"
        self.stat_rq_header_timeout = http + "downstream_rq_header_timeout"
        self.stat_rq_timeout = http + "downstream_rq_timeout"
        self.stat_rq_max_duration_reached = http + "downstream_rq_max_duration_reached"
        self.stat_rq_idle_timeout = http + "downstream_rq_idle_timeout"
        self.stat_rq_class = {k: f"{http}downstream_rq_{k}xx" for k in range(1, 6)}
        self.stat_no_route = http + "no_route"
        self.stat_no_cluster = http + "no_cluster"
        self.stat_rq_redirect = http + "rq_redirect"
        self.stat_rq_direct_response = http + "rq_direct_response"
        self.stat_rq_premature_resets = http + TOO_MANY_PREMATURE_RESETS
        # Counted when path normalization (path_normalize.py) rejects or redirects.
        self.stat_rq_failed_path_normalization = http + "downstream_rq_failed_path_normalization"
        self.stat_rq_redirected_with_normalized_path = (
            http + "downstream_rq_redirected_with_normalized_path")

    def counters(self) -> list[str]:
        return [self.stat_cx_total, self.stat_cx_http1_total, self.stat_cx_http2_total,
                self.stat_cx_protocol_error, self.stat_cx_idle_timeout, self.stat_rq_total,
                self.stat_cx_destroy, self.stat_cx_destroy_local, self.stat_cx_destroy_remote,
                self.stat_cx_destroy_active_rq, self.stat_cx_destroy_local_active_rq,
                self.stat_cx_destroy_remote_active_rq, self.stat_cx_delayed_close_timeout,
                self.stat_rq_http1_total, self.stat_rq_http2_total, self.stat_rq_rx_reset,
                self.stat_rq_tx_reset, self.stat_rq_too_large, self.stat_rq_header_timeout,
                self.stat_rq_timeout, self.stat_rq_idle_timeout,
                self.stat_rq_max_duration_reached,
                *self.stat_rq_class.values(), self.stat_no_route, self.stat_no_cluster,
                self.stat_rq_redirect, self.stat_rq_direct_response,
                self.stat_rq_premature_resets, self.stat_rs_too_large]

    def gauges(self) -> list[str]:
        return [self.stat_cx_active, self.stat_rq_active]

    def is_internal(self, ip: str) -> bool:
        if not self.internal_networks or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.internal_networks)

    def render_header_value(self, template: str, info) -> str:
        """A request/response_headers_to_add value: plain text, or Envoy %-operators."""
        if "%" not in template:
            return template
        compiled = self._templates.get(template)
        if compiled is None:
            from .formatter import compile_header_value
            compiled = self._templates[template] = compile_header_value(template)
        return compiled(info)

    def set_routes(self, route_config) -> None:
        """Install a route table (at start, and for an RDS update). One attribute holds it and
        a request reads it once, so every request sees the old table or the new, never half;
        the connections already open keep going and use the new table for new requests."""
        routes = RouteTable(route_config) if route_config else None
        # A route's idle_timeout replaces stream_idle_timeout for its streams; the connection's
        # sweep must look often enough for the shortest.
        route_idles = [r.idle_timeout for vh in (routes.virtual_hosts if routes else ())
                       for r in vh.routes if r.idle_timeout_set and r.idle_timeout]
        self.shortest_idle = min([t for t in [self.stream_idle_timeout, *route_idles] if t],
                                 default=None)
        self.routes = routes
        if hasattr(self, "filter_factories"):     # (at start: once the factories are made)
            self._tell_factories_routes()
        if hasattr(self, "express"):
            # An RDS update (at start the verdict comes last): the table is one of its inputs.
            self.express = config_allows(self)
            self.plain_streams = not blockers(self, HttpConfig.STREAM_BLOCKING)

    def _tell_factories_routes(self) -> None:
        """Factories whose work may come from a route's typed_per_filter_config (fault, local
        rate limit) look at the new table; when one's `idle` changed, a new list makes
        stream.FilterPlan decide the chain again (filter_plan is kept for one list)."""
        changed = False
        for factory in self.filter_factories:
            routes_changed = getattr(factory, "routes_changed", None)
            if routes_changed is not None and routes_changed(self.routes):
                changed = True
        if changed:
            self.filter_factories = list(self.filter_factories)

    def close(self) -> None:
        """The config is replaced: nothing to release (log files belong to the worker)."""


_NODE_ADDRESS: list = []      # memo: this host's address, looked up once per process


def node_address() -> str:
    """This node's own IPv4 address, as Envoy's local_info finds it: the first non-loopback
    interface address; 127.0.0.1 when there is none."""
    if not _NODE_ADDRESS:
        import psutil
        found = "127.0.0.1"
        for addrs in psutil.net_if_addrs().values():
            for addr in addrs:
                if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                    found = addr.address
                    break
            if found != "127.0.0.1":
                break
        _NODE_ADDRESS.append(found)
    return _NODE_ADDRESS[0]


class _FilterContext:
    """What a filter factory may use from the worker (filter.py)."""

    __slots__ = ("worker", "loop", "stats", "stat_prefix")

    def __init__(self, worker, stat_prefix: str):
        self.worker = worker
        self.loop = worker.loop
        self.stats = worker.stats
        self.stat_prefix = stat_prefix


def _entry_point(name: str):
    found = filters.load_entry_points().get(name)
    if found is None:
        raise ValueError(f"HTTP filter {name!r} is not installed")
    factory_class = found.load()
    filters.registry[name] = factory_class
    return factory_class


def _access_logs(specs, worker) -> list:
    if not specs:
        return []
    from .access_log import AccessLog, AccessLogFiles
    files = getattr(worker, "access_log_files", None)
    if files is None:
        broker = getattr(worker, "handoff_broker", None)
        files = worker.access_log_files = AccessLogFiles(
            worker.loop, opener=broker.open_log if broker is not None else None)
    return [AccessLog(spec, files) for spec in specs]


# Work one HTTP/2 connection may do per turn of the event loop: frames read per receive(),
# the rest on a later turn (h2server.py `backlog`), so that a flooding client shares the
# worker with the others. 64 frames of the costliest kind (new streams, each routed and sent
# upstream) take about 5 ms here; control frames far less.
H2_FRAMES_PER_TURN = 64


def _h2_options(spec: dict) -> dict:
    """http2_protocol_options (xds/http.py, every field with its default) -> the keyword
    arguments of the HTTP/2 server codec."""
    options = {"frames_per_turn": H2_FRAMES_PER_TURN}
    for key, arg in (("max_concurrent_streams", "max_concurrent_streams"),
                     ("initial_stream_window_size", "initial_stream_window"),
                     ("initial_connection_window_size", "initial_connection_window")):
        if spec.get(key) is not None:
            options[arg] = spec[key]
    # The flood limits and the premature-reset check are always on, with Envoy's defaults
    # (the premature-reset ones are Envoy runtime keys, which Baton does not have).
    for key, default in H2_LIMIT_DEFAULTS.items():
        options[key] = spec.get(key, default)
    options["stream_error_on_invalid_http_message"] = bool(
        spec.get("override_stream_error_on_invalid_http_message", False))
    return options
