"""A filter chain's RPC side: its protocol, route table and stat names.

Stats are Envoy's dubbo_proxy names (source/extensions/filters/network/dubbo_proxy/stats.h)
under dubbo.<stat_prefix>. and, for Bolt, the same names under bolt.<stat_prefix>. They count
as Envoy 1.40 counts them (checked against it): a heartbeat is `request_event` only, not a
`request`; a local reply Envoy writes as an exception (no route, upstream failures) is
`local_response_business_exception`. One difference: Envoy 1.40 never increments
`request_twoway`; Baton counts two-way requests there, as its name says.
"""

from __future__ import annotations

from ..http.local_ratelimit import TokenBucket
from .generic import CODECS, GenericRouteTable
from . import protocols as P
from .protocols import PROTOCOLS
from .routing import RouteTable

COUNTERS = (
    "cx_destroy_local_with_active_rq", "cx_destroy_remote_with_active_rq",
    "local_response_business_exception", "local_response_error", "local_response_success",
    "request", "request_decoding_error", "request_decoding_success", "request_event",
    "request_oneway", "request_twoway", "response", "response_business_exception",
    "response_decoding_error", "response_decoding_success", "response_error",
    "response_error_caused_connection_close", "response_success",
    # Not in Envoy's list: requests that ran out of time (Envoy's dubbo_proxy has no timeout),
    # and requests the chain's local rate limit refused (Bolt config).
    "request_timeout", "request_rate_limited",
)
GAUGES = ("request_active",)
# A generic_proxy chain counts under Envoy's generic_proxy names (its stats.h) what has one;
# the rest keep the names above, under generic_proxy.<stat_prefix>. too.
GENERIC_NAMES = {"request": "downstream_rq_total",
                 "request_decoding_error": "downstream_rq_decoding_error",
                 "request_active": "downstream_rq_active",
                 "local_response_business_exception": "downstream_rq_local"}
GENERIC_COUNTERS = ("downstream_rq_error", "downstream_rq_reset")
# Envoy's response flag for each local reply (downstream_rq_flag.<flag>).
FLAGS = {P.NO_ROUTE: "NR", P.UNKNOWN_CLUSTER: "NC", P.NO_HEALTHY_UPSTREAM: "UH",
         P.OVERFLOW: "UO", P.CONNECT_FAILURE: "UF", P.CONNECT_TIMEOUT: "UF", P.RESET: "UC",
         P.TIMEOUT: "UT", P.RATE_LIMITED: "RL"}


class RpcChain:
    """Built once per chain spec ({"dubbo": config}, {"bolt": config} or
    {"generic_proxy": config}, the last naming its codec: generic.py)."""

    __slots__ = ("protocol", "routes", "stat", "config", "bucket", "generic", "prefix",
                 "access_logs")

    def __init__(self, kind: str, config: dict):
        self.config = config
        if kind == "generic_proxy":
            self.protocol = CODECS[config["codec"]]
            self.routes = GenericRouteTable(config["route_table"])
        else:
            self.protocol = PROTOCOLS[kind]
            self.routes = RouteTable(config["route_configs"])
        self.generic = kind == "generic_proxy"
        self.prefix = prefix = f"{self.protocol.stat_root}.{config['stat_prefix']}."
        names = GENERIC_NAMES if self.generic else {}
        self.stat = {name: prefix + names.get(name, name) for name in COUNTERS + GAUGES}
        if self.generic:
            self.stat.update((name, prefix + name) for name in GENERIC_COUNTERS)
        limit = config.get("local_rate_limit")
        # One bucket per worker, as the HTTP local_ratelimit (http/local_ratelimit.py says why).
        self.bucket = TokenBucket(limit["max_tokens"], limit["tokens_per_fill"],
                                  limit["fill_interval"]) if limit else None
        self.access_logs = None             # built for the worker by its first connection

    def logs(self, worker) -> list:
        """generic_proxy's access logs (access_log.py) on this worker's files."""
        if self.access_logs is None:
            from .access_log import build_access_logs
            self.access_logs = build_access_logs(self.config.get("access_log"), worker)
        return self.access_logs

    def counters(self):
        """The counters shown from the start (at 0): request_rate_limited only where a rate
        limit is configured, so a Dubbo chain shows exactly Envoy's names (and the timeout's)."""
        names = COUNTERS + (GENERIC_COUNTERS if self.generic else ())
        return [self.stat[name] for name in names
                if name != "request_rate_limited" or self.bucket is not None]

    def answered(self, counters, code: int, ok: bool, failure: str | None = None) -> None:
        """A generic_proxy chain's count of an answer written to the client (from upstream,
        or local with its failure): downstream_rq_code.<status>, _error, _flag.<flag>.
        Called on generic chains only (the caller checks, to keep the others' path short)."""
        counters[f"{self.prefix}downstream_rq_code.{code}"] += 1
        if not ok:
            counters[self.prefix + "downstream_rq_error"] += 1
        if failure is not None:
            counters[f"{self.prefix}downstream_rq_flag.{FLAGS[failure]}"] += 1

    def gauges(self):
        return [self.stat[name] for name in GAUGES]


def rpc_chain(spec: dict) -> RpcChain | None:
    """The RpcChain of a chain spec whose terminal filter is an RPC proxy, else None."""
    for kind in (*PROTOCOLS, "generic_proxy"):
        if spec.get(kind) is not None:
            return RpcChain(kind, spec[kind])
    return None
