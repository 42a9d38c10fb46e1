"""What is known about one HTTP request as it goes through the proxy: Envoy's StreamInfo.

The access log formatter (%-operators), header value templates and filters read it; the
connection manager and the router fill it in. Plain attributes, no behaviour.
"""

from __future__ import annotations

import time


class StreamInfo:
    __slots__ = (
        "start_time",               # wall clock (time.time()) when the request head arrived
        "start_monotonic",          # loop.time() at the same moment
        "request",                  # worker/codecs/message.py Request (as received, mutated by routing)
        "original_path",            # the path before any rewrite
        "response",                 # Response sent to the client, or None
        "response_code",            # int; 0 until a response head is sent
        "response_code_details",    # Envoy's %RESPONSE_CODE_DETAILS% ("via_upstream", "route_not_found", ...)
        "response_flags",           # list of Envoy flags: "UF", "UH", "NR", "URX", "UT", "FI", "RL", "DI", ...
        "bytes_received",           # request body bytes from the client
        "bytes_sent",               # response body bytes to the client
        "protocol",                 # "HTTP/1.0", "HTTP/1.1" or "HTTP/2"
        "downstream_remote",        # (host, port) of the client
        "downstream_local",         # (host, port) the client connected to (the original destination)
        "upstream_host",            # "ip:port" of the last upstream host tried, or None
        "upstream_local",           # (host, port) of our upstream socket, or None
        "upstream_cluster",         # cluster name, or None
        "route_name",               # the matched route's name, or ""
        "request_id",               # x-request-id value, or None
        "attempts",                 # upstream attempts (1 + retries)
        "first_upstream_byte",      # loop time of the first response byte from upstream, or None
        "last_downstream_byte",     # loop time the response was complete, or None
        "upstream_failure",         # %UPSTREAM_TRANSPORT_FAILURE_REASON%, or ""
        "connection_id",            # the downstream connection's id in this worker
        "last_request_byte",        # loop time the request was complete, or None
        "response_trailers",        # Headers of the response trailers, or None
        "dynamic_metadata",         # {filter name: {key: value}} filters set (RBAC), or None
    )

    def __init__(self, request, now: float, protocol: str, downstream_remote, downstream_local,
                 connection_id: int = 0):
        self.start_time = time.time()
        self.start_monotonic = now
        self.request = request
        self.original_path = request.path if request is not None else ""
        self.response = None
        self.response_code = 0
        self.response_code_details = ""
        self.response_flags = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.protocol = protocol
        self.downstream_remote = downstream_remote
        self.downstream_local = downstream_local
        self.upstream_host = None
        self.upstream_local = None
        self.upstream_cluster = None
        self.route_name = ""
        self.request_id = None
        self.attempts = 0
        self.first_upstream_byte = None
        self.last_downstream_byte = None
        self.upstream_failure = ""
        self.connection_id = connection_id
        self.last_request_byte = None
        self.response_trailers = None
        self.dynamic_metadata = None

    def express_facts(self, exchange) -> None:
        """What the full path would know by now of an express exchange (express.py), written
        over a fresh StreamInfo's fields: an HTTP/1.1 request routed to one host, sent once,
        its response begun or not. (A Stream is its own StreamInfo: stream.py.)"""
        info = self
        info.start_time = exchange.start_time
        info.route_name = exchange.route.name
        info.upstream_cluster = exchange.cluster.name
        info.request_id = exchange.request_id
        info.upstream_host = exchange.host.stat_id
        info.upstream_local = exchange.upstream.local
        info.attempts = 1
        info.first_upstream_byte = exchange.first_byte
        info.bytes_sent = exchange.bytes_sent
        if exchange.response_started:
            response = exchange.response
            info.response = response
            info.response_code = response.status
            info.response_code_details = "via_upstream"
