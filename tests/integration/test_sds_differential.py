"""Secrets, Baton against a real Envoy 1.40 on the same bootstrap and the same files (only
the ports differ): static_resources.secrets named by a DownstreamTlsContext (a certificate,
and a CA through combined_validation_context with a SAN matcher of its own), and a
path_config_source whose certificate directory is rotated by a kubelet-style symlink swap
while both proxies run: the same handshake outcomes before, and the same new certificate
after."""

from __future__ import annotations

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import Baton, free_port
from .differential.proxies import Envoy
from .test_sds import _swap, mounted_secret, served_serial, shared_dir  # noqa: F401
from .test_tls_differential import attempt
from .tls_clients import TLS_CONTEXT_TYPE, client_context


def bootstrap(admin: int, static_port: int, rotating_port: int, upstream: int, ca, server,
              sds_file) -> dict:
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "tls", "cluster": "echo"}

    def listener(name, port, common, require=False):
        context = {"@type": TLS_CONTEXT_TYPE, "common_tls_context": common}
        if require:
            context["require_client_certificate"] = True
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}],
                                   "transport_socket": {"name": "envoy.transport_sockets.tls",
                                                        "typed_config": context}}]}
    static = {"tls_certificate_sds_secret_configs": [{"name": "server"}],
              "combined_validation_context": {
                  "default_validation_context": {"match_typed_subject_alt_names": [
                      {"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}]},
                  "validation_context_sds_secret_config": {"name": "ca"}}}
    rotating = {"tls_certificate_sds_secret_configs": [{
        "name": "rotating", "sds_config": {"path_config_source": {"path": str(sds_file)},
                                           "resource_api_version": "V3"}}]}
    return {"node": {"id": "baton-test", "cluster": "test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "secrets": [
                    {"name": "server", "tls_certificate": {
                        "certificate_chain": {"inline_string": server.cert_pem.decode()},
                        "private_key": {"inline_string": server.key_pem.decode()}}},
                    {"name": "ca", "validation_context": {
                        "trusted_ca": {"inline_string": ca.cert_pem.decode()}}}],
                "listeners": [listener("static", static_port, static, require=True),
                              listener("rotating", rotating_port, rotating)],
                "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                                  {"endpoint": {"address": {"socket_address": {
                                      "address": "127.0.0.1", "port_value": upstream}}}}]}]}}]}}


def static_secrets_dump(admin_port: int) -> list:
    import json
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/config_dump", timeout=5) as r:
        dump = json.loads(r.read())
    (secrets,) = [c for c in dump["configs"] if c["@type"].endswith(".SecretsConfigDump")]
    return [{k: v for k, v in entry.items() if k != "last_updated"}
            for entry in secrets["static_secrets"]]


def test_static_and_rotated_secrets_match_envoy(tmp_path, upstreams, shared_dir):  # noqa: F811
    ca = make_ca("ecdsa")
    first, second, server = leaf(ca, "ecdsa"), leaf(ca, "rsa"), leaf(ca, "ecdsa")
    certs, sds_file = mounted_secret(shared_dir, first, "rotating")
    echo = upstreams("echo")
    clients = [("SPIFFE client", client_context(ca, spiffe_leaf(ca))),
               ("no client certificate", client_context(ca)),
               ("wrong SAN", client_context(ca, spiffe_leaf(ca, spiffe_id="spiffe://other/sa/x")))]
    proxies, ports, observed = {}, {}, {}
    try:
        for name in ("envoy", "baton"):
            admin, static_port, rotating_port = free_port(), free_port(), free_port()
            data = bootstrap(admin, static_port, rotating_port, echo.port, ca, server, sds_file)
            proxies[name] = (Envoy(tmp_path / name, data) if name == "envoy"
                             else Baton(tmp_path / name, data, concurrency=1))
            proxies[name].start()
            ports[name] = (static_port, rotating_port)
        plain = client_context(ca)
        for name, (static_port, rotating_port) in ports.items():
            observed[name] = ([(case, attempt(static_port, ctx)[0]) for case, ctx in clients],
                              served_serial(rotating_port, plain) == first.cert.serial_number)
        assert observed["envoy"] == ([("SPIFFE client", "ok"), ("no client certificate", "refused"),
                                      ("wrong SAN", "refused")], True)
        assert observed["baton"] == observed["envoy"]
        # /config_dump's static secrets, private keys redacted, as Envoy shows them.
        dumps = {name: static_secrets_dump(process.admin_port) for name, process in proxies.items()}
        assert [entry["name"] for entry in dumps["envoy"]] == ["server", "ca"]
        assert dumps["envoy"][0]["secret"]["tls_certificate"]["private_key"] == {"inline_string": "[redacted]"}
        assert dumps["baton"] == dumps["envoy"]

        _swap(certs, second, 2)
        for name, (_, rotating_port) in ports.items():
            wait_until(lambda: served_serial(rotating_port, plain) == second.cert.serial_number,
                       15, f"{name} serving the swapped certificate")
    finally:
        for process in proxies.values():
            process.stop()
