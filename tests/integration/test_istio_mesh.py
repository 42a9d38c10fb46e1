"""Two VMs in an Istio mesh, each with Baton as its sidecar (issue 14, point 3b).

Two network namespaces joined by a veth pair stand for the VMs. On each: an application, the
capture rules of `baton run --intercept` (A: outbound to the VMs' subnet into 15001; B: its
app port 9080 inbound into 15006), and a Baton sidecar whose listeners, routes, clusters,
endpoints and secrets come from a test control plane over Unix sockets, as pilot-agent's
xds-grpc and sds-grpc are: Istio's virtualOutbound / virtualInbound, the bind_to_port:false
`0.0.0.0_9080` HTTP listener, the `outbound|9080||reviews...` EDS cluster with tlsMode-istio
transport_socket_matches (SPIFFE certificates made at test time, served over SDS), the HTTP
metadata exchange and istio.stats.

App A calls B's address and port. The request crosses sidecar A (captured, handed to the
9080 listener, routed, mTLS with B's SPIFFE identity checked), sidecar B (captured, TLS
ended, the client's identity recorded) and reaches app B without the exchange's headers;
both sidecars count it in istio_requests_total with both workloads' labels. A call to an
address outside the mesh passes through sidecar A untouched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from baton.xds import protos  # noqa: F401 - declares Istio's types for the test control plane
from ..tls_certs import make_ca, spiffe_leaf
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, ControlPlane
from .conftest import BATON, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
                                reason="needs root, nft and ip (network namespaces)")

T = "type.googleapis.com/"
SERVICE = "reviews.shop.svc.cluster.local"
ID_A = "spiffe://cluster.local/ns/shop/sa/productpage"
ID_B = "spiffe://cluster.local/ns/shop/sa/reviews"
ADS = {"ads": {}, "resource_api_version": "V3"}
SDS = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                             "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]},
       "resource_api_version": "V3"}
STATS = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}

APPS = textwrap.dedent('''
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    def app(name):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"app": name, "headers": [k.lower() for k in self.headers]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        return Handler
    servers = [ThreadingHTTPServer(("0.0.0.0", 9080), app("reviews")),
               ThreadingHTTPServer((sys.argv[1], 8080), app("outside"))]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
''')

CLIENT = textwrap.dedent('''
    import json, sys, urllib.request
    with urllib.request.urlopen(sys.argv[1], timeout=20) as resp:
        print(json.dumps({"status": resp.status, "headers": [k.lower() for k in resp.headers],
                          "body": json.loads(resp.read())}))
''')


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def node(name: str, workload: str, app: str, version: str, ip: str) -> dict:
    return {"id": f"sidecar~{ip}~{name}.shop~shop.svc.cluster.local", "cluster": f"{app}.shop",
            "metadata": {"NAME": name, "NAMESPACE": "shop", "WORKLOAD_NAME": workload,
                         "CLUSTER_ID": "vms", "MESH_ID": "mesh1", "INSTANCE_IPS": ip,
                         "LABELS": {"app": app, "version": version}}}


def pipe_cluster(name: str, path: Path) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"pipe": {"path": str(path)}}}}]}]}}


def bootstrap(sidecar_node: dict, socket_path: Path) -> dict:
    """A VM sidecar's bootstrap as pilot-agent writes it: the node, admin on loopback, ADS
    over the xds-grpc Unix socket, secrets over sds-grpc (here both on one socket)."""
    return {"node": sidecar_node,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                "lds_config": ADS, "cds_config": ADS},
            "static_resources": {"clusters": [pipe_cluster("xds-grpc", socket_path),
                                              pipe_cluster("sds-grpc", socket_path)]}}


def hcm(stat_prefix: str, direction: str, route: dict) -> dict:
    lists = ({"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "downstream_propagation": [{"istio_headers": {}}]} if direction == "inbound" else
             {"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "upstream_propagation": [{"istio_headers": {}}]})
    exchange = {"name": "istio.metadata_exchange", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct",
        "type_url": T + "io.istio.http.peer_metadata.Config", "value": lists}}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix, **route, "http_filters": [exchange, STATS, ROUTER]}}


def tcp_proxy(cluster: str) -> dict:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster, "cluster": cluster}}


def listeners() -> list[dict]:
    original_dst = {"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
    tls_inspector = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
    downstream_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
            "combined_validation_context": {
                "default_validation_context": {},
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS}}}}}
    return [
        {"name": "virtualOutbound", "traffic_direction": "OUTBOUND", "use_original_dst": True,
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
         "filter_chains": [{"name": "virtualOutbound-catchall-tcp",
                            "filters": [STATS, tcp_proxy("PassthroughCluster")]}]},
        {"name": "0.0.0.0_9080", "traffic_direction": "OUTBOUND", "bind_to_port": False,
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
         "filter_chains": [{"filters": [hcm("outbound_0.0.0.0_9080", "outbound", {
             "rds": {"config_source": ADS, "route_config_name": "9080"}})]}],
         "default_filter_chain": {"name": "PassthroughFilterChain",
                                  "filters": [tcp_proxy("PassthroughCluster")]}},
        {"name": "virtualInbound", "traffic_direction": "INBOUND",
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
         "listener_filters": [original_dst, tls_inspector],
         "filter_chains": [{
             "name": "0.0.0.0_9080",
             "filter_chain_match": {"destination_port": 9080, "transport_protocol": "tls"},
             "transport_socket": downstream_tls,
             "filters": [hcm("inbound_0.0.0.0_9080", "inbound", {"route_config": {
                 "name": "inbound|9080||", "virtual_hosts": [{
                     "name": "inbound|http|9080", "domains": ["*"],
                     "routes": [{"match": {"prefix": "/"},
                                 "route": {"cluster": "inbound|9080||"}}]}]}})]}]},
    ]


def clusters() -> list[dict]:
    upstream_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": f"outbound_.9080_._.{SERVICE}",
        "common_tls_context": {
            "alpn_protocols": ["istio-peer-exchange", "istio"],
            "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": SDS}],
            "combined_validation_context": {
                "default_validation_context": {"match_subject_alt_names": [{"exact": ID_B}]},
                "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": SDS}}}}}
    exchange = {"name": "istio.metadata_exchange", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct",
        "type_url": T + "envoy.tcp.metadataexchange.config.MetadataExchange",
        "value": {"protocol": "istio-peer-exchange"}}}
    return [
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
         "connect_timeout": "2s"},
        {"name": f"outbound|9080||{SERVICE}", "type": "EDS", "connect_timeout": "2s",
         "eds_cluster_config": {"eds_config": ADS}, "lb_policy": "LEAST_REQUEST",
         "metadata": {"filter_metadata": {"istio": {"services": [
             {"host": SERVICE, "name": "reviews", "namespace": "shop"}]}}},
         "filters": [exchange],
         "transport_socket_matches": [
             {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
              "transport_socket": upstream_tls},
             {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
                 "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                     "@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]},
        {"name": "inbound|9080||", "type": "STATIC", "connect_timeout": "2s",
         "load_assignment": {"cluster_name": "inbound|9080||", "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": 9080}}}}]}]}},
    ]


def routes(ip_b: str) -> list[dict]:
    return [{"name": "9080", "validate_clusters": False, "virtual_hosts": [
        {"name": f"{SERVICE}:9080",
         "domains": [SERVICE, f"{SERVICE}:9080", "reviews", "reviews:9080", ip_b, f"{ip_b}:9080"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"outbound|9080||{SERVICE}"}}]},
        {"name": "allow_any", "domains": ["*"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}]}]


def endpoints(ip_b: str) -> list[dict]:
    return [{"cluster_name": f"outbound|9080||{SERVICE}", "endpoints": [{"lb_endpoints": [{
        "endpoint": {"address": {"socket_address": {"address": ip_b, "port_value": 9080}}},
        "metadata": {"filter_metadata": {
            "istio": {"workload": "reviews-v2;shop;reviews;v2;vms"},
            "envoy.transport_socket_match": {"tlsMode": "istio"}}}}]}]}]


def secrets_for(ca, pair) -> list[dict]:
    return [{"name": "default", "tls_certificate": {
                "certificate_chain": {"inline_string": pair.cert_pem.decode()},
                "private_key": {"inline_string": pair.key_pem.decode()}}},
            {"name": "ROOTCA", "validation_context": {
                "trusted_ca": {"inline_string": ca.cert_pem.decode()}}}]


@pytest.fixture
def mesh(tmp_path):
    tag = secrets.token_hex(3)
    vm_a, vm_b = f"bta{tag}", f"btb{tag}"
    net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    ip_a, ip_b, outside = f"{net}.1", f"{net}.2", f"{net}.3"
    # The xDS agent runs as the workers' unprivileged user: its sockets' directory must be
    # reachable (pytest's tmp_path is its owner's alone), as pilot-agent's are for Envoy.
    shared = Path(tempfile.mkdtemp(prefix="baton-mesh-"))
    shared.chmod(0o755)
    procs, planes = [], []
    sh("ip", "netns", "add", vm_a)
    sh("ip", "netns", "add", vm_b)
    try:
        sh("ip", "link", "add", f"m{tag}a", "netns", vm_a, "type", "veth", "peer", "name",
           f"m{tag}b", "netns", vm_b)
        for ns, dev, addrs in ((vm_a, f"m{tag}a", [ip_a]), (vm_b, f"m{tag}b", [ip_b, outside])):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        (tmp_path / "apps.py").write_text(APPS)
        (tmp_path / "client.py").write_text(CLIENT)
        apps = subprocess.Popen(["ip", "netns", "exec", vm_b, sys.executable,
                                 str(tmp_path / "apps.py"), outside],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(apps)
        assert apps.stdout.readline().strip() == "ready"

        ca = make_ca()
        sidecars = {"a": (vm_a, node("productpage-v1-0", "productpage-v1", "productpage", "v1", ip_a),
                          spiffe_leaf(ca, spiffe_id=ID_A, client=True),
                          ["-i", f"{net}.0/24", "-b", ""]),
                    "b": (vm_b, node("reviews-v2-0", "reviews-v2", "reviews", "v2", ip_b),
                          spiffe_leaf(ca, spiffe_id=ID_B, client=False),
                          ["-i", "", "-b", "9080"])}
        for name, (ns, sidecar_node, pair, capture) in sidecars.items():
            socket_path = shared / f"{name}.sock"
            plane = ControlPlane(host=f"unix:{socket_path}")
            planes.append(plane)
            plane.start()
            socket_path.chmod(0o666)
            plane.set_resources(LISTENER, listeners(), "1")
            plane.set_resources(ROUTE, routes(ip_b), "1")
            plane.set_resources(CLUSTER, clusters(), "1")
            plane.set_resources(ENDPOINT, endpoints(ip_b), "1")
            plane.set_resources(SECRET, secrets_for(ca, pair), "1")
            work = tmp_path / name
            work.mkdir()
            (work / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap(sidecar_node, socket_path)))
            log = open(work / "baton.log", "wb")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, BATON, "run", "-c", str(work / "bootstrap.yaml"),
                 "--concurrency", "1", "--runtime-dir", str(work / "run"), "--intercept",
                 "-p", "15001", "-z", "15006", *capture],
                stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
        for plane in planes:
            wait_until(lambda: plane.acked(LISTENER, "1") and plane.acked(CLUSTER, "1")
                       or any(p.poll() is not None for p in procs), 60, "the sidecars' ACKs")
        for name in sidecars:
            log_path = tmp_path / name / "baton.log"
            wait_until(lambda: "intercept: applied" in log_path.read_text()
                       or any(p.poll() is not None for p in procs), 60, f"sidecar {name}")
            assert all(p.poll() is None for p in procs), log_path.read_text()
        yield {"a": vm_a, "b": vm_b, "ip_b": ip_b, "outside": outside, "dir": tmp_path}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for plane in planes:
            plane.close()
        sh("ip", "netns", "del", vm_a, check=False)
        sh("ip", "netns", "del", vm_b, check=False)
        shutil.rmtree(shared, ignore_errors=True)


def call(mesh, url: str) -> dict:
    out = sh("ip", "netns", "exec", mesh["a"], sys.executable, str(mesh["dir"] / "client.py"), url,
             timeout=30, check=False)
    assert out.returncode == 0, (out.stderr[-2000:], *(
        (mesh["dir"] / vm / "baton.log").read_text()[-3000:] for vm in ("a", "b")))
    return json.loads(out.stdout)


def istio_requests(mesh, vm: str) -> list[dict]:
    text = sh("ip", "netns", "exec", mesh[vm], "curl", "-s",
              "http://127.0.0.1:15000/stats/prometheus").stdout
    found = []
    for line in text.splitlines():
        if line.startswith("istio_requests_total{"):
            inner = line[line.index("{") + 1:line.rindex("}")]
            labels = dict(part.split("=", 1) for part in inner.replace('"', "").split(","))
            found.append({**labels, "value": line.rsplit(" ", 1)[1]})
    return found


def test_app_a_calls_app_b_through_both_sidecars_over_mtls(mesh):
    answer = call(mesh, f"http://{mesh['ip_b']}:9080/reviews/1")
    assert answer["status"] == 200 and answer["body"]["app"] == "reviews"
    hidden = {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id"}
    assert not hidden & set(answer["body"]["headers"]) and not hidden & set(answer["headers"])

    workloads = {"source_workload": "productpage-v1", "source_app": "productpage",
                 "source_version": "v1", "source_workload_namespace": "shop",
                 "source_cluster": "vms",
                 "destination_workload": "reviews-v2", "destination_app": "reviews",
                 "destination_version": "v2", "destination_workload_namespace": "shop",
                 "destination_cluster": "vms", "response_code": "200", "value": "1"}
    wait_until(lambda: istio_requests(mesh, "b"), 10, "sidecar B's istio_requests_total")
    ((source,),) = [istio_requests(mesh, "a")]
    assert {k: source[k] for k in workloads} == workloads
    assert (source["reporter"], source["destination_service"],
            source["destination_service_name"], source["destination_service_namespace"],
            source["source_principal"], source["destination_principal"]) == (
        "source", SERVICE, "reviews", "shop", ID_A, ID_B)
    ((destination,),) = [istio_requests(mesh, "b")]
    assert {k: destination[k] for k in workloads} == workloads
    assert (destination["reporter"], destination["source_principal"],
            destination["destination_principal"],
            destination["connection_security_policy"]) == (
        "destination", ID_A, ID_B, "mutual_tls")


def test_traffic_outside_the_mesh_passes_through(mesh):
    answer = call(mesh, f"http://{mesh['outside']}:8080/")
    assert answer["status"] == 200 and answer["body"]["app"] == "outside"
    # It went through sidecar A's virtualOutbound, untouched (no exchange headers added).
    assert not {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id"} & set(answer["body"]["headers"])
    text = sh("ip", "netns", "exec", mesh["a"], "curl", "-s", "http://127.0.0.1:15000/stats").stdout
    assert "tcp.PassthroughCluster.downstream_cx_total: 1" in text, text
