"""`baton intercept` without touching the system: configuration (istio-iptables flag names,
validation as one-line errors, mark bits) and the generated nft / iptables-restore / ipset text."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from baton.tproxy import cli, iptables, routing, rules
from baton.tproxy.config import InterceptConfig, InterceptConfigError


def parse(*argv) -> InterceptConfig:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    return cli.config_from_args(parser.parse_args(["intercept", "apply", *argv]))


def nft(**kw) -> str:
    return rules.render_nft(InterceptConfig(**kw))


# ---- configuration ------------------------------------------------------------------------------


def test_defaults_follow_istio():
    c = InterceptConfig().normalized()
    assert (c.mode, c.proxy_port, c.inbound_capture_port) == ("REDIRECT", 15001, 15006)
    assert (c.tproxy_mark, c.tproxy_route_table) == (1337, 133)
    assert c.outbound_ip_ranges_include == ("*",) and c.inbound_ports_include == ("*",)
    assert c.inbound_ports_exclude == ("22",)          # SSH survives a REDIRECT with Baton down
    assert c.proxy_mark & c.tproxy_mark == 0
    assert c.ipv6 and c.backend == "nft"


def test_istio_short_flags():
    c = parse("-m", "tproxy", "-p", "16001", "-z", "16006", "-u", "1337,1338", "-g", "1337",
              "-i", "10.0.0.0/8,fd00::/8", "-x", "10.1.0.0/16", "-q", "443", "-o", "22,8000-8100",
              "-b", "80,443", "-d", "15020", "-t", "0x400", "-r", "200")
    assert c.mode == "TPROXY" and c.proxy_port == 16001 and c.inbound_capture_port == 16006
    assert c.proxy_uid == (1337, 1338) and c.proxy_gid == (1337,)
    assert c.outbound_ip_ranges_include == ("10.0.0.0/8", "fd00::/8")
    assert c.outbound_ip_ranges_exclude == ("10.1.0.0/16",)
    assert c.outbound_ports_include == ("443",) and c.outbound_ports_exclude == ("22", "8000-8100")
    assert c.inbound_ports_include == ("80", "443") and c.inbound_ports_exclude == ("15020",)
    assert c.tproxy_mark == 0x400 and c.tproxy_route_table == 200


def test_istio_long_flag_aliases():
    c = parse("--istio-inbound-interception-mode", "TPROXY", "--envoy-port", "15001",
              "--istio-service-cidr", "*", "--istio-service-exclude-cidr", "169.254.169.254/32",
              "--istio-inbound-ports", "*", "--istio-local-exclude-ports", "22",
              "--istio-local-outbound-ports-exclude", "53", "--istio-outbound-ports", "3306",
              "--istio-inbound-tproxy-mark", "1337", "--istio-inbound-tproxy-route-table", "133",
              "--no-ipv6", "--backend", "iptables", "--default-policy", "deny")
    assert c.mode == "TPROXY" and c.outbound_ip_ranges_include == ("*",)
    assert c.outbound_ip_ranges_exclude == ("169.254.169.254",)
    assert c.inbound_ports_include == ("*",) and c.outbound_ports_include == ("3306",)
    assert not c.ipv6 and c.backend == "iptables" and c.default_policy == "deny"


def test_default_policy_deny_captures_only_what_is_listed():
    c = InterceptConfig(default_policy="deny").normalized()
    assert c.outbound_ip_ranges_include == () and c.inbound_ports_include == ()
    assert c.inbound_ports_exclude == ()
    assert not c.captures_outbound and not c.captures_inbound
    text = rules.render_nft(c)
    assert "elements" not in text.split("chain")[0].split("out4_include")[1].split("}")[0]
    c = InterceptConfig(default_policy="deny", outbound_ports_include="5432").normalized()
    assert c.captures_outbound and c.outbound_ip_ranges_include == ()
    # an explicit empty list turns a direction off under allow too
    assert not InterceptConfig(inbound_ports_include="").normalized().captures_inbound


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="TPROXY", proxy_mark=0x539), "shares bits 0x539"),
    (dict(mode="TPROXY", proxy_mark=0x3, tproxy_mark=0x1), "shares bits 0x1"),
    (dict(mode="bogus"), "--inbound-interception-mode: 'bogus' is not one of REDIRECT, TPROXY"),
    (dict(proxy_port=0), "--proxy-port: 0 is out of range"),
    (dict(inbound_capture_port="x"), "--inbound-capture-port: 'x' is not an integer"),
    (dict(tproxy_route_table=254), "the kernel's 'main' table"),
    (dict(tproxy_mark=0), "--inbound-tproxy-mark"),
    (dict(outbound_ip_ranges_exclude="10.1.2.3/8"), "host bits set (did you mean 10.0.0.0/8?)"),
    (dict(outbound_ip_ranges_include="not-an-ip"), "is not an IP address or CIDR"),
    (dict(outbound_ip_ranges_exclude="*"), "'*' is not allowed here"),
    (dict(ipv6=False, outbound_ip_ranges_exclude="fd00::/8"), "IPv6 is off"),
    (dict(outbound_ports_exclude="70000"), "not a port range within 1-65535"),
    (dict(inbound_ports_include="90-80"), "not a port range within 1-65535"),
    (dict(proxy_uid="no-such-user-hopefully"), "no such user"),
    (dict(backend="pf"), "--backend"),
])
def test_validation_errors_are_one_line(kwargs, message):
    with pytest.raises(InterceptConfigError) as err:
        InterceptConfig(**kwargs).normalized()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mark_bits_only_matter_in_tproxy_mode():
    InterceptConfig(mode="REDIRECT", proxy_mark=1337).normalized()       # no TPROXY mark in use
    with pytest.raises(InterceptConfigError, match="use disjoint bits"):
        InterceptConfig(mode="TPROXY", proxy_mark=1337).normalized()
    InterceptConfig(mode="TPROXY", proxy_mark=0x2, tproxy_mark=0x1).normalized()


def test_from_mapping_accepts_flag_and_field_names():
    c = InterceptConfig.from_mapping({"--proxy-port": "15002", "outbound_ports_exclude": [22, "80,443"],
                                      "proxy-mark": "0x2000"})
    assert c.proxy_port == 15002 and c.outbound_ports_exclude == ("22", "80", "443")
    assert c.proxy_mark == 0x2000
    with pytest.raises(InterceptConfigError, match="unknown interception setting"):
        InterceptConfig.from_mapping({"nope": 1})


def test_addresses_split_into_networks_and_hosts():
    c = InterceptConfig(outbound_ip_ranges_exclude="10.0.0.0/24,10.0.1.0/24,10.9.9.9,10.9.9.9/32,"
                        "fd00::/64,fd00::1").normalized()
    nets, hosts = c.addresses("exclude", 4)
    assert [str(n) for n in nets] == ["10.0.0.0/23"] and [str(h) for h in hosts] == ["10.9.9.9"]
    nets, hosts = c.addresses("exclude", 6)
    assert [str(n) for n in nets] == ["fd00::/64"] and [str(h) for h in hosts] == ["fd00::1"]
    assert c.port_ranges("inbound_ports_include") == [(0, 65535)]


# ---- nft text ----------------------------------------------------------------------------------


def test_nft_replaces_one_table_atomically():
    text = nft()
    head = text.splitlines()[:3]
    assert head == ["table inet baton {}", "delete table inet baton", "table inet baton {"]
    assert sum(ln.startswith("table ") for ln in text.splitlines()) == 2
    assert text.rstrip().endswith("}")
    assert rules.render_nft_remove() == "table inet baton {}\ndelete table inet baton\n"


def test_nft_redirect_mode():
    text = nft(proxy_uid="1337", proxy_gid="1337", outbound_ip_ranges_exclude="10.9.0.0/16",
               outbound_ports_exclude="22", inbound_ports_include="8080")
    assert "type nat hook output priority -100; policy accept;" in text
    assert "type nat hook prerouting priority dstnat; policy accept;" in text
    assert "meta mark & 0x00001000 == 0x00001000 return" in text
    assert "meta skuid 1337 return" in text and "meta skgid 1337 return" in text
    assert 'oifname "lo" return' in text and 'iifname "lo" return' in text
    assert "meta l4proto tcp ip daddr @out4_include redirect to :15001" in text
    assert "meta l4proto tcp ip6 daddr @out6_include_hosts redirect to :15001" in text
    assert "tcp dport @in_ports_include redirect to :15006" in text
    assert "fib daddr type != local return" in text
    assert "elements = { 10.9.0.0/16 }" in text and "elements = { 8080 }" in text
    assert "tproxy" not in text
    # loop avoidance comes before any capture rule
    out = text.split("chain output")[1]
    assert out.index("meta mark &") < out.index("redirect") and out.index("skuid") < out.index("redirect")


def test_nft_tproxy_mode():
    text = nft(mode="TPROXY", tproxy_mark=0x1, proxy_mark=0x100, inbound_ports_exclude="22")
    pre, out = text.split("chain prerouting")[1].split("chain output")
    assert "type filter hook prerouting priority mangle; policy accept;" in pre
    assert "socket transparent 1 meta mark set meta mark | 0x00000001 accept" in pre
    assert 'iifname "lo" meta mark & 0x00000001 == 0x00000001 tcp flags & (syn | ack) == syn tproxy to :15001' in pre
    assert "tcp flags & (syn | ack) == syn tcp dport @in_ports_include tproxy to :15006 meta mark set" in pre
    assert pre.index("socket transparent") < pre.index("tproxy to")
    # New connections always go through tproxy, even when a TIME_WAIT socket matches.
    assert "tcp flags & (syn | ack) != syn socket transparent 1" in pre
    assert "type route hook output priority mangle; policy accept;" in out
    assert "ct direction reply return" in out and "fib daddr type local return" in out
    assert "meta mark & 0x00000100 == 0x00000100 return" in out
    assert "meta l4proto tcp ip daddr @out4_include meta mark set meta mark | 0x00000001" in out
    assert "redirect" not in text


def test_nft_without_ipv6():
    text = nft(ipv6=False)
    assert "out6" not in text and "ip6 " not in text
    assert text.count("meta nfproto ipv6 return") == 2


def test_nft_star_and_large_lists_are_sets():
    hosts = [f"10.{i // 256}.{i % 256}.1" for i in range(3000)]
    text = nft(outbound_ip_ranges_exclude=hosts + ["192.168.0.0/16"])
    assert "elements = { 0.0.0.0/0 }" in text and "elements = { ::/0 }" in text
    hosts_set = text.split("set out4_exclude_hosts {")[1].split("}")[0]
    assert "flags interval" not in hosts_set and hosts_set.count(",") == 2999
    assert "elements = { 192.168.0.0/16 }" in text.split("set out4_exclude {")[1]
    assert text.count("@out4_exclude ") == 1 and text.count("@out4_exclude_hosts ") == 1


def test_nft_set_update_text():
    adds = rules.parse_set_update("outbound-ip-ranges-exclude", "10.0.0.0/8,10.1.2.3,fd00::/8")
    assert adds == {"out4_exclude": ["10.0.0.0/8"], "out4_exclude_hosts": ["10.1.2.3"],
                    "out6_exclude": ["fd00::/8"]}
    dels = rules.parse_set_update("inbound_ports_exclude", ["22", "8000-8100"])
    text = rules.render_nft_set_update(adds, dels)
    lines = text.splitlines()
    assert lines[0] == "delete element inet baton in_ports_exclude { 22, 8000-8100 }"
    assert "add element inet baton out4_exclude_hosts { 10.1.2.3 }" in lines
    with pytest.raises(InterceptConfigError, match="unknown set"):
        rules.parse_set_update("nope", "1")
    with pytest.raises(InterceptConfigError, match="not allowed"):
        rules.parse_set_update("outbound-ports-exclude", "*")


# ---- iptables / ipset text ---------------------------------------------------------------------


def test_iptables_redirect_chains():
    text = iptables.render_restore(InterceptConfig(proxy_uid="1337", inbound_ports_include="80"), 4)
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert ":BATON_OUTPUT - [0:0]" in lines and ":BATON_PREROUTING - [0:0]" in lines
    assert "-I OUTPUT 1 -p tcp -j BATON_OUTPUT" in lines
    assert "-I PREROUTING 1 -p tcp -j BATON_PREROUTING" in lines
    assert "-A BATON_OUTPUT -m mark --mark 0x1000/0x1000 -j RETURN" in lines
    assert "-A BATON_OUTPUT -m owner --uid-owner 1337 -j RETURN" in lines
    assert "-A BATON_OUTPUT -p tcp -m set --match-set baton_out4_include dst -j REDIRECT --to-ports 15001" in lines
    assert "-A BATON_PREROUTING -p tcp -m set --match-set baton_in_ports_include dst -j REDIRECT --to-ports 15006" in lines
    v6 = iptables.render_restore(InterceptConfig(), 6)
    assert "baton_out6_include" in v6 and "baton_out4" not in v6


def test_iptables_tproxy_chains():
    text = iptables.render_restore(InterceptConfig(mode="TPROXY"), 4)
    assert text.startswith("*mangle\n")
    assert "-A BATON_DIVERT -j MARK --set-xmark 0x539/0x539" in text
    assert "-A BATON_PREROUTING -p tcp ! --syn -m socket --transparent -j BATON_DIVERT" in text
    assert "-j TPROXY --on-port 15006 --tproxy-mark 0x539/0x539" in text
    assert "-i lo -p tcp -m mark --mark 0x539/0x539 -m tcp --tcp-flags SYN,ACK SYN -j TPROXY --on-port 15001" in text
    assert "-A BATON_OUTPUT -m conntrack --ctdir REPLY -j RETURN" in text
    assert "-A BATON_OUTPUT -m addrtype --dst-type LOCAL -j RETURN" in text


SAVED = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:BATON_OUTPUT - [0:0]
:BATON_OLD - [0:0]
-A OUTPUT -p tcp -j BATON_OUTPUT
-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -p tcp -j BATON_OUTPUT
-A BATON_OUTPUT -j RETURN
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:BATON_PREROUTING - [0:0]
-A PREROUTING -p tcp -j BATON_PREROUTING
COMMIT
"""


def test_iptables_replaces_leftovers_and_keeps_the_rest():
    text = iptables.render_restore(InterceptConfig(), 4, SAVED)
    blocks = {b.split("\n", 1)[0]: b for b in text.split("COMMIT\n") if b}
    nat, mangle = blocks["*nat"], blocks["*mangle"]
    assert nat.count("-D OUTPUT -p tcp -j BATON_OUTPUT") == 2
    assert "-F BATON_OLD" in nat and "-X BATON_OLD" in nat and "DOCKER" not in nat
    assert "-D PREROUTING -p tcp -j BATON_PREROUTING" in mangle and "-X BATON_PREROUTING" in mangle
    # the deletions come before the new jumps
    assert nat.index("-D OUTPUT") < nat.index("-I OUTPUT 1")
    removal = iptables.render_restore(None, 4, SAVED)
    assert "-I " not in removal and "-A " not in removal
    assert "-X BATON_OUTPUT" in removal and "-X BATON_OLD" in removal
    assert iptables.render_restore(None, 4, "") == ""


def test_ipset_text():
    text = iptables.render_ipset(InterceptConfig(outbound_ip_ranges_exclude="10.0.0.0/8,10.1.2.3"),
                                 existing={"baton_out4_exclude"})
    lines = text.splitlines()
    assert "create baton_out4_exclude hash:net family inet hashsize 1024 maxelem 65536" not in lines
    assert "add baton_out4_exclude-new 10.0.0.0/8" in lines and "add baton_out4_exclude-new 10.1.2.3" in lines
    assert "swap baton_out4_exclude-new baton_out4_exclude" in lines
    assert "add baton_out4_include-new 0.0.0.0/1" in lines and "add baton_out4_include-new 128.0.0.0/1" in lines
    assert "add baton_in_ports_include-new 0-65535" in lines
    assert "create baton_in_ports_include bitmap:port range 0-65535" in lines
    assert not any("_hosts" in ln for ln in lines)
    upd = iptables.render_ipset_update(rules.parse_set_update("outbound-ip-ranges-include", "10.1.2.3"),
                                       rules.parse_set_update("outbound-ports-exclude", "22"))
    assert upd.splitlines() == ["del -exist baton_out_ports_exclude 22",
                                "add -exist baton_out4_include 10.1.2.3"]


def test_routing_wanted():
    assert routing.wanted(InterceptConfig().normalized()) == ([], [])
    rules_, routes = routing.wanted(InterceptConfig(mode="TPROXY", ipv6=False).normalized())
    assert rules_ == [{"family": 2, "fwmark": 1337, "fwmask": 1337, "table": 133, "priority": 100}]
    assert routes == [{"family": 2, "dst": "0.0.0.0/0", "table": 133}]


# ---- the command ---------------------------------------------------------------------------------


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "baton.tproxy.cli", "intercept", *argv],
                          capture_output=True, text=True, timeout=30)


def test_cli_error_is_one_line_without_traceback():
    r = run_cli("apply", "-m", "TPROXY", "--proxy-mark", "1337")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("baton: intercept: --proxy-mark 0x539 shares bits")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_dry_run_prints_rules_and_changes_nothing():
    r = run_cli("apply", "-n", "-m", "TPROXY", "-x", "10.0.0.0/8")
    assert r.returncode == 0 and r.stdout.startswith("table inet baton {}")
    r = run_cli("apply", "--dry-run", "--backend", "iptables", "--no-ipv6")
    assert r.returncode == 0 and "# ipset restore" in r.stdout and "*nat" in r.stdout
    assert "ip6tables" not in r.stdout


def test_cli_without_action_is_usage():
    r = run_cli()
    assert r.returncode == 2 and "usage" in r.stderr
