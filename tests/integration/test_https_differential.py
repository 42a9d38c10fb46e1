"""HTTPS (TLS in front of the HTTP connection manager), Baton against a real Envoy 1.40 on
the same bootstrap and certificates (only the ports differ): for the same clients, the
status and HTTP version curl sees, the ALPN Python's ssl negotiates, what reached the
upstream (x-forwarded-proto, x-forwarded-client-cert in SANITIZE_SET with every detail, a
forged XFCC header, also on a plain listener with Envoy's default SANITIZE), and the
listener's ssl.* and the connection manager's counters."""

from __future__ import annotations

import copy
import json
import socket
import ssl
import subprocess

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import Baton, free_port
from .differential.proxies import Envoy
from .test_https import https_bootstrap
from .test_tls_differential import ssl_counters, stats
from .tls_clients import client_context, tls_transport_socket

SERVER_SPIFFE = "spiffe://cluster.local/ns/edge/sa/proxy"
OUTCOMES = ("ssl.handshake", "ssl.connection_error", "ssl.fail_verify_no_cert",
            "ssl.fail_verify_san", "ssl.fail_verify_error")
HCM_COUNTERS = ("downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_http2_total",
                "downstream_cx_ssl_total", "downstream_rq_total", "downstream_cx_ssl_active",
                "downstream_cx_active")


def bootstrap(admin: int, port: int, upstream: int, ca) -> dict:
    server = leaf(ca, "ecdsa", uris=(SERVER_SPIFFE,))
    sans = [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]
    data = https_bootstrap(port, upstream, tls_transport_socket(server, ca, sans=sans,
                                                                alpn=["h2", "http/1.1"]), {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True,
                                            "cert": True, "chain": True}})
    data["admin"]["address"]["socket_address"]["port_value"] = admin
    # The same connection manager on plain TCP, with Envoy's default forward_client_cert_details.
    listeners = data["static_resources"]["listeners"]
    plain = copy.deepcopy(listeners[0])
    plain["name"] = "plain"
    plain["address"]["socket_address"]["port_value"] = free_port()
    chain = plain["filter_chains"][0]
    del chain["transport_socket"]
    hcm = chain["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "plain_http"
    del hcm["forward_client_cert_details"], hcm["set_current_client_cert_details"]
    listeners.append(plain)
    return data


def plain_port(data: dict) -> int:
    return data["static_resources"]["listeners"][1]["address"]["socket_address"]["port_value"]


def curl(port: int, paths, *args, scheme="https") -> tuple:
    """(status and version, upstream's x-forwarded-proto, its XFCC) for one curl request."""
    done = subprocess.run(["curl", "-sS", "--cacert", paths["ca"], *args,
                           "-H", "x-forwarded-client-cert: By=forged",
                           "-w", "\n%{http_code} %{http_version}", f"{scheme}://localhost:{port}/d"],
                          capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        return ("refused", None, None)
    body, _, outcome = done.stdout.rpartition("\n")
    headers = dict(json.loads(body)["headers"])
    return (outcome, headers.get("x-forwarded-proto"), headers.get("x-forwarded-client-cert"))


def alpn(port: int, ctx: ssl.SSLContext):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.selected_alpn_protocol()


def test_https_matches_envoy(tmp_path, recorder):
    ca = make_ca("ecdsa")
    # A SPIFFE identity and two DNS names: XFCC's URI= and DNS= parts, in Envoy's order.
    client = leaf(ca, "ecdsa", dns=("client.example", "alt.example"), ips=(), uris=(SPIFFE_ID,),
                  common_name="baton-workload", client=True, slot=3)
    paths = {"ca": str(tmp_path / "ca.pem")}
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    paths["cert"], paths["key"] = client.write(tmp_path, "client")
    wrong = spiffe_leaf(ca, "rsa", spiffe_id="spiffe://elsewhere/sa/x")
    wrong_cert, wrong_key = wrong.write(tmp_path, "wrong")
    mtls = ("--cert", paths["cert"], "--key", paths["key"])
    cases = [("no client certificate, HTTP/1.1", ("--http1.1",)),
             ("SPIFFE client, HTTP/1.1", ("--http1.1", *mtls)),
             ("SPIFFE client, HTTP/2", ("--http2", *mtls)),
             ("no client certificate, HTTP/2", ("--http2",)),
             ("wrong SAN", ("--cert", wrong_cert, "--key", wrong_key))]
    observed, counters = {}, {}
    for proxy in ("envoy", "baton"):
        admin, port = free_port(), free_port()
        data = bootstrap(admin, port, recorder, ca)
        process = (Envoy(tmp_path / proxy, data) if proxy == "envoy"
                   else Baton(tmp_path / proxy, data, concurrency=1))
        process.start()
        try:
            seen = [(name, curl(port, paths, *args)) for name, args in cases]
            seen.append(("ALPN h2 first", alpn(port, client_context(ca, alpn=["h2", "http/1.1"]))))
            seen.append(("ALPN none", alpn(port, client_context(ca))))
            seen.append(("plain HTTP, forged XFCC", curl(plain_port(data), paths, scheme="http")))
            observed[proxy] = seen
            # Every connection ends as a handshake or a counted refusal; counters reach the
            # admin API a little after (Baton's workers report them to the master).
            wait_until(lambda: sum(v for k, v in ssl_counters(admin, port).items()
                                   if k in OUTCOMES) == 7, 10, f"{proxy}'s handshake counters")
            counters[proxy] = ssl_counters(admin, port)
            everything = stats(admin)
            counters[proxy].update({f"http.{name}": everything.get(f"http.ingress_http.{name}")
                                    for name in HCM_COUNTERS})
        finally:
            process.stop()
    envoy = dict(observed["envoy"])
    # What the cases mean, as Envoy answers them:
    assert envoy["SPIFFE client, HTTP/2"][0] == "200 2"
    assert envoy["no client certificate, HTTP/1.1"] == ("refused", None, None)
    assert envoy["SPIFFE client, HTTP/1.1"][2].startswith(f"By={SERVER_SPIFFE};Hash=")
    assert envoy["SPIFFE client, HTTP/1.1"][2].endswith(
        f"URI={SPIFFE_ID};DNS=client.example;DNS=alt.example")
    assert envoy["wrong SAN"][0] == "refused"
    assert envoy["ALPN h2 first"] == ("TLSv1.3", "h2")
    # SANITIZE (the default) strips a client's XFCC on plain connections too.
    assert envoy["plain HTTP, forged XFCC"] == ("200 1.1", "http", None)
    # SAN matchers make a client certificate required (the TLS 1.3 client without one
    # finishes its side of the handshake, then is refused):
    assert counters["envoy"]["ssl.fail_verify_no_cert"] == 4
    for (name, baton_saw), (_, envoy_saw) in zip(observed["baton"], observed["envoy"]):
        assert baton_saw == envoy_saw, name
    assert counters["baton"] == counters["envoy"]
