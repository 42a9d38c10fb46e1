"""The proxies of the TLS benchmark, each terminating TLS on the very same certificate files.

Every proxy gets, with one worker:

* `https_ecdsa`, `https_rsa`: HTTPS (TLS 1.3 only) on an ECDSA P-256 / an RSA 2048 certificate,
  then the same L7 reverse proxy as the HTTP benchmark (bench/http_proxies.py): every request to
  the 64-byte upstream nginx over an HTTP/1.1 keep-alive pool.
* `bulk_up`, `bulk_down` (not nginx): TLS (ECDSA) terminated in front of a plain TCP proxy to the
  bulk sink / the bulk source (bench/tls_bulk.py).
* a plain readiness endpoint: Baton's and Envoy's admin /ready, HAProxy's monitor-uri, an nginx
  server that answers 200.

Baton and Envoy read the very same Envoy v3 bootstrap; HAProxy gets `bind ... ssl crt` frontends
(`mode http` for HTTPS, `mode tcp` for bulk), nginx `listen ... ssl` servers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import http_proxies
from loads import APT_HINT
from procs import HOST, Proc, require_tool, start, stop, wait_http_ok

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton.tests.tls_certs import leaf, make_ca  # noqa: E402

ALL_PROXIES = ["baton", "envoy", "haproxy", "nginx"]
BULK_PROXIES = ("baton", "envoy", "haproxy")    # nginx-light has no stream module
KEYS = ("ecdsa", "rsa")

READY_DEADLINE_S = http_proxies.READY_DEADLINE_S


@dataclass(frozen=True)
class Ports:
    ready: int
    https: dict          # key kind -> HTTPS listener
    bulk_up: int         # TLS -> tcp_proxy -> bulk sink
    bulk_down: int       # TLS -> tcp_proxy -> bulk source
    upstream: int        # the 64-byte nginx
    sink: int
    source: int


def allocate(free: list[int], upstream: int, sink: int, source: int) -> Ports:
    ready, ecdsa, rsa, up, down = free
    return Ports(ready, {"ecdsa": ecdsa, "rsa": rsa}, up, down, upstream, sink, source)


@dataclass(frozen=True)
class CertFiles:
    ca: str
    cert: dict           # kind -> certificate chain path
    key: dict            # kind -> private key path
    combined: dict       # kind -> certificate + key in one file (HAProxy's `crt`)


def write_certificates(directory: Path) -> CertFiles:
    """A test CA (ECDSA) and one server leaf per key kind, written once for every proxy."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("ecdsa")
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    cert, key, combined = {}, {}, {}
    for kind in KEYS:
        pair = leaf(ca, kind)
        cert[kind], key[kind] = pair.write(directory, f"server-{kind}")
        both = directory / f"server-{kind}.pem"
        both.write_bytes(pair.cert_pem + pair.key_pem)
        both.chmod(0o600)
        combined[kind] = str(both)
    return CertFiles(str(ca_path), cert, key, combined)


# ---- Envoy v3 bootstrap (Baton and Envoy) ------------------------------------------------------

def _transport_socket(certs: CertFiles, kind: str) -> str:
    return f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3}}
            tls_certificates:
            - certificate_chain: {{filename: {certs.cert[kind]}}}
              private_key: {{filename: {certs.key[kind]}}}"""


def _https_listener(name: str, port: int, certs: CertFiles, kind: str) -> str:
    # The HTTP benchmark's HCM (Envoy's defaults, no access log) behind TLS.
    return f"""
  - name: {name}
    address:
      socket_address: {{address: {HOST}, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router""" \
        + _transport_socket(certs, kind)


def _tcp_listener(name: str, port: int, cluster: str, certs: CertFiles) -> str:
    return f"""
  - name: {name}
    address:
      socket_address: {{address: {HOST}, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}""" + _transport_socket(certs, "ecdsa")


def _cluster(name: str, port: int) -> str:
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {HOST}, port_value: {port}}}"""


def envoy_bootstrap(ports: Ports, certs: CertFiles) -> str:
    return (f"""admin:
  address:
    socket_address: {{address: {HOST}, port_value: {ports.ready}}}
static_resources:
  listeners:"""
            + "".join(_https_listener(f"https_{k}", ports.https[k], certs, k) for k in KEYS)
            + _tcp_listener("bulk_up", ports.bulk_up, "sink", certs)
            + _tcp_listener("bulk_down", ports.bulk_down, "source", certs)
            + "\n  clusters:"
            + _cluster("upstream", ports.upstream) + _cluster("sink", ports.sink)
            + _cluster("source", ports.source) + "\n")


# ---- HAProxy ------------------------------------------------------------------------------------

def haproxy_cfg(ports: Ports, certs: CertFiles) -> str:
    # nbthread 1 as in the HTTP benchmark; `ssl-min-ver TLSv1.3` on every bind as the others'
    # minimum version. Bulk: `mode tcp` with the same certificate, no splice (TLS is in user space).
    https = "".join(f"""
frontend https_{k}
    mode http
    bind {HOST}:{ports.https[k]} ssl crt {certs.combined[k]} ssl-min-ver TLSv1.3
    option http-keep-alive
    http-reuse always
    default_backend upstream
""" for k in KEYS)
    return f"""global
    nbthread 1
    maxconn 4000

defaults
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s

frontend ready
    mode http
    bind {HOST}:{ports.ready}
    monitor-uri /ready
{https}
frontend bulk_up
    mode tcp
    bind {HOST}:{ports.bulk_up} ssl crt {certs.combined['ecdsa']} ssl-min-ver TLSv1.3
    default_backend sink

frontend bulk_down
    mode tcp
    bind {HOST}:{ports.bulk_down} ssl crt {certs.combined['ecdsa']} ssl-min-ver TLSv1.3
    default_backend source

backend upstream
    mode http
    http-reuse always
    server upstream {HOST}:{ports.upstream}

backend sink
    mode tcp
    server sink {HOST}:{ports.sink}

backend source
    mode tcp
    server source {HOST}:{ports.source}
"""


# ---- nginx as the proxy (HTTPS only, for orientation) -----------------------------------------

def nginx_conf(ports: Ports, certs: CertFiles, workdir: Path) -> str:
    plain = http_proxies.nginx_proxy_conf(http_proxies.Ports(ports.ready, ports.ready, ports.ready,
                                                             ports.upstream), workdir)
    # The HTTP benchmark's nginx proxy, its h1 server turned into the readiness port (dropping
    # the duplicate h2c server), plus one `listen ... ssl` server per certificate.
    head, servers = plain.split("    server {", 1)
    ready_server = "    server {" + servers.split("    server {", 1)[0]
    location = """        location / {
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    https = "".join(f"""    server {{
        listen {HOST}:{ports.https[k]} ssl backlog=4096;
        ssl_certificate {certs.cert[k]};
        ssl_certificate_key {certs.key[k]};
        ssl_protocols TLSv1.3;
{location}
    }}
""" for k in KEYS)
    return head + ready_server + https + "}\n"


# ---- launching -------------------------------------------------------------------------------

def argv(name: str, ports: Ports, certs: CertFiles, workdir: Path, baton: Path) -> list[str]:
    if name in ("baton", "envoy"):
        config = workdir / "bootstrap.yaml"
        config.write_text(envoy_bootstrap(ports, certs))
    elif name == "haproxy":
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_cfg(ports, certs))
    elif name == "nginx":
        config = workdir / "nginx.conf"
        config.write_text(nginx_conf(ports, certs, workdir))
    else:
        raise ValueError(f"unknown proxy {name!r}")
    if name == "haproxy":
        return [require_tool("haproxy", APT_HINT), "-db", "-f", str(config)]
    if name == "baton":
        # Its own control socket: another Baton on the shared machine may hold the default one.
        return http_proxies.argv(name, config, workdir, baton) + ["--runtime-dir", str(workdir)]
    return http_proxies.argv(name, config, workdir, baton)


def launch(name: str, ports: Ports, certs: CertFiles, cpu: int, workdir: Path, baton: Path) -> Proc:
    """Start proxy `name` pinned to `cpu`; return once its plain readiness URL answers 200
    (the caller then checks a TLS handshake on every listener it measures)."""
    proc = start(name, argv(name, ports, certs, workdir, baton), cpu, workdir)
    path = "/ready" if name != "nginx" else "/"
    try:
        wait_http_ok(proc, f"http://{HOST}:{ports.ready}{path}", READY_DEADLINE_S[name])
    except BaseException:
        stop(proc)
        raise
    return proc

