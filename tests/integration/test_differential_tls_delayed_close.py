"""Differential: how an HTTPS connection's delayed close ends, Baton against a real Envoy 1.40
on the same bootstrap and certificates: after an error reply the proxy holds its FIN for
delayed_close_timeout, and when that timer closes the connection the client still gets a TLS
close_notify before the FIN (Envoy's SslSocket shuts TLS down as it closes the socket; a
client reading with suppress_ragged_eofs=False, as OpenSSL 3's s_client does, sees a bare
FIN as "unexpected eof while reading")."""

from __future__ import annotations

import socket
import ssl
import time

from ..tls_certs import leaf, make_ca
from .differential.bootstraps import bootstrap, cluster, http_listener
from .test_differential_access_log_fields import _once_destroyed
from .differential.compare import differential
from .differential.proxies import module_pair
from .tls_clients import client_context, tls_transport_socket

DELAYED_CLOSE = 0.3


def tls_bootstrap(upstreams: dict[str, int]):
    ca = make_ca("ecdsa")
    server = leaf(ca, "ecdsa")
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        listener = http_listener("tls_close", ports["tls_close"], routes,
                                 delayed_close_timeout=f"{DELAYED_CLOSE}s")
        listener["filter_chains"][0]["transport_socket"] = tls_transport_socket(server)
        return bootstrap(admin, [listener], [cluster("a", [upstreams["a"]])])
    template.ca = ca            # the clients' trust (pair.template.ca)
    return template


recorder, pair = module_pair("diff-tls-close", tls_bootstrap, ["tls_close"])


def test_the_delayed_close_after_an_https_error_reply_ends_with_close_notify(pair):
    """A bad request over TLS (a header line without a colon): the 400, then the FIN held for
    delayed_close_timeout (0.3 s), the client not closing; the close that ends it sends
    close_notify first, counted in downstream_cx_delayed_close_timeout. Baton dropped the
    session unannounced there (a bare FIN: SSLEOFError)."""
    ctx = client_context(pair.template.ca)

    def run(target):
        prefix = "http.tls_close."
        before = target.stats(prefix)
        raw = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as tls:
            tls.sendall(b"GET /u HTTP/1.1\r\nhost x\r\n\r\n")
            got, start = b"", time.monotonic()
            try:
                while chunk := tls.recv(65536):
                    got += chunk
                ending = "close_notify"
            except ssl.SSLError as exc:
                ending = type(exc).__name__
            took = time.monotonic() - start
        after = _once_destroyed(target, prefix, before)
        counted = {name.removeprefix(prefix + "downstream_cx_"): after[name] - before.get(name, 0)
                   for name in after if name.startswith(prefix + "downstream_cx_destroy")
                   or name == prefix + "downstream_cx_delayed_close_timeout"}
        return {"status": got.split(b"\r\n", 1)[0].decode(), "ending": ending,
                "fin": "after delayed_close_timeout" if DELAYED_CLOSE - 0.05 <= took < 0.9
                else round(took, 2),
                "counted": {k: v for k, v in counted.items() if v}}
    differential(pair, run, lambda obs: _check(obs == {
        "status": "HTTP/1.1 400 Bad Request", "ending": "close_notify",
        "fin": "after delayed_close_timeout",
        "counted": {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1}}, obs),
        at_once=True)


def _check(condition: bool, obs) -> None:
    assert condition, f"Envoy observed {obs}"
