"""The four proxies of the HTTP benchmark, each set up as the same small L7 reverse proxy.

Every proxy forwards every request to one upstream (an nginx with one worker that answers a
64-byte body on keep-alive connections) over an HTTP/1.1 keep-alive pool, with one worker:

* Baton and Envoy read the very same Envoy v3 bootstrap file: one listener with
  `envoy.filters.network.http_connection_manager` (codec_type AUTO, so HTTP/1.1 and prior
  knowledge h2c share the port), a catch-all route to a STATIC cluster, the router filter.
* HAProxy: `mode http`, `nbthread 1`, one HTTP/1.1 frontend and one `proto h2` frontend (h2c),
  a backend with `http-reuse always`.
* nginx: `worker_processes 1`, one HTTP/1.1 server and one `listen ... http2` server (nginx's
  plaintext HTTP/2 is prior knowledge only, so it needs its own port), `proxy_pass` to an
  `upstream` block with `keepalive`.

Per-connection request limits are lifted everywhere (nginx's default closes a keep-alive or h2
connection after 1000 requests, which Envoy and HAProxy do not do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import proxies
from loads import APT_HINT
from procs import HOST, Proc, require_tool, start, stop, wait_http_ok, wait_listening

ALL_PROXIES = ["baton", "envoy", "haproxy", "nginx"]
MESH_PROXIES = ["baton", "envoy"]     # the mesh-shaped chain is Envoy config: these two only

# The upstream's response body: small, so the figures measure per-request proxy work.
BODY = "x" * 63 + "\n"

# nginx closes a keep-alive (or HTTP/2) connection after keepalive_requests requests (1000 by
# default); the other proxies have no such limit, so lift it on every nginx in the benchmark.
UNLIMITED_REQUESTS = 100_000_000

# Baton is Python and forks its worker after parsing the config; give it more time.
READY_DEADLINE_S = {"baton": 60.0, "envoy": 30.0, "haproxy": 15.0, "nginx": 15.0}


@dataclass(frozen=True)
class Ports:
    admin: int      # Baton/Envoy admin; unused by HAProxy and nginx
    h1: int         # the proxy's HTTP/1.1 listener
    h2: int         # the proxy's h2c (prior knowledge) listener; == h1 for Baton and Envoy
    upstream: int   # the upstream nginx


# ---- upstream --------------------------------------------------------------------------------

def _nginx_paths(workdir: Path) -> str:
    # Every path nginx might write to points into the run's temp dir, never /var.
    return "\n".join(f"    {kind}_temp_path {workdir}/nginx-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def upstream_nginx_conf(port: int, workdir: Path) -> str:
    """The origin server: one worker, keep-alive, a 64-byte 200 for every path; under /v/
    (the h1v figure) the response also says its path, so no two are the same bytes."""
    return f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests {UNLIMITED_REQUESTS};
{_nginx_paths(workdir)}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY}";
        }}
        location /v/ {{
            default_type text/plain;
            add_header x-path $uri;
            return 200 "{BODY}";
        }}
    }}
}}
"""


def start_upstream(port: int, cpu: int, workdir: Path) -> Proc:
    nginx = require_tool("nginx", APT_HINT)
    updir = workdir / "upstream"
    updir.mkdir(exist_ok=True)
    conf = updir / "nginx.conf"
    conf.write_text(upstream_nginx_conf(port, updir))
    proc = start("upstream-nginx", [nginx, "-p", str(updir), "-c", str(conf), "-e", "stderr"], cpu, updir)
    wait_listening(proc, port, deadline_s=10)
    return proc


# ---- Envoy v3 bootstrap (Baton and Envoy) ------------------------------------------------------

def envoy_bootstrap(ports: Ports, chain: str = "plain", workdir: Path | None = None) -> str:
    # Only what an L7 reverse proxy needs and Envoy's defaults otherwise (x-request-id,
    # x-forwarded-proto, stats), no access log: the configuration an Envoy user starts from.
    # The cluster's upstream protocol is Envoy's default, HTTP/1.1, pooled with keep-alive.
    # chain "mesh": the filters a service mesh puts before the router (MESH_FILTERS).
    mesh = chain == "mesh"
    return f"""admin:
  address:
    socket_address: {{address: {HOST}, port_value: {ports.admin}}}
static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{address: {HOST}, port_value: {ports.h1}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO{mesh_access_log(workdir) if mesh else ""}
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]{MESH_VHOST if mesh else ""}
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}{MESH_ROUTE if mesh else ""}
          http_filters:{MESH_FILTERS if mesh else ""}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {HOST}, port_value: {ports.upstream}}}
"""


# The mesh-shaped chain (issue 17), as Istio sets up every HTTP connection manager: CORS (a
# policy on the virtual host; the load's requests carry no Origin), fault injection with no
# fault configured, a local rate limit far above any rate here, a route that adds and removes
# headers, an access log to a file (Envoy's default format), then the router.
MESH_FILTERS = """
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: mesh_rl
              token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s}
              filter_enabled:
                runtime_key: mesh_rl_enabled
                default_value: {numerator: 100, denominator: HUNDRED}
              filter_enforced:
                runtime_key: mesh_rl_enforced
                default_value: {numerator: 100, denominator: HUNDRED}"""
MESH_VHOST = """
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{exact: "https://mesh.test"}]
                  allow_methods: GET,POST"""
MESH_ROUTE = """
                request_headers_to_add:
                - header: {key: x-mesh-route, value: bench}
                request_headers_to_remove: [x-mesh-internal]
                response_headers_to_add:
                - header: {key: x-mesh-served-by, value: baton-bench}"""


def mesh_access_log(workdir: Path) -> str:
    return f"""
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {workdir / "access.log"}"""


# ---- HAProxy ------------------------------------------------------------------------------------

def haproxy_cfg(ports: Ports) -> str:
    # nbthread 1: one worker thread, the budget of every other proxy here. `http-reuse always`
    # shares idle server connections between client connections: HAProxy's keep-alive pool.
    return f"""global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always

frontend h1
    bind {HOST}:{ports.h1}
    default_backend upstream

frontend h2
    bind {HOST}:{ports.h2} proto h2
    default_backend upstream

backend upstream
    server upstream {HOST}:{ports.upstream}
"""


# ---- nginx as the proxy -----------------------------------------------------------------------

def nginx_proxy_conf(ports: Ports, workdir: Path) -> str:
    location = """        location / {
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    return f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests {UNLIMITED_REQUESTS};
{_nginx_paths(workdir)}
    upstream upstream {{
        server {HOST}:{ports.upstream};
        keepalive 256;
        keepalive_requests {UNLIMITED_REQUESTS};
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{ports.h1} backlog=4096;
{location}
    }}
    server {{
        listen {HOST}:{ports.h2} http2 backlog=4096;
{location}
    }}
}}
"""


# ---- launching -------------------------------------------------------------------------------

def allocate(name: str, free: list[int], upstream: int) -> Ports:
    """Ports for proxy `name` from three free ports; Baton and Envoy serve h2c on the h1 port."""
    admin, h1, h2 = free
    if name in ("baton", "envoy"):
        h2 = h1
    return Ports(admin=admin, h1=h1, h2=h2, upstream=upstream)


def config_file(name: str, ports: Ports, workdir: Path, chain: str = "plain") -> Path:
    """Write proxy `name`'s configuration into workdir and return its path."""
    if name in ("baton", "envoy"):
        path = workdir / "bootstrap.yaml"
        path.write_text(envoy_bootstrap(ports, chain, workdir))
    elif name == "haproxy":
        path = workdir / "haproxy.cfg"
        path.write_text(haproxy_cfg(ports))
    elif name == "nginx":
        path = workdir / "nginx.conf"
        path.write_text(nginx_proxy_conf(ports, workdir))
    else:
        raise ValueError(f"unknown proxy {name!r}")
    return path


def argv(name: str, config: Path, workdir: Path, baton: Path) -> list[str]:
    if name == "envoy":
        # --disable-hot-restart: no shared-memory segment to clash with another Envoy.
        return [str(proxies.envoy_binary()), "-c", str(config), "--concurrency", "1",
                "--disable-hot-restart", "--log-level", "warning"]
    if name == "baton":
        return [str(proxies.baton_binary(baton)), "run", "-c", str(config), "--concurrency", "1",
                "--log-level", "warning"]
    if name == "haproxy":
        # -db: stay in the foreground, so the pid we hold is the proxy itself.
        return [require_tool("haproxy", APT_HINT), "-db", "-f", str(config)]
    if name == "nginx":
        return [require_tool("nginx", APT_HINT), "-p", str(workdir), "-c", str(config), "-e", "stderr"]
    raise ValueError(f"unknown proxy {name!r}")


def launch(name: str, ports: Ports, cpu: int, workdir: Path, baton: Path,
           chain: str = "plain") -> Proc:
    """Start proxy `name` pinned to `cpu`; return once a request through it gets a 200.

    Readiness is the real path (client -> proxy -> upstream), the same test for all four.
    The caller stops the returned Proc; if readiness fails, this stops it itself.
    """
    config = config_file(name, ports, workdir, chain)
    proc = start(name, argv(name, config, workdir, baton), cpu, workdir)
    try:
        wait_http_ok(proc, f"http://{HOST}:{ports.h1}/", READY_DEADLINE_S[name])
    except BaseException:
        stop(proc)
        raise
    return proc


def worker_processes(proc: Proc) -> list:
    """The processes that serve traffic: Baton's workers (by their process title: `baton run`
    is the keeper, whose child is the master, whose children are the workers), the children
    of nginx's master, or the process itself when it has none (Envoy, HAProxy: one process,
    threads)."""
    tree = proc.tree()
    batons = [p for p in tree if _title(p).startswith("baton: worker")]
    return batons or tree[1:] or tree[:1]


def _title(process) -> str:
    try:
        return process.name()
    except Exception:           # noqa: BLE001 - gone meanwhile: not a worker
        return ""
