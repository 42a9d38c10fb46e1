"""Secrets that change while Baton serves: SDS over a gRPC stream of its own on a Unix socket
(Istio's sds-grpc), and certificate files rotated by a symlink swap of their directory
(cert-manager, Kubernetes secrets) through a path_config_source.

Real parts: Baton (master, two workers, the xDS agent), the grpcio test server of
tests/xds_support serving SecretDiscoveryService on a Unix socket, certificates made at test
time, Python ssl clients that look at the certificate each handshake gets, an echo upstream
behind a TLS-terminating tcp_proxy. A connection made before a rotation keeps working after it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import tempfile

import pytest
import yaml
from pathlib import Path

from cryptography import x509

from ..tls_certs import leaf, make_ca
from ..waiting import wait_until
from ..xds_support.control_plane import SECRET, ControlPlane
from .conftest import free_port
from .tls_clients import client_context, echo, tls_bootstrap

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TLS_CONTEXT_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def sds_transport_socket(name: str, sds_config: dict) -> dict:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS_CONTEXT_TYPE, "common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": name, "sds_config": sds_config}]}}}


def with_node(data: dict) -> dict:
    """SDS needs the node's id and cluster (Envoy refuses to start without them)."""
    return {**data, "node": {"id": "baton-test", "cluster": "test"}}


def inline_secret(name: str, pair, key_of=None) -> dict:
    return {"name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": pair.cert_pem.decode()},
        "private_key": {"inline_string": (key_of or pair).key_pem.decode()}}}


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    """The serial number of the certificate a new handshake gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def serves(port: int, ctx, pair, handshakes: int = 6) -> bool:
    """Whether every one of a few new handshakes (both workers get some) gets `pair`."""
    return all(served_serial(port, ctx) == pair.cert.serial_number for _ in range(handshakes))


def open_connection(port: int, ctx) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def shared_dir():
    """A directory the agent can reach: it runs as the workers' unprivileged user, as Envoy
    runs as Istio's proxy user (pytest's tmp_path is its owner's alone)."""
    path = tempfile.mkdtemp(prefix="baton-sds-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def readable(directory) -> None:
    """Certificate files the unprivileged agent may read (Pair.write makes keys 0600)."""
    for path in Path(directory).rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_sds_grpc_on_a_unix_socket_rotates_and_nacks(baton, upstreams, shared_dir):
    ca = make_ca("ecdsa")
    first, second = leaf(ca, "ecdsa"), leaf(ca, "ecdsa", dns=("localhost", "second"))
    socket_path = shared_dir / "sds.sock"
    plane = ControlPlane(host=f"unix:{socket_path}")
    plane.start()
    socket_path.chmod(0o666)
    try:
        plane.set_resources(SECRET, [inline_secret("default", first)], "1")
        echo_upstream = upstreams("echo")
        port = free_port()
        sds = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                     "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
               "resource_api_version": "V3", "initial_fetch_timeout": "10s"}
        data = with_node(tls_bootstrap(port, echo_upstream.port, sds_transport_socket("default", sds)))
        data["static_resources"]["clusters"].append({
            "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}]}})
        b = baton(data)                                   # /ready: the secret is warm
        ctx = client_context(ca)
        assert serves(port, ctx, first)
        kept = open_connection(port, ctx)                 # established before the rotation
        assert echo(kept, b"before") == b"before"

        plane.set_resources(SECRET, [inline_secret("default", second)], "2")
        wait_until(lambda: plane.acked(SECRET, "2"), 15, "SDS v2 ACKed")
        wait_until(lambda: serves(port, ctx, second), 15, "new handshakes get the rotated certificate")
        assert echo(kept, b"after the rotation") == b"after the rotation"
        # Envoy's sds.<secret>.* counters (the agent's, sent to the master with its config).
        wait_until(lambda: b.stats().get("sds.default.update_success", 0) >= 2, 10,
                   "sds.default.update_success")

        # A reload: the next generation serves the rotated secret from the start (the applied
        # config and the agent's state carry it), and the connection moves with its session.
        result = b.reload()
        assert result.returncode == 0, result.stderr
        assert serves(port, ctx, second)
        assert echo(kept, b"after the reload") == b"after the reload"

        # A certificate with another key: a NACK naming the problem; the old one serves on.
        plane.set_resources(SECRET, [inline_secret("default", first, key_of=leaf(ca, "rsa"))], "3")
        nack = wait_until(lambda: plane.nacked(SECRET, "3"), 15, "SDS v3 NACKed")
        assert ("Secret[default].tls_certificate: the certificate does not match the private key"
                in nack["error_detail"]["message"])
        assert serves(port, ctx, second)
        assert echo(kept, b"still") == b"still"
        wait_until(lambda: b.stats().get("sds.default.update_rejected") == 1, 10,
                   "sds.default.update_rejected")
        kept.close()
    finally:
        plane.close()


def _swap(directory, pair, generation: int) -> None:
    """What kubelet does to a mounted secret: a new timestamped directory, then one rename of
    the `..data` symlink over the old one."""
    target = directory / f"..{generation}"
    target.mkdir()
    pair.write(target, "tls")
    readable(target)
    link = directory / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, directory / "..data")


def mounted_secret(directory, pair, name: str):
    """A Kubernetes-style mounted secret holding `pair` under `directory`/certs (tls.crt and
    tls.key are symlinks into `..data`) and an SDS file naming it `name`, its certificate
    directory watched. -> (certs directory, SDS file)."""
    certs = directory / "certs"
    certs.mkdir(mode=0o755)
    _swap(certs, pair, 1)
    for file_name in ("tls.crt", "tls.key"):
        (certs / file_name).symlink_to(f"..data/{file_name}")
    sds_file = directory / "sds.yaml"
    sds_file.write_text(yaml.safe_dump({"resources": [{
        "@type": SECRET_TYPE, "name": name, "tls_certificate": {
            "certificate_chain": {"filename": str(certs / "tls.crt")},
            "private_key": {"filename": str(certs / "tls.key")},
            "watched_directory": {"path": str(certs)}}}]}))
    readable(directory)
    return certs, sds_file


def test_watched_directory_symlink_swap_rotates(baton, upstreams, shared_dir):
    ca = make_ca("ecdsa")
    first, second = leaf(ca, "ecdsa"), leaf(ca, "rsa")
    certs, sds_file = mounted_secret(shared_dir, first, "server")
    echo_upstream = upstreams("echo")
    port = free_port()
    b = baton(with_node(tls_bootstrap(port, echo_upstream.port, sds_transport_socket(
        "server", {"path_config_source": {"path": str(sds_file)}}))))
    ctx = client_context(ca)
    assert serves(port, ctx, first)
    kept = open_connection(port, ctx)
    assert echo(kept, b"before") == b"before"

    _swap(certs, second, 2)                               # ECDSA -> RSA, one rename
    wait_until(lambda: serves(port, ctx, second), 15, "the swapped certificate served")
    assert echo(kept, b"after") == b"after"
    kept.close()
    assert "secrets updated (rotated): server" in b.log


def test_sds_over_ads_a_listener_waits_for_its_secret(upstreams, tmp_path):
    """LDS sends a TLS listener naming secret `default` over ADS (delta): it is not served,
    and Baton is not ready, until the secret arrives (Envoy's warming); then a rotation over
    the same stream, and a NACK while the rotated secret serves on."""
    from ..xds_support.control_plane import LISTENER
    from ..xds_support.resources import ADS, bootstrap
    from .conftest import Baton
    ca = make_ca("ecdsa")
    first, second = leaf(ca, "ecdsa"), leaf(ca, "rsa")
    echo_upstream = upstreams("echo")
    port = free_port()
    plane = ControlPlane()
    cp_port = plane.start()
    b = Baton(tmp_path / "b", bootstrap(free_port(), cp_port, "DELTA_GRPC"))
    try:
        tls = sds_transport_socket("default", {**ADS, "initial_fetch_timeout": "60s"})
        serve_tls_echo(plane, echo_upstream.port, port, tls)
        b.launch()
        wait_until(lambda: plane.acked(LISTENER, "1"), 30, "LDS v1 ACKed")
        wait_until(lambda: _admin_up(b), 30, "the admin listener")
        assert b.admin("/ready")[0] == 503              # the listener's secret is not warm
        with pytest.raises(ConnectionRefusedError):      # warming: not bound yet, as in Envoy
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        plane.set_resources(SECRET, [inline_secret("default", first)], "1")
        b.wait_ready(30)
        ctx = client_context(ca)
        wait_until(lambda: _serves_now(port, ctx, first), 15, "the listener served once warm")
        kept = open_connection(port, ctx)
        assert echo(kept, b"before") == b"before"
        plane.set_resources(SECRET, [inline_secret("default", second)], "2")
        wait_until(lambda: serves(port, ctx, second), 15, "the rotated certificate")
        dump = json.loads(b.admin("/config_dump")[1])
        (secrets,) = [c for c in dump["configs"] if c["@type"].endswith(".SecretsConfigDump")]
        (entry,) = secrets["dynamic_active_secrets"]
        assert entry["name"] == "default"
        assert entry["secret"]["tls_certificate"]["private_key"] == {"inline_string": "[redacted]"}
        assert entry["secret"]["tls_certificate"]["certificate_chain"]["inline_string"] == \
            second.cert_pem.decode()
        plane.set_resources(SECRET, [{"name": "default", "tls_certificate": {
            "certificate_chain": {"filename": "/nonexistent/tls.crt"},
            "private_key": {"filename": "/nonexistent/tls.key"}}}], "3")
        nack = wait_until(lambda: plane.nacked(SECRET, "3"), 15, "SDS v3 NACKed")
        assert ("Secret[default].tls_certificate.certificate_chain.filename: cannot read "
                "'/nonexistent/tls.crt'" in nack["error_detail"]["message"])
        assert serves(port, ctx, second)
        assert echo(kept, b"after") == b"after"
        kept.close()
    finally:
        b.stop()
        plane.close()


def serve_tls_echo(plane, echo_port: int, port: int, transport_socket: dict) -> None:
    """CDS: cluster `echo`; LDS: listener `tls` on `port`, TLS-terminating tcp_proxy to it."""
    from ..xds_support.control_plane import CLUSTER, LISTENER
    plane.set_resources(CLUSTER, [{
        "name": "echo", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}}}]}]}}],
        "1")
    plane.set_resources(LISTENER, [{
        "name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"transport_socket": transport_socket, "filters": [{
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tls", "cluster": "echo"}}]}]}], "1")


def _admin_up(b) -> bool:
    try:
        b.admin("/ready", timeout=1.0)
        return True
    except OSError:
        return False


def _serves_now(port, ctx, pair) -> bool:
    try:
        return serves(port, ctx, pair, handshakes=2)
    except OSError:
        return False


def test_the_ads_stream_over_mtls(upstreams, tmp_path):
    """The ADS cluster with an UpstreamTlsContext (client certificate, trusted_ca, sni), as
    istiod's port 15012 wants: the control plane requires the client certificate; Baton's
    agent connects, and the listener LDS sends is served."""
    import grpc
    from ..xds_support.control_plane import LISTENER
    from ..xds_support.resources import bootstrap
    from .conftest import Baton
    from .tls_clients import tls_transport_socket
    ca = make_ca("ecdsa")
    server, client = leaf(ca, "ecdsa", dns=("istiod.istio-system.svc",)), leaf(ca, "ecdsa", client=True)
    plane = ControlPlane(credentials=grpc.ssl_server_credentials(
        [(server.key_pem, server.cert_pem)], root_certificates=ca.cert_pem,
        require_client_auth=True))
    cp_port = plane.start()
    echo_upstream = upstreams("echo")
    port = free_port()
    data = bootstrap(free_port(), cp_port, "GRPC")
    upstream_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "istiod.istio-system.svc", "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [{"certificate_chain": {"inline_string": client.cert_pem.decode()},
                                              "private_key": {"inline_string": client.key_pem.decode()}}],
                        "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}}}
    data["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": upstream_tls}
    b = Baton(tmp_path / "b", data)
    try:
        serve_tls_echo(plane, echo_upstream.port, port, tls_transport_socket(leaf(ca, "ecdsa")))
        b.start()
        assert plane.acked(LISTENER, "1")
        with open_connection(port, client_context(ca)) as tls:
            assert echo(tls, b"over mTLS-configured ADS") == b"over mTLS-configured ADS"
        assert b.stats()["control_plane.connected_state"] == 1
    finally:
        b.stop()
        plane.close()
