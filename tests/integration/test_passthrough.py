"""Transparent passthrough in a network namespace: nft REDIRECT captures a client's outbound
connections into Baton, whose original_dst listener filter and ORIGINAL_DST cluster relay them,
byte-exact, to where the client meant to go. IPv4 and IPv6, a server-first protocol, a refusing
destination reflected as a reset, and Baton's own upstream traffic (SO_MARK) never captured.

The namespaces, veth pair and rules are created here and deleted afterwards; nothing touches
the host's own network."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from .conftest import BATON, pid_alive, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
                                reason="needs root, nft and ip (network namespaces)")

MARK = 0x539
CAPTURE = 15001

SERVERS = textwrap.dedent('''
    import socket, sys, threading
    def serve(family, addr, port, banner):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(64)
        def handle(c):
            if banner:
                c.sendall(banner)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR); c.close()
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    def serve_http(family, addr, port):
        # Answers every request with the request head it received, as the body.
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(64)
        def handle(c):
            buf = b""
            while True:
                while b"\\r\\n\\r\\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        c.close(); return
                    buf += d
                head, _, buf = buf.partition(b"\\r\\n\\r\\n")
                c.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n" % len(head) + head)
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
        threading.Thread(target=serve, args=(fam, addr, 8080, b""), daemon=True).start()
        threading.Thread(target=serve_http, args=(fam, addr, 8082), daemon=True).start()
        threading.Thread(target=serve, args=(fam, addr, 8025, b"220 smtp.example ESMTP ready\\r\\n"), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
''')

CLIENT = textwrap.dedent('''
    import json, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    addr, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((addr, port))
        if mode == "banner":
            out = s.recv(100)
        elif mode == "http":
            s.sendall(b"GET /hello HTTP/1.1\\r\\nHost: app.example\\r\\nX-From: client\\r\\n\\r\\n")
            out = b""
            while b"\\r\\n\\r\\n" not in out:
                out += s.recv(65536)
            head, _, body = out.partition(b"\\r\\n\\r\\n")
            length = int([l.split(b":")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += s.recv(65536)
            out = head.split(b"\\r\\n")[0] + b"\\n" + body
        else:
            payload = bytes(range(256)) * 4096          # 1 MiB, every byte value
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
            out = b"match" if out == payload else b"mismatch %d" % len(out)
        print(json.dumps({"ok": out.decode(errors="replace")}))
    except OSError as e:
        import errno
        print(json.dumps({"error": type(e).__name__, "errno": errno.errorcode.get(e.errno, str(e.errno))}))
''')


LOAD = textwrap.dedent('''
    import json, socket, sys, time
    addr, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ok, failures = 0, []
    deadline = time.monotonic() + 120
    import os
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=10) as s:
                s.sendall(b"exchange %d" % ok)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    data += d
            if data == b"exchange %d" % ok:
                ok += 1
            else:
                failures.append("wrong answer")
        except OSError as e:
            failures.append(repr(e))
        if ok == 1:
            print("flowing", flush=True)
    print(json.dumps({"ok": ok, "failures": failures}), flush=True)
''')


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


@pytest.fixture
def topology(tmp_path):
    tag = secrets.token_hex(3)
    node, srv = f"btn{tag}", f"bts{tag}"
    v4 = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    sh("ip", "netns", "add", node)
    sh("ip", "netns", "add", srv)
    procs = []
    try:
        sh("ip", "link", "add", f"v{tag}a", "netns", node, "type", "veth", "peer", "name", f"v{tag}b", "netns", srv)
        for ns, dev, host in ((node, f"v{tag}a", 1), (srv, f"v{tag}b", 2)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v4}.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd00:{tag[:4]}::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        rules = f"""
            table inet baton_test {{
              chain out {{ type nat hook output priority -100; policy accept;
                meta mark {MARK:#x} return
                meta l4proto tcp ip daddr {v4}.0/24 redirect to :{CAPTURE}
                meta l4proto tcp ip6 daddr fd00:{tag[:4]}::/64 redirect to :{CAPTURE}
              }}
            }}"""
        sh("ip", "netns", "exec", node, "nft", "-f", "-", input=rules)
        (tmp_path / "servers.py").write_text(SERVERS)
        (tmp_path / "client.py").write_text(CLIENT)
        server = subprocess.Popen(["ip", "netns", "exec", srv, sys.executable, str(tmp_path / "servers.py"),
                                   f"{v4}.2", f"fd00:{tag[:4]}::2"], stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        yield {"node": node, "srv": srv, "v4": f"{v4}.2", "v6": f"fd00:{tag[:4]}::2",
               "node_v4": f"{v4}.1", "node_v6": f"fd00:{tag[:4]}::1", "dir": tmp_path, "procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        sh("ip", "netns", "del", node, check=False)
        sh("ip", "netns", "del", srv, check=False)


def passthrough_bootstrap() -> dict:
    original_dst = {"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}
    listeners = [{"name": f"outbound_{name}", "address": {"socket_address": {"address": addr, "port_value": CAPTURE}},
                  "use_original_dst": True, "listener_filters": [original_dst],
                  "filter_chains": [{"filters": [tcp]}]} for name, addr in (("v4", "127.0.0.1"), ("v6", "::1"))]
    return {"static_resources": {"listeners": listeners, "clusters": [
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
         "connect_timeout": "2s"}]}}


def start_baton_in_node(topology, bootstrap: dict) -> None:
    """`baton run` inside the node namespace on `bootstrap`, waited for until it is live."""
    d = topology["dir"]
    (d / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    log = open(d / "baton.log", "wb")
    proc = subprocess.Popen(["ip", "netns", "exec", topology["node"], BATON, "run", "-c", str(d / "bootstrap.yaml"),
                             "--concurrency", "1", "--runtime-dir", str(d / "run"), "--upstream-mark", hex(MARK)],
                            stdout=log, stderr=subprocess.STDOUT)
    topology["procs"].append(proc)

    def live():
        assert proc.poll() is None, (d / "baton.log").read_text()
        return "live:" in (d / "baton.log").read_text()
    wait_until(live, 30, "baton live in the namespace")


@pytest.fixture
def baton_in_node(topology):
    start_baton_in_node(topology, passthrough_bootstrap())
    yield topology


def client(topo, addr, port, mode="echo", ns="node") -> dict:
    out = sh("ip", "netns", "exec", topo[ns], sys.executable, str(topo["dir"] / "client.py"),
             addr, str(port), mode, timeout=30).stdout
    return json.loads(out)


def test_opaque_bytes_pass_through_byte_exact_v4_and_v6(baton_in_node):
    topo = baton_in_node
    assert client(topo, topo["v4"], 8080) == {"ok": "match"}
    assert client(topo, topo["v6"], 8080) == {"ok": "match"}
    log = (topo["dir"] / "baton.log").read_text()
    assert "Traceback" not in log


def test_server_first_protocol_passes_through(baton_in_node):
    topo = baton_in_node
    assert client(topo, topo["v4"], 8025, "banner") == {"ok": "220 smtp.example ESMTP ready\r\n"}
    assert client(topo, topo["v6"], 8025, "banner") == {"ok": "220 smtp.example ESMTP ready\r\n"}


def test_refusing_destination_is_a_reset_not_a_silent_close(baton_in_node):
    topo = baton_in_node
    # The client is still sending its 1 MiB when the reset arrives: ECONNRESET, EPIPE, or
    # ENOTCONN from the shutdown() that follows — all the RST; a silent close would give a
    # clean EOF ({"ok": "mismatch 0"}).
    for addr in (topo["v4"], topo["v6"]):
        assert client(topo, addr, 8081).get("errno") in ("ECONNRESET", "EPIPE", "ENOTCONN")


def test_own_capture_port_is_refused_not_looped(baton_in_node):
    topo = baton_in_node
    start = time.monotonic()
    assert client(topo, "127.0.0.1", CAPTURE).get("errno") in ("ECONNRESET", "EPIPE", "ENOTCONN")
    assert time.monotonic() - start < 10
    # Baton is still there and still relays: no loop ate its descriptors.
    assert client(topo, topo["v4"], 8080) == {"ok": "match"}


def test_baton_run_intercept_installs_keeps_and_removes_the_rules(topology):
    """`baton run --intercept`: Baton installs the capture itself once it serves, keeps it
    across a reload, and leaves the namespace's ruleset as it found it when it stops."""
    node, d = topology["node"], topology["dir"]
    sh("ip", "netns", "exec", node, "nft", "delete", "table", "inet", "baton_test")
    before = sh("ip", "netns", "exec", node, "nft", "list", "ruleset").stdout
    (d / "bootstrap.yaml").write_text(yaml.safe_dump(passthrough_bootstrap()))
    log = open(d / "baton.log", "wb")
    run_dir = d / "run"
    proc = subprocess.Popen(["ip", "netns", "exec", node, BATON, "run", "-c", str(d / "bootstrap.yaml"),
                             "--concurrency", "1", "--runtime-dir", str(run_dir), "--intercept",
                             "-p", str(CAPTURE), "-b", "", "--default-policy", "allow"],
                            stdout=log, stderr=subprocess.STDOUT)
    topology["procs"].append(proc)
    wait_until(lambda: "intercept: applied" in (d / "baton.log").read_text() or proc.poll() is not None,
               30, "the capture rules")
    assert proc.poll() is None, (d / "baton.log").read_text()
    assert "table inet baton" in sh("ip", "netns", "exec", node, "nft", "list", "ruleset").stdout
    assert client(topology, topology["v4"], 8080) == {"ok": "match"}
    assert client(topology, topology["v6"], 8080) == {"ok": "match"}
    # A client opening a connection per exchange through the capture, all through 5 reloads.
    (d / "load.py").write_text(LOAD)
    stop_file = d / "stop-load"
    load = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, str(d / "load.py"),
                             topology["v4"], "8080", str(stop_file)], stdout=subprocess.PIPE, text=True)
    topology["procs"].append(load)
    assert load.stdout.readline().strip() == "flowing"
    for _ in range(5):
        pid_file = run_dir / "baton.pid"
        old = int(pid_file.read_text())
        reload = sh("ip", "netns", "exec", node, BATON, "reload", "--runtime-dir", str(run_dir), check=False)
        assert reload.returncode == 0, reload.stderr
        wait_until(lambda: not pid_alive(old), 30, "the previous generation to exit")
    stop_file.write_text("")
    outcome = json.loads(load.stdout.readline())
    assert outcome["failures"] == [] and outcome["ok"] > 0, outcome
    # The pid started is the keeper (supervisor/keeper.py): it stays Baton through the reloads.
    assert proc.poll() is None
    assert "table inet baton" in sh("ip", "netns", "exec", node, "nft", "list", "ruleset").stdout
    assert client(topology, topology["v4"], 8080) == {"ok": "match"}
    stop = sh("ip", "netns", "exec", node, BATON, "stop", "--runtime-dir", str(run_dir), check=False)
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: not (run_dir / "control.sock").exists(), 30, "the second generation to stop")
    assert proc.wait(30) == 0                 # the keeper ends with the last generation's status
    wait_until(lambda: sh("ip", "netns", "exec", node, "nft", "list", "ruleset").stdout == before, 10,
               "the ruleset to be restored")


def test_tproxy_inbound_capture_reaches_the_local_app_through_baton(topology):
    """TPROXY mode: connections from another host to an app on the node land on Baton's
    transparent listener, whose local address is the original destination; Baton relays them
    to the app. IPv4 and IPv6."""
    node, d = topology["node"], topology["dir"]
    sh("ip", "netns", "exec", node, "nft", "delete", "table", "inet", "baton_test")
    app = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, str(d / "servers.py"),
                            topology["node_v4"], topology["node_v6"]], stdout=subprocess.PIPE, text=True)
    topology["procs"].append(app)
    assert app.stdout.readline().strip() == "ready"
    original_dst = {"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "inbound", "cluster": "PassthroughCluster"}}
    listeners = [{"name": f"inbound_{name}", "address": {"socket_address": {"address": addr, "port_value": 15006}},
                  "transparent": True, "listener_filters": [original_dst], "filter_chains": [{"filters": [tcp]}]}
                 for name, addr in (("v4", "0.0.0.0"), ("v6", "::"))]
    bootstrap = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19901}}},
                 "static_resources": {"listeners": listeners, "clusters": [
                     {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                      "connect_timeout": "2s"}]}}
    (d / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    log = open(d / "baton.log", "wb")
    proc = subprocess.Popen(["ip", "netns", "exec", node, BATON, "run", "-c", str(d / "bootstrap.yaml"),
                             "--concurrency", "1", "--runtime-dir", str(d / "run"), "--intercept",
                             "-m", "TPROXY", "-z", "15006", "-b", "8080", "-i", ""],
                            stdout=log, stderr=subprocess.STDOUT)
    topology["procs"].append(proc)
    wait_until(lambda: "intercept: applied" in (d / "baton.log").read_text() or proc.poll() is not None,
               30, "the capture rules")
    assert proc.poll() is None, (d / "baton.log").read_text()
    assert client(topology, topology["node_v4"], 8080, ns="srv") == {"ok": "match"}
    assert client(topology, topology["node_v6"], 8080, ns="srv") == {"ok": "match"}
    stats = sh("ip", "netns", "exec", node, "curl", "-s", "http://127.0.0.1:19901/stats").stdout
    assert "tcp.inbound.downstream_cx_total: 2" in stats, stats
    # Port 8025 is not in -b: it reaches the app directly, without Baton.
    assert client(topology, topology["node_v4"], 8025, "banner", ns="srv") == {"ok": "220 smtp.example ESMTP ready\r\n"}
    assert "tcp.inbound.downstream_cx_total: 2" in sh("ip", "netns", "exec", node, "curl", "-s",
                                                        "http://127.0.0.1:19901/stats").stdout


def governed_bootstrap() -> dict:
    """Captured connections are sniffed: HTTP/1.x goes through an http_connection_manager
    whose route adds a header, on its way to the original destination; anything else is
    relayed byte-exact by tcp_proxy."""
    listener_filters = [
        {"name": "envoy.filters.listener.original_dst", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
        {"name": "envoy.filters.listener.http_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}]
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_http",
        "route_config": {"name": "governed", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"},
                        "request_headers_to_add": [{"header": {"key": "x-governed-by", "value": "baton"}}]}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}
    listeners = [{"name": f"outbound_{name}", "address": {"socket_address": {"address": addr, "port_value": CAPTURE}},
                  "use_original_dst": True, "listener_filters": listener_filters,
                  "listener_filters_timeout": "0.5s", "continue_on_listener_filters_timeout": True,
                  "filter_chains": [
                      {"filter_chain_match": {"application_protocols": ["http/1.0", "http/1.1"]}, "filters": [hcm]},
                      {"filters": [tcp]}]}
                 for name, addr in (("v4", "127.0.0.1"), ("v6", "::1"))]
    return {"static_resources": {"listeners": listeners, "clusters": [
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
         "connect_timeout": "2s"}]}}


def test_http_is_governed_while_other_traffic_passes_through(topology):
    """Issue 6: captured HTTP gets the route's header rewrite; a raw binary protocol and a
    server-first one on the same capture pass through byte-exact."""
    d = topology["dir"]
    start_baton_in_node(topology, governed_bootstrap())
    for addr in (topology["v4"], topology["v6"]):
        answer = client(topology, addr, 8082, "http")["ok"]
        status, _, head = answer.partition("\n")
        assert status == "HTTP/1.1 200 OK", answer
        lines = [line.lower() for line in head.split("\r\n")]
        assert lines[0] == "get /hello http/1.1", answer
        assert "x-governed-by: baton" in lines, answer
        assert "x-from: client" in lines and "host: app.example" in lines, answer
        assert client(topology, addr, 8080) == {"ok": "match"}
        assert client(topology, addr, 8025, "banner") == {"ok": "220 smtp.example ESMTP ready\r\n"}
    assert "Traceback" not in (d / "baton.log").read_text()
