"""The admin API on the bootstrap's `admin.address`, with Envoy's paths and formats.

    /ready              200 "LIVE" once every worker serves, else 503 and the state
    /stats              "name: value" lines (?format=json, ?filter=REGEX, ?usedonly)
    /stats/prometheus   Prometheus text, with Envoy's tag extraction (envoy_cluster_name, ...)
    /clusters           per-host lines "cluster::host::stat::value" (?format=json)
    /config_dump        the loaded bootstrap and the static resources, as JSON
    /server_info        version, state, uptime, command line options
    /quitquitquit       (POST) graceful stop, as SIGTERM
    /reopen_logs        (POST) every worker reopens its access logs (after logrotate moved them);
                        answered once they are open (the master writes no log file: stderr)

Counters and gauges are summed over all workers at request time. Served by the master, so the
admin port answers even while every worker is busy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.parse

import httptools

from .stat_tags import TagProducer
from .version import VERSION

log = logging.getLogger("baton.admin")

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0

_DEFAULT_TAGS = TagProducer.from_config(None)


class _Request:
    """Collects one request's method and target from httptools' callbacks."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete = True


def prometheus_name(stat: str, tags: TagProducer = _DEFAULT_TAGS) -> tuple[str, str]:
    """Stat name -> (metric name, label text) as Envoy's /stats/prometheus renders it: the
    tag-extracted name (supervisor/stat_tags.py) and the tags as labels, in their order; a
    metric without tags gets "{}", as Envoy 1.40 writes it."""
    name, found = tags.extract(stat)
    labels = ",".join(f'{_sanitize(tag)}="{_escape_label(value)}"' for tag, value in found)
    if name.startswith(CUSTOM_NAMESPACE):   # a Wasm plugin's metric: its own name, as Envoy 1.40
        return _sanitize(name[len(CUSTOM_NAMESPACE):]), f"{{{labels}}}"
    return _sanitize("envoy_" + name), f"{{{labels}}}"


# Envoy's custom stat namespace of Wasm plugins' metrics (worker/wasm/abi.py): Prometheus
# shows them without it and without the envoy_ prefix (wasmcustom.a.b -> a_b).
CUSTOM_NAMESPACE = "wasmcustom."


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


def render_prometheus(stats: dict, tags: TagProducer = _DEFAULT_TAGS) -> str:
    from ..worker.proxy.istio.prometheus import is_labelled, render_labelled
    lines = []
    counters = {k: v for k, v in stats["counters"].items() if not is_labelled(k)}
    for kind, values in (("counter", counters), ("gauge", stats["gauges"])):
        by_metric: dict[str, list[str]] = {}
        for stat, value in values.items():
            metric, labels = prometheus_name(stat, tags)
            by_metric.setdefault(metric, []).append(f"{metric}{labels} {value}")
        for metric in sorted(by_metric):
            lines.append(f"# TYPE {metric} {kind}")
            lines.extend(sorted(by_metric[metric]))
    # Istio's metrics, already named with their labels (worker/proxy/istio/metrics.py).
    lines.extend(render_labelled({k: v for k, v in stats["counters"].items() if is_labelled(k)}))
    return "\n".join(lines) + "\n"


def render_stats_text(stats: dict, pattern, used_only: bool) -> str:
    merged = {**stats["counters"], **stats["gauges"]}
    lines = [f"{name}: {value}" for name, value in sorted(merged.items())
             if (pattern is None or pattern.search(name)) and (value or not used_only)]
    return "\n".join(lines) + ("\n" if lines else "")


# Envoy's health flags, in its order (HostUtility::healthFlagsToString): the workers report
# how many of them see each verdict (worker/main.py handle_hosts); any one shows.
HEALTH_FLAGS = ("failed_active_hc", "failed_outlier_check", "failed_eds_health")


def _health_flags(values: dict) -> str:
    return "".join(f"/{flag}" for flag in HEALTH_FLAGS if values.get(flag)) or "healthy"


def _locality(ep: dict) -> tuple[str, str, str]:
    region, _, rest = (ep.get("locality") or "//").partition("/")
    zone, _, sub_zone = rest.partition("/")
    return region, zone, sub_zone


def render_clusters_text(master, hosts: dict) -> str:
    lines = []
    for name, cluster in sorted(master.snapshot["clusters"].items()):
        lines.append(f"{name}::observability_name::{name}")
        lines.append(f"{name}::default_priority::max_connections::{cluster.get('max_connections', 1024)}")
        for ep in cluster["endpoints"]:
            host = f"{ep['address']}:{ep['port']}"
            values = hosts.get(name, {}).get(host, {})
            for key in ("cx_active", "cx_connect_fail", "cx_total"):
                lines.append(f"{name}::{host}::{key}::{values.get(key, 0)}")
            region, zone, sub_zone = _locality(ep)
            lines.append(f"{name}::{host}::health_flags::{_health_flags(values)}")
            lines.append(f"{name}::{host}::weight::{ep.get('weight', 1)}")
            lines.append(f"{name}::{host}::region::{region}")
            lines.append(f"{name}::{host}::zone::{zone}")
            lines.append(f"{name}::{host}::sub_zone::{sub_zone}")
            lines.append(f"{name}::{host}::priority::{ep.get('priority', 0)}")
    return "\n".join(lines) + "\n"


def render_clusters_json(master, hosts: dict) -> dict:
    """Envoy's admin.v3.Clusters as its JSON printer writes it: zero values and COUNTER
    types left out."""
    statuses = []
    for name, cluster in sorted(master.snapshot["clusters"].items()):
        host_statuses = []
        for ep in cluster["endpoints"]:
            values = hosts.get(name, {}).get(f"{ep['address']}:{ep['port']}", {})
            stats = [{"name": key, **({"value": str(values[key])} if values.get(key) else {})}
                     for key in ("cx_connect_fail", "cx_total")]
            stats.append({"type": "GAUGE", "name": "cx_active",
                          **({"value": str(values["cx_active"])} if values.get("cx_active") else {})})
            health = {"eds_health_status": "UNHEALTHY" if values.get("failed_eds_health") else "HEALTHY"}
            if values.get("failed_active_hc"):
                health["failed_active_health_check"] = True
            if values.get("failed_outlier_check"):
                health["failed_outlier_check"] = True
            region, zone, sub_zone = _locality(ep)
            locality = {k: v for k, v in (("region", region), ("zone", zone),
                                          ("sub_zone", sub_zone)) if v}
            status = {"address": {"socket_address": {"address": ep["address"],
                                                     "port_value": ep["port"]}},
                      "stats": stats, "health_status": health, "weight": ep.get("weight", 1),
                      "locality": locality}
            if ep.get("priority"):
                status["priority"] = ep["priority"]
            host_statuses.append(status)
        statuses.append({"name": name, "host_statuses": host_statuses, "observability_name": name})
    return {"cluster_statuses": statuses}


def with_dynamic(static_dump: dict, dynamic: dict | None, include_eds: bool) -> dict:
    """/config_dump with the agent's dynamic resources (xds/dump.py) added to Envoy's
    ClustersConfigDump and ListenersConfigDump, plus a RoutesConfigDump (and, with
    ?include_eds, an EndpointsConfigDump). Without an answer from the agent, the dynamic
    lists are empty and "dynamic_unavailable" says why."""
    prefix = "type.googleapis.com/envoy.admin.v3."
    configs = [dict(c) for c in static_dump["configs"]]
    parts = dynamic or {"clusters": {}, "listeners": {}, "routes": {}, "endpoints": {}}
    by_type = {c["@type"]: c for c in configs}
    for kind, key in (("ClustersConfigDump", "clusters"), ("ListenersConfigDump", "listeners")):
        entry = by_type.get(prefix + kind)
        if entry is not None:
            entry.update(parts[key])
    configs.append({"@type": prefix + "RoutesConfigDump", **parts["routes"]})
    if include_eds:
        configs.append({"@type": prefix + "EndpointsConfigDump", **parts["endpoints"]})
    # Secrets last, as Envoy lists them: the static ones (cli.py) and SDS's (xds/dump.py).
    dynamic_secrets = (parts.get("secrets") or {}).get("dynamic_active_secrets")
    if dynamic_secrets:
        entry = by_type.get(prefix + "SecretsConfigDump")
        if entry is None:
            entry = {"@type": prefix + "SecretsConfigDump"}
        else:
            configs.remove(entry)
        configs.append({**entry, "dynamic_active_secrets": dynamic_secrets})
    result = {"configs": configs}
    if dynamic is None:
        result["dynamic_unavailable"] = "the xDS agent did not answer (restarting?)"
    return result


class AdminServer:
    def __init__(self, master):
        self.master = master
        self.server: asyncio.base_events.Server | None = None
        self._stats_config = self._tags = self._accepts = None

    async def _stats(self) -> tuple[dict, TagProducer]:
        """The workers' stats without those the bootstrap's stats_matcher rejects, and the tag
        producer of its stats_tags (xds/stats_config.py); both built once per config."""
        from .stats_matcher import stats_filter
        config = self.master.snapshot.get("stats_config")
        if self._tags is None or config is not self._stats_config:
            self._stats_config = config
            self._tags = TagProducer.from_config(config) if config else _DEFAULT_TAGS
            self._accepts = stats_filter(config and config.get("matcher"))
        stats, accepts = await self.master.stats(), self._accepts
        if config and config.get("matcher"):
            stats = {kind: {k: v for k, v in values.items() if accepts(k)} if isinstance(values, dict)
                     else values for kind, values in stats.items()}
        return stats, self._tags

    @classmethod
    async def start(cls, master) -> "AdminServer":
        self = cls(master)
        admin = master.snapshot["admin"]
        # A duplicate: closing the server must leave the master's socket open, to hand it to
        # the next generation (or to serve again if that generation dies).
        self.server = await asyncio.start_server(self._serve, sock=master.admin_sock.dup())
        log.info("admin listening on %s:%d", admin["address"], admin["port"])
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, query = await asyncio.wait_for(self._read_request(reader), READ_TIMEOUT)
            status, ctype, body = await self.dispatch(method, path, query)
        except (asyncio.TimeoutError, ConnectionError, httptools.HttpParserError, ValueError):
            status, ctype, body = 400, "text/plain", "bad request\n"
        except Exception:
            log.exception("admin request failed")
            status, ctype, body = 500, "text/plain", "internal error\n"
        data = body.encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(data)}\r\nconnection: close\r\n"
                f"x-content-type-options: nosniff\r\ncache-control: no-cache, max-age=0\r\n\r\n")
        try:
            writer.write(head.encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read_request(self, reader) -> tuple[str, str, dict]:
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        received = 0
        while not request.complete:
            chunk = await reader.read(8192)
            if not chunk:
                raise ConnectionError("client closed before the request ended")
            received += len(chunk)
            if received > MAX_REQUEST:
                raise ValueError("request too large")
            parser.feed_data(chunk)
        url = httptools.parse_url(request.url)
        query = urllib.parse.parse_qs((url.query or b"").decode(), keep_blank_values=True)
        return parser.get_method().decode(), url.path.decode(), query

    async def dispatch(self, method: str, path: str, query: dict) -> tuple[int, str, str]:
        master = self.master
        if path == "/ready":
            # Envoy's first line; then, with xDS, what initialization still misses (a first
            # fetch that timed out leaves the server LIVE on what it has, as in Envoy).
            missing = "".join(f"{line}\n" for line in master.xds.missing) if master.xds else ""
            if master.state == "LIVE":
                return 200, "text/plain; charset=UTF-8", "LIVE\n" + missing
            return 503, "text/plain; charset=UTF-8", master.state + "\n" + missing
        if path == "/stats":
            stats, _ = await self._stats()
            if query.get("format", [""])[0] == "json":
                merged = {**stats["counters"], **stats["gauges"]}
                return 200, "application/json", json.dumps(
                    {"stats": [{"name": k, "value": v} for k, v in sorted(merged.items())]}, indent=1)
            pattern = query.get("filter", [""])[0]
            try:
                regex = re.compile(pattern) if pattern else None
            except re.error as exc:
                return 400, "text/plain", f"invalid regex: {exc}\n"
            return 200, "text/plain; charset=UTF-8", render_stats_text(stats, regex, "usedonly" in query)
        if path == "/stats/prometheus":
            return 200, "text/plain; charset=UTF-8", render_prometheus(*await self._stats())
        if path == "/clusters":
            hosts = await master.host_stats()
            if query.get("format", [""])[0] == "json":
                return 200, "application/json", json.dumps(render_clusters_json(master, hosts),
                                                           indent=1)
            return 200, "text/plain; charset=UTF-8", render_clusters_text(master, hosts)
        if path == "/config_dump":
            dump = master.config_dump
            if master.xds_link is not None:
                dump = with_dynamic(dump, await master.xds_link.dump(), "include_eds" in query)
            return 200, "application/json", json.dumps(dump, indent=1)
        if path == "/server_info":
            return 200, "application/json", json.dumps(self.server_info(), indent=1)
        if path == "/quitquitquit":
            if method != "POST":
                return 405, "text/plain", "This endpoint requires POST\n"
            master.loop.call_soon(master.drain)
            return 200, "text/plain", "OK\n"
        if path == "/reopen_logs":
            if method != "POST":
                return 405, "text/plain", "This endpoint requires POST\n"
            await master.ask_workers({"type": "reopen_logs"})
            return 200, "text/plain", "OK\n"
        if path == "/":
            return 200, "text/plain", "".join(f"  {p}\n" for p in _PATHS)
        return 404, "text/plain", "invalid path. admin commands are:\n" + "".join(f"  {p}\n" for p in _PATHS)

    def server_info(self) -> dict:
        master = self.master
        uptime = int(time.time() - master.started_at)
        opts = master.options
        return {"version": f"baton/{VERSION}", "state": master.state,
                "hot_restart_version": "baton-handoff-1",
                "command_line_options": {"config_path": opts.config, "concurrency": opts.concurrency,
                                         "drain_time": f"{opts.drain_timeout}s",
                                         "log_level": opts.log_level, "runtime_dir": master.runtime_dir},
                "uptime_current_epoch": f"{uptime}s", "uptime_all_epochs": f"{uptime}s",
                "generation": master.generation, "pid": master.pid}


_PATHS = ("/clusters", "/config_dump", "/quitquitquit", "/ready", "/reopen_logs",
          "/server_info", "/stats", "/stats/prometheus")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}
