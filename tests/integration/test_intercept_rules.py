"""`baton intercept` rules in real network namespaces: what gets captured, what does not, and that
apply / remove leave exactly what they should.

Topology (every name carries a random pid-tagged prefix; addresses exist only in these namespaces):

    [cli]  10.200.2.2, fd00:200:2::2 ──veth── [node] 10.200.2.1, fd00:200:2::1
                                               [node] 10.200.1.1, fd00:200:1::1 ──veth── [srv] 10.200.1.2, 10.200.1.3, fd00:200:1::2

`node` runs the rules, plain Python listeners on the capture ports (standing in for Baton), and
an "app" listening on 8080 and 9090. `srv` answers b"srv" on 80 and 81: a connection that is not
captured reaches it. Each test leaves `node` exactly as it found it (checked after every test).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from .netns import Listener, Topology, connect, connect_as_uid, skip_reason, sweep_stale

SKIP = skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

if SKIP is None:
    from baton.tproxy import intercept
    from baton.tproxy.config import InterceptConfig

A4, A6 = socket.AF_INET, socket.AF_INET6
PROXY_MARK = 0x1000
PROXY_UID = 1337


def _cli_module() -> str:
    """`baton intercept` once supervisor/cli.py wires it, else the module alone."""
    try:
        from baton.supervisor import cli
        if "intercept" in getattr(cli, "COMMANDS", {}):
            return "baton.supervisor.cli"
    except Exception:  # noqa: BLE001
        pass
    return "baton.tproxy.cli"


def baton(ns, *args) -> subprocess.CompletedProcess:
    return ns.exec(sys.executable, "-m", _cli_module(), "intercept", *args, check=False)


def _normalize_legacy(saved: str) -> str:
    """iptables-legacy-save without comments/counters and without tables that hold nothing
    (legacy tables, once created in a namespace, cannot be deleted)."""
    out, block = [], []
    for line in saved.splitlines():
        if line.startswith("#"):
            continue
        line = re.sub(r"\[\d+:\d+\]", "", line).strip()
        block.append(line)
        if line == "COMMIT":
            if any(l.startswith("-A") or (l.startswith(":") and " ACCEPT" not in l) for l in block):
                out += block
            block = []
    return "\n".join(out)


def snapshot(ns) -> dict:
    snap = ns.snapshot()
    snap["legacy4"] = _normalize_legacy(ns.exec("iptables-legacy-save", check=False).stdout)
    snap["legacy6"] = _normalize_legacy(ns.exec("ip6tables-legacy-save", check=False).stdout)
    return snap


@pytest.fixture(scope="module")
def topo():
    sweep_stale()
    with Topology() as t:
        node, srv, cli = t.add("node"), t.add("srv"), t.add("cli")
        t.link(node, srv, ["10.200.1.1/24", "fd00:200:1::1/64"],
               ["10.200.1.2/24", "10.200.1.3/24", "fd00:200:1::2/64"])
        t.link(node, cli, ["10.200.2.1/24", "fd00:200:2::1/64"], ["10.200.2.2/24", "fd00:200:2::2/64"])
        srv.default_route("10.200.1.1", "fd00:200:1::1")
        cli.default_route("10.200.2.1", "fd00:200:2::1")
        listeners = [Listener(srv, f, p, reply=b"srv") for f in (A4, A6) for p in (80, 81)]
        listeners += [Listener(node, f, p, reply=b"app") for f in (A4, A6) for p in (8080, 9090)]
        try:
            yield SimpleNamespace(node=node, srv=srv, cli=cli, baseline=snapshot(node))
        finally:
            for listener in listeners:
                listener.close()


@pytest.fixture
def node(topo):
    """The node namespace; after the test, remove everything and check it is as it was."""
    yield topo.node
    topo.node.call(intercept.remove)
    assert snapshot(topo.node) == topo.baseline, "the namespace differs from before apply"


@pytest.fixture
def capture(node):
    """capture(port, transparent) -> (v4 listener, v6 listener) on the node, closed after."""
    made = []

    def make(port, transparent=False):
        pair = (Listener(node, A4, port, transparent=transparent),
                Listener(node, A6, port, transparent=transparent))
        made.extend(pair)
        return pair

    yield make
    for listener in made:
        listener.close()


EXCLUSIONS = ["-x", "10.200.1.3/32", "-o", "81", "-u", str(PROXY_UID), "--proxy-mark", hex(PROXY_MARK)]


def _assert_not_captured(topo):
    """Excluded address, excluded port, Baton's mark, Baton's uid: all reach srv."""
    node = topo.node
    assert connect(node, "10.200.1.3", 80) == b"srv", "excluded CIDR was captured"
    assert connect(node, "10.200.1.2", 81) == b"srv", "excluded port was captured"
    assert connect(node, "fd00:200:1::2", 81) == b"srv", "excluded port (v6) was captured"
    assert connect(node, "10.200.1.2", 80, mark=PROXY_MARK) == b"srv", "proxy mark was captured (loop)"
    assert connect(node, "fd00:200:1::2", 80, mark=PROXY_MARK) == b"srv", "proxy mark (v6) was captured"
    assert connect_as_uid(node, PROXY_UID, "10.200.1.2", 80) == b"srv", "proxy uid was captured (loop)"
    # loopback: a local connection to the app is neither outbound nor inbound capture
    assert connect(node, "10.200.2.1", 8080) == b"app", "loopback traffic was captured"


def test_redirect_outbound_original_dst_and_loop_avoidance(topo, node, capture):
    r = baton(node, "apply", "-m", "REDIRECT", "-b", "8080", *EXCLUSIONS)
    assert r.returncode == 0, r.stderr
    assert "applied" in r.stdout and "REDIRECT" in r.stdout
    out4, out6 = capture(15001)

    assert connect(node, "10.200.1.2", 80) == b"captured"
    assert connect(node, "fd00:200:1::2", 80) == b"captured"
    assert out4.wait(1)[0]["orig_dst"] == ("10.200.1.2", 80)
    assert out6.wait(1)[0]["orig_dst"] == ("fd00:200:1::2", 80)
    _assert_not_captured(topo)
    assert len(out4.accepted) == 1 and len(out6.accepted) == 1

    shown = baton(node, "show")
    assert shown.returncode == 0 and "table inet baton" in shown.stdout
    removed = baton(node, "remove")
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert connect(node, "10.200.1.2", 80) == b"srv"          # no longer captured


def test_redirect_inbound(topo, node, capture):
    r = baton(node, "apply", "-m", "REDIRECT", "-b", "8080", "-i", "")
    assert r.returncode == 0, r.stderr
    in4, in6 = capture(15006)
    assert connect(topo.cli, "10.200.2.1", 8080) == b"captured"
    assert connect(topo.cli, "fd00:200:2::1", 8080) == b"captured"
    got4, got6 = in4.wait(1)[0], in6.wait(1)[0]
    assert got4["orig_dst"] == ("10.200.2.1", 8080) and got4["peername"][0] == "10.200.2.2"
    assert got6["orig_dst"] == ("fd00:200:2::1", 8080) and got6["peername"][0] == "fd00:200:2::2"
    assert connect(topo.cli, "10.200.2.1", 9090) == b"app"           # port not included
    assert connect(node, "10.200.1.2", 80) == b"srv"                  # -i '': no outbound capture


def test_tproxy_inbound_and_local_outbound(topo, node, capture):
    # default-allow: every inbound port but 9090 is captured, every outbound address but the excluded
    r = baton(node, "apply", "-m", "TPROXY", "-d", "9090", *EXCLUSIONS)
    assert r.returncode == 0, r.stderr
    in4, in6 = capture(15006, transparent=True)
    out4, out6 = capture(15001, transparent=True)

    assert connect(topo.cli, "10.200.2.1", 8080) == b"captured"
    assert connect(topo.cli, "fd00:200:2::1", 8080) == b"captured"
    got4, got6 = in4.wait(1)[0], in6.wait(1)[0]
    assert got4["sockname"] == ("10.200.2.1", 8080) and got4["peername"][0] == "10.200.2.2"
    assert got6["sockname"] == ("fd00:200:2::1", 8080) and got6["peername"][0] == "fd00:200:2::2"
    assert connect(topo.cli, "10.200.2.1", 9090) == b"app"           # inbound-excluded port

    assert connect(node, "10.200.1.2", 80) == b"captured"             # OUTPUT mark + reroute via lo
    assert connect(node, "fd00:200:1::2", 80) == b"captured"
    assert out4.wait(1)[0]["sockname"] == ("10.200.1.2", 80)
    assert out6.wait(1)[0]["sockname"] == ("fd00:200:1::2", 80)
    # with every inbound port captured, replies of uncaptured outbound flows still get home
    _assert_not_captured(topo)
    assert len(in4.accepted) == 1 and len(out4.accepted) == 1
    rules = node.exec("ip", "rule").stdout
    assert re.search(r"fwmark 0x539/0x539 lookup 133 proto 155", rules), rules


def test_mark_collision_refused(node):
    r = baton(node, "apply", "-m", "TPROXY", "--proxy-mark", "0x1", "-t", "0x3")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "shares bits 0x1" in r.stderr and "Traceback" not in r.stderr
    assert node.exec("nft", "list", "ruleset").stdout == ""


@pytest.mark.parametrize("backend", ["nft", "iptables", "iptables-legacy"])
def test_apply_is_idempotent_and_replaces_leftovers(topo, node, capture, backend):
    cfg = InterceptConfig(mode="TPROXY", backend=backend, inbound_ports_include="8080",
                          outbound_ip_ranges_exclude="10.200.1.3/32", proxy_uid=str(PROXY_UID))
    node.call(intercept.apply, cfg)
    once = snapshot(node)
    node.call(intercept.apply, cfg)
    assert snapshot(node) == once, "apply twice differs from apply once"

    # a crashed run of another configuration, with extra debris, then the next start
    other = InterceptConfig(mode="REDIRECT", backend=backend, ipv6=False, proxy_port=16001,
                            outbound_ip_ranges_exclude="10.9.0.0/16")
    node.call(intercept.apply, other)
    node.exec("ip", "rule", "add", "fwmark", "0x4/0x4", "lookup", "200", "pref", "50", "proto", "155")
    node.exec("ip", "route", "add", "local", "default", "dev", "lo", "table", "200", "proto", "155")
    if backend == "nft":
        node.exec("nft", "add", "chain", "inet", "baton", "debris")
    else:
        tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables"
        node.exec(tool, "-t", "nat", "-N", "BATON_DEBRIS")
        node.exec(tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7", "-j", "BATON_DEBRIS")
    node.call(intercept.apply, cfg)
    assert snapshot(node) == once, "leftovers of a crashed run were not replaced"

    # and the rules still work
    in4, _ = capture(15006, transparent=True)
    assert connect(topo.cli, "10.200.2.1", 8080) == b"captured"
    assert in4.wait(1)[0]["sockname"] == ("10.200.2.1", 8080)

    if backend != "nft":      # switching backend takes the other one's rules away
        node.call(intercept.apply, InterceptConfig(backend="nft"))
        assert "BATON" not in node.exec("iptables-save").stdout + node.exec("iptables-legacy-save").stdout
        assert node.exec("ipset", "list", "-n").stdout.strip() == ""


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_update_set_in_place(node, capture, backend):
    cfg = InterceptConfig(mode="REDIRECT", backend=backend, inbound_ports_include="")
    node.call(intercept.apply, cfg)
    out4, out6 = capture(15001)

    def rules_text():
        if backend == "nft":      # with handles: a reload would renumber them
            return node.exec("nft", "-a", "list", "chain", "inet", "baton", "output").stdout
        return node.exec("iptables-save", "-t", "nat").stdout.split("\n", 1)[1].rsplit("# Completed", 1)[0]

    before = rules_text()
    assert connect(node, "10.200.1.2", 80) == b"captured"
    r = node.call(intercept.update_set, "outbound-ip-ranges-exclude", ["10.200.1.2", "fd00:200:1::/64"])
    assert r["added"] == 2
    assert connect(node, "10.200.1.2", 80) == b"srv"
    assert connect(node, "fd00:200:1::2", 80) == b"srv"
    node.call(intercept.update_set, "outbound-ip-ranges-exclude", [], ["10.200.1.2"])
    assert connect(node, "10.200.1.2", 80) == b"captured"
    assert connect(node, "fd00:200:1::2", 80) == b"srv"
    assert rules_text() == before, "the rules were reloaded"
    assert len(out4.wait(2)) == 2 and not out6.accepted


def test_10k_entry_set_applies_fast(topo, node, capture, capsys):
    hosts = [str(ipaddress.IPv4Address(0x0A640000 + 2 * i)) for i in range(9_999)] + ["10.200.1.2"]
    cfg = InterceptConfig(mode="REDIRECT", outbound_ip_ranges_exclude=hosts, inbound_ports_include="")
    t0 = time.monotonic()
    result = node.call(intercept.apply, cfg)
    total = time.monotonic() - t0
    capture(15001)
    assert connect(node, "10.200.1.2", 80) == b"srv"              # the set is live
    more = [str(ipaddress.IPv4Address(0x0B000000 + 2 * i)) for i in range(10_000)]
    upd = node.call(intercept.update_set, "outbound-ip-ranges-exclude", more)
    ipt = node.call(intercept.apply, InterceptConfig(mode="REDIRECT", backend="iptables",
                                                     outbound_ip_ranges_exclude=hosts))
    with capsys.disabled():
        print(f"\n10,000-entry set: nft -f {result['nft_seconds'] * 1000:.0f} ms "
              f"(whole apply {total * 1000:.0f} ms); nft add 10,000 elements in place "
              f"{upd['seconds'] * 1000:.0f} ms; ipset restore {ipt['ipset_seconds'] * 1000:.0f} ms")
    assert result["nft_seconds"] < 1.0 and upd["seconds"] < 1.0 and ipt["ipset_seconds"] < 1.0
