"""The config snapshot: what the master sends to workers, in plain values.

Workers never import Envoy API classes; they get this instead, as msgpack. Only dict (str
keys), list, str, int, float, bool and None appear, so a snapshot survives
msgpack.packb/unpackb unchanged (no tuples: they would come back as lists).

    {
      "version": "bootstrap",              # "bootstrap" for a static file; later the xDS version
      "node": {"id": "", "cluster": "", "metadata": {}},
      "admin": {"address": "127.0.0.1", "port": 9901} or None,
      "listeners": [                        # in file order
        {"name": "listener_0",              # Envoy's name, or "<address>_<port>" when unnamed
         "address": "127.0.0.1",            # IP literal as written ("::1" for IPv6)
         "port": 10000,
         "stat_name": "127.0.0.1_10000",    # Envoy's listener stat scope: listener.<stat_name>.*
                                            # (the listener's stat_prefix, or its address with
                                            # ':' made '_', as Envoy does: "[__1]_10000")
         "reuse_port": True,                # enable_reuse_port, default True
         "buffer_limit": 1048576,           # per_connection_buffer_limit_bytes
         "tcp_proxy": {
           "stat_prefix": "ingress_tcp",
           "clusters": [["cluster_0", 1]],  # [name, weight]; `cluster:` is one entry of weight 1
           "idle_timeout": 3600.0,          # seconds; None when disabled (idle_timeout: 0s)
           "max_connect_attempts": 1}}],
      "clusters": {                         # by name
        "cluster_0": {
          "name": "cluster_0",
          "type": "STATIC",                 # or "STRICT_DNS"
          "connect_timeout": 5.0,           # seconds
          "lb_policy": "ROUND_ROBIN",       # or "RANDOM", "LEAST_REQUEST"
          "endpoints": [{"address": "127.0.0.1", "port": 8080, "weight": 1}],
                                            # STRICT_DNS: hostnames as written; the master
                                            # resolves them
          "max_connections": 1024,          # circuit_breakers DEFAULT priority
          "dns_refresh_rate": 5.0,          # seconds (used by STRICT_DNS only)
          "dns_lookup_family": "AUTO",      # AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL
          "buffer_limit": 1048576}},
      "warnings": [],                       # "path: message" for accepted-but-ignored fields
      "xds": None                           # dynamic_resources (xds/config_source.py), or None
    }

A bootstrap with static_resources.secrets has "secrets": {name: SECRET} (xds/secrets.py). A
filter chain's "tls" (xds/tls.py) that names secrets carries them in tls["sds"] and holds
their material once resolved ("missing_secrets" lists what has not arrived: no certificate
until then). A cluster whose endpoints are Unix sockets has "pipe_endpoints": [path] (the
xDS agent dials them; workers see no host).

An EDS cluster (type "EDS") has "eds": {"service_name", "initial_fetch_timeout"} and gets its
"endpoints" from the xDS agent; an HCM with rds has "rds": {"route_config_name", ...} and
"route_config" filled in by the master from the agent's routes (None until they arrive).

A filter chain with an http_connection_manager has "http" instead of "tcp_proxy"
(xds/http.py; times in seconds, None = disabled):

    "http": {
      "stat_prefix": "ingress_http", "codec_type": "AUTO",          # or "HTTP1", "HTTP2"
      "route_config": ROUTE_CONFIG,
      "http_filters": [{"name": "envoy.filters.http.router", "config": {...}}],  # http_filters.py
      "access_log": [...],                                          # http_filters.py
      "max_request_headers_kb": 60, "max_request_headers_count": 100,
      "request_headers_timeout": None, "stream_idle_timeout": 300.0, "request_timeout": None,
      "idle_timeout": 3600.0, "max_connection_duration": None,
      "max_requests_per_connection": None, "drain_timeout": 5.0, "delayed_close_timeout": 1.0,
      "use_remote_address": False, "xff_num_trusted_hops": 0, "skip_xff_append": False,
      "generate_request_id": True, "preserve_external_request_id": False,
      "always_set_request_id_in_response": False,
      "server_name": "envoy", "server_header_transformation": "OVERWRITE",  # APPEND_IF_ABSENT,
      "via": "",                                                             # PASS_THROUGH
      "upgrade_types": ["websocket"],       # enabled upgrade_configs, lower-cased ("connect")
      "http2": {"max_concurrent_streams": 2147483647, "initial_stream_window_size": 268435456,
                "initial_connection_window_size": 268435456},
      "http1": {"accept_http_10": False, "default_host_for_http_10": ""},
      "normalize_path": False, "merge_slashes": False,
      "strip_matching_host_port": False, "strip_any_host_port": False,
      "buffer_limit": None}                 # the listener's per_connection_buffer_limit_bytes

    ROUTE_CONFIG (compiled by worker/proxy/http/routing.py RouteTable):
      {"name": "", "virtual_hosts": [VHOST], "request_headers": MUT, "response_headers": MUT,
       "most_specific_header_mutations_wins": False, "ignore_port_in_host_matching": False}
    VHOST: {"name", "domains": ["*.a.com", ...] (lower-cased), "routes": [ROUTE],
            "request_headers": MUT, "response_headers": MUT, "retry_policy": RETRY | None}
    MUT:   {"remove": ["x-a"], "add": [["x-b", "value or %TEMPLATE%", "APPEND_IF_EXISTS_OR_ADD"
            | "ADD_IF_ABSENT" | "OVERWRITE_IF_EXISTS_OR_ADD" | "OVERWRITE_IF_EXISTS",
            keep_empty_value]]}
    ROUTE: {"name", "kind": "cluster" | "redirect" | "direct_response", "match": MATCH,
            "action": CLUSTER_ACTION | REDIRECT | DIRECT, "request_headers": MUT,
            "response_headers": MUT}
    MATCH: {"path_kind": "prefix" | "path" | "safe_regex" | "path_separated_prefix" | "connect",
            "path_value": str (an RE2 pattern for safe_regex), "case_sensitive": True,
            "headers": [{"name", "kind": "string" | "range" | "present",
                         "string": STRING | None, "range": [start, end] | None,
                         "present": bool, "invert": bool, "treat_missing_as_empty": bool}],
            "query_parameters": [{"name", "string": STRING | None, "present": bool | None}],
            "grpc": bool}
    STRING: {"kind": "exact" | "prefix" | "suffix" | "contains" | "safe_regex", "value": str,
             "ignore_case": bool}
    CLUSTER_ACTION: {"cluster": str | None, "cluster_header": str | None,
            "weighted_clusters": [{"name", "weight", "request_headers": MUT,
                                   "response_headers": MUT, "host_rewrite_literal"}] | None,
            "cluster_not_found_status": 503, "prefix_rewrite": str | None,
            "regex_rewrite": {"regex", "substitution"} | None, "host_rewrite_literal": str | None,
            "auto_host_rewrite": bool, "host_rewrite_header": str | None,
            "timeout": 15.0, "idle_timeout": None, "idle_timeout_set": bool,
            "retry_policy": RETRY | None (the virtual host's then applies),
            "hash_policies": [{"kind": "header" | "cookie" | "source_ip" | "query_parameter",
                               "name": str, "terminal": bool}]}
    RETRY: {"retry_on": ["5xx", ...], "num_retries": 1, "per_try_timeout": None,
            "retriable_status_codes": [503], "base_interval": 0.025, "max_interval": 0.25}
    REDIRECT: {"scheme": str | None, "https": bool, "host": str | None, "port": int | None,
            "path": str | None, "prefix_rewrite": str | None, "regex_rewrite": ... | None,
            "status": 301, "strip_query": bool}
    DIRECT: {"status": 200, "body": str | None}      # body: the bytes as latin-1
"""

VERSION_BOOTSTRAP = "bootstrap"

LISTENER_KEYS = frozenset({"name", "address", "port", "stat_name", "reuse_port", "buffer_limit",
                           "tcp_proxy"})
TCP_PROXY_KEYS = frozenset({"stat_prefix", "clusters", "idle_timeout", "max_connect_attempts"})
CLUSTER_KEYS = frozenset({"name", "type", "connect_timeout", "lb_policy", "endpoints",
                          "max_connections", "dns_refresh_rate", "dns_lookup_family",
                          "buffer_limit"})
ENDPOINT_KEYS = frozenset({"address", "port", "weight"})
TOP_KEYS = frozenset({"version", "node", "admin", "listeners", "clusters", "warnings"})


def empty_snapshot(version=VERSION_BOOTSTRAP):
    """A snapshot with nothing configured: no admin, no listeners, no clusters."""
    return {"version": version, "node": {"id": "", "cluster": "", "metadata": {}},
            "admin": None, "listeners": [], "clusters": {}, "warnings": [], "xds": None}


def validate_snapshot_shape(snap):
    """Problems with the shape of `snap` (missing keys, plain-value violations); [] if none.

    For tests and for the master's sanity check of a snapshot before fanning it out; it does
    not re-validate the config, which translate.py has done.
    """
    problems = []
    _require(snap, TOP_KEYS, "snapshot", problems)
    for i, lst in enumerate(snap.get("listeners") or ()):
        where = f"listeners[{i}]"
        _require(lst, LISTENER_KEYS, where, problems)
        if isinstance(lst, dict) and lst.get("tcp_proxy") is not None:
            # None when the default chain is an http_connection_manager (or there is none).
            _require(lst.get("tcp_proxy"), TCP_PROXY_KEYS, f"{where}.tcp_proxy", problems)
    for name, cluster in (snap.get("clusters") or {}).items():
        where = f"clusters[{name!r}]"
        _require(cluster, CLUSTER_KEYS, where, problems)
        if isinstance(cluster, dict):
            for j, ep in enumerate(cluster.get("endpoints") or ()):
                _require(ep, ENDPOINT_KEYS, f"{where}.endpoints[{j}]", problems)
    _plain(snap, "snapshot", problems)
    return problems


def _require(value, keys, where, problems):
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a dict, got {type(value).__name__}")
        return
    missing = sorted(keys - value.keys())
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")


def _plain(value, where, problems):
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{where}: key {key!r} is not a str")
            _plain(item, f"{where}.{key}", problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]", problems)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        problems.append(f"{where}: {type(value).__name__} is not a plain value")
