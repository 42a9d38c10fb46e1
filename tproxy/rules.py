"""Sans-IO generation of the nftables ruleset for `baton intercept` (text in, text out).

Everything Baton installs lives in ONE table, `table inet baton`, replaced whole in one `nft -f`
transaction: the text first declares the table (a no-op if it exists), deletes it, then defines it
again, so applying twice is the same as once and a table left by a crashed run is replaced.
Removing is `delete table inet baton` under the same guard.

Address and port lists are named sets (interval sets, so CIDRs and port ranges work), always
declared, even empty, so that `update_set` can add or delete elements in place without touching
the rules.

REDIRECT mode (conntrack NAT, original destination by SO_ORIGINAL_DST):
    chain output      nat/output    -> `redirect to :proxy_port`
    chain prerouting  nat/prerouting (local destinations only) -> `redirect to :inbound_capture_port`

TPROXY mode (no NAT, original destination = the accepted socket's local address):
    chain prerouting  filter/prerouting priority mangle:
        packets of flows owned by a transparent socket  -> mark, accept (the socket shortcut)
        SYNs rerouted to lo by the output chain's mark  -> `tproxy to :proxy_port`
        SYNs to a local address and an included port    -> `tproxy to :inbound_capture_port`
    chain output      route/output priority mangle: outbound TCP to capture gets the TPROXY
        mark, so the fwmark rule (routing.py) sends it to the local table, i.e. through lo, where
        prerouting hands it to the transparent listener.

Never captured: Baton's own sockets (`meta mark & proxy_mark`, `meta skuid`/`skgid` of the proxy
uid/gid), loopback (oif/iif lo, local destinations outbound), excluded ranges and ports, non-TCP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import ALL, InterceptConfig, InterceptConfigError, _ports, _ranges

FAMILY = "inet"
TABLE = "baton"
QUALIFIED = f"{FAMILY} {TABLE}"
ELEMENTS_PER_LINE = 16


@dataclass(frozen=True)
class SetSpec:
    name: str        # the nft set (and, prefixed with "baton_", the ipset) name
    setting: str     # the setting (flag) it holds
    kind: str        # "ipv4" | "ipv6" | "port"
    hosts: bool = False   # single addresses (plain hash set) rather than networks (interval set)

    @property
    def nft_type(self) -> str:
        return {"ipv4": "ipv4_addr", "ipv6": "ipv6_addr", "port": "inet_service"}[self.kind]

    @property
    def version(self) -> int:
        return 6 if self.kind == "ipv6" else 4


# Address lists are held as two nft sets each: networks in an interval set, single addresses in
# a plain hash set (`*_hosts`). A 10,000-address list loads about twice as fast that way (nft
# does interval bookkeeping in user space), and a host can be deleted again by value. The
# iptables backend keeps one hash:net ipset per list (it takes both).
SETS = (
    SetSpec("out4_include", "outbound-ip-ranges-include", "ipv4"),
    SetSpec("out4_include_hosts", "outbound-ip-ranges-include", "ipv4", hosts=True),
    SetSpec("out6_include", "outbound-ip-ranges-include", "ipv6"),
    SetSpec("out6_include_hosts", "outbound-ip-ranges-include", "ipv6", hosts=True),
    SetSpec("out4_exclude", "outbound-ip-ranges-exclude", "ipv4"),
    SetSpec("out4_exclude_hosts", "outbound-ip-ranges-exclude", "ipv4", hosts=True),
    SetSpec("out6_exclude", "outbound-ip-ranges-exclude", "ipv6"),
    SetSpec("out6_exclude_hosts", "outbound-ip-ranges-exclude", "ipv6", hosts=True),
    SetSpec("out_ports_include", "outbound-ports-include", "port"),
    SetSpec("out_ports_exclude", "outbound-ports-exclude", "port"),
    SetSpec("in_ports_include", "inbound-ports-include", "port"),
    SetSpec("in_ports_exclude", "inbound-ports-exclude", "port"),
)
SETTINGS = tuple(dict.fromkeys(s.setting for s in SETS))


def sets_for(cfg: InterceptConfig, hosts: bool = True) -> list[SetSpec]:
    """The sets cfg uses; hosts=False merges the *_hosts sets into their network set (ipset)."""
    return [s for s in SETS if (cfg.ipv6 or s.kind != "ipv6") and (hosts or not s.hosts)]


def set_elements(cfg: InterceptConfig, spec: SetSpec, hosts: bool = True) -> list[str]:
    """The elements of one set as nft writes them: '10.0.0.0/8', 'fd00::/8', '10.1.2.3', '80',
    '8000-8100'. hosts=False: a network set also lists the single addresses (for ipset)."""
    if spec.kind == "port":
        attr = spec.setting.replace("-", "_")
        return [str(a) if a == b else f"{a}-{b}" for a, b in cfg.port_ranges(attr)]
    which = spec.setting.rsplit("-", 1)[1]          # include | exclude
    nets, addrs = cfg.addresses(which, spec.version)
    if spec.hosts:
        return [str(a) for a in addrs]
    return [str(n) for n in nets] + ([] if hosts else [str(a) for a in addrs])


def parse_set_update(setting: str, values, ipv6: bool = True) -> dict[str, list[str]]:
    """Elements for update_set: setting name (flag name, with or without dashes, or a set name)
    and values (list or comma-separated) -> {set name: [elements]}; raises InterceptConfigError."""
    setting = _setting_name(setting)
    flag = f"--{setting}"
    specs = {(s.kind, s.hosts): s.name for s in SETS if s.setting == setting}
    out: dict[str, list[str]] = {}
    if ("port", False) in specs:
        ports = _ports(flag, values, star=setting.endswith("include"))
        spans = [(0, 65535) if p == ALL else _span(p) for p in ports]
        if spans:
            out[specs[("port", False)]] = [str(a) if a == b else f"{a}-{b}" for a, b in spans]
        return out
    for item in _ranges(flag, values, ipv6, star=setting.endswith("include")):
        if item == ALL:
            parsed = [ipaddress.ip_network("0.0.0.0/0")] + ([ipaddress.ip_network("::/0")] if ipv6 else [])
        else:
            parsed = [ipaddress.ip_network(item)]
        for net in parsed:
            host = net.prefixlen == net.max_prefixlen
            name = specs[(f"ipv{net.version}", host)]
            out.setdefault(name, []).append(str(net.network_address) if host else str(net))
    return out


def _setting_name(setting: str) -> str:
    key = setting.lstrip("-").replace("_", "-")
    for s in SETS:
        if key == s.setting or key == s.name.replace("_", "-"):
            return s.setting
    raise InterceptConfigError(f"unknown set {setting!r}; one of: {', '.join(SETTINGS)}")


def _span(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    return int(a), int(b or a)


# ---- rendering ---------------------------------------------------------------------------------


def render_nft(cfg: InterceptConfig) -> str:
    """The whole `nft -f` input that (re)places table inet baton for cfg."""
    cfg = cfg.normalized()
    lines = [f"table {QUALIFIED} {{}}", f"delete table {QUALIFIED}", f"table {QUALIFIED} {{"]
    lines.append(f'\tcomment "baton intercept: mode {cfg.mode}"')
    for spec in sets_for(cfg):
        lines += _render_set(spec, set_elements(cfg, spec))
    if cfg.mode == "REDIRECT":
        lines += _redirect_chains(cfg)
    else:
        lines += _tproxy_chains(cfg)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_nft_remove() -> str:
    """Deletes table inet baton if it exists, and succeeds if it does not."""
    return f"table {QUALIFIED} {{}}\ndelete table {QUALIFIED}\n"


def render_nft_set_update(updates_add: dict[str, list[str]], updates_remove: dict[str, list[str]]) -> str:
    """One transaction: delete elements, then add elements (so a value in both ends up present)."""
    lines = []
    for verb, updates in (("delete", updates_remove), ("add", updates_add)):
        for name, elements in updates.items():
            for i in range(0, len(elements), 1024):
                chunk = ", ".join(elements[i:i + 1024])
                lines.append(f"{verb} element {QUALIFIED} {name} {{ {chunk} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def _render_set(spec: SetSpec, elements: list[str]) -> list[str]:
    lines = [f"\tset {spec.name} {{", f"\t\ttype {spec.nft_type}"]
    if not spec.hosts:
        lines.append("\t\tflags interval")
    if elements:
        chunks = [", ".join(elements[i:i + ELEMENTS_PER_LINE])
                  for i in range(0, len(elements), ELEMENTS_PER_LINE)]
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(chunks) + " }")
    lines.append("\t}")
    return lines


def _skip_own(cfg: InterceptConfig) -> list[str]:
    """Rules that return early for Baton's own traffic (loop avoidance)."""
    m = cfg.proxy_mark
    rules = [f'meta mark & {m:#010x} == {m:#010x} return comment "Baton\'s own sockets (SO_MARK)"']
    if cfg.proxy_uid:
        rules.append(f"meta skuid {_nft_set(cfg.proxy_uid)} return comment \"proxy uid\"")
    if cfg.proxy_gid:
        rules.append(f"meta skgid {_nft_set(cfg.proxy_gid)} return comment \"proxy gid\"")
    return rules


def _address_sets(cfg: InterceptConfig, which: str) -> list[tuple[str, str]]:
    """(nft address match, set name) for the v4 (and v6) network and host sets of a list."""
    out = []
    for v, match in (("4", "ip daddr"), ("6", "ip6 daddr")):
        if v == "6" and not cfg.ipv6:
            continue
        out += [(match, f"out{v}_{which}"), (match, f"out{v}_{which}_hosts")]
    return out


def _outbound_excludes(cfg: InterceptConfig) -> list[str]:
    rules = [f"{m} @{name} return" for m, name in _address_sets(cfg, "exclude")]
    rules.append("tcp dport @out_ports_exclude return")
    return rules


def _outbound_matches(cfg: InterceptConfig) -> list[str]:
    matches = [f"meta l4proto tcp {m} @{name}" for m, name in _address_sets(cfg, "include")]
    matches.append("tcp dport @out_ports_include")
    return matches


def _head(cfg: InterceptConfig) -> list[str]:
    rules = ["meta l4proto != tcp return"]
    if not cfg.ipv6:
        rules.append("meta nfproto ipv6 return")
    return rules


def _chain(name: str, base: str, rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{base}"] + [f"\t\t{r}" for r in rules] + ["\t}"]


def _redirect_chains(cfg: InterceptConfig) -> list[str]:
    out = _head(cfg) + _skip_own(cfg) + ['oifname "lo" return'] + _outbound_excludes(cfg)
    out += [f"{m} redirect to :{cfg.proxy_port}" for m in _outbound_matches(cfg)]
    pre = _head(cfg) + [
        'iifname "lo" return',
        "fib daddr type != local return",
        "tcp dport @in_ports_exclude return",
        f"tcp dport @in_ports_include redirect to :{cfg.inbound_capture_port}",
    ]
    return (_chain("output", "type nat hook output priority -100; policy accept;", out)
            + _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", pre))


def _tproxy_chains(cfg: InterceptConfig) -> list[str]:
    t = cfg.tproxy_mark
    set_mark = f"meta mark set meta mark | {t:#010x}"
    has_mark = f"meta mark & {t:#010x} == {t:#010x}"
    syn = "tcp flags & (syn | ack) == syn"
    pre = _head(cfg) + [
        # Not for SYNs: the socket lookup also finds TIME_WAIT sockets of Baton's transparent
        # listener, and a new connection reusing such a 4-tuple would skip tproxy and reach
        # the app directly (measured: 2-8% of new connections under load).
        f'tcp flags & (syn | ack) != syn socket transparent 1 {set_mark} accept '
        f'comment "flows of Baton\'s transparent sockets"',
        f'iifname "lo" {has_mark} {syn} tproxy to :{cfg.proxy_port} accept '
        f'comment "outbound, rerouted to lo by the output chain"',
        'iifname "lo" return',
        "fib daddr type != local return",
        "tcp dport @in_ports_exclude return",
        f"{syn} tcp dport @in_ports_include tproxy to :{cfg.inbound_capture_port} {set_mark} accept",
    ]
    out = _head(cfg) + ['ct direction reply return comment "replies of accepted connections"']
    out += _skip_own(cfg) + ['oifname "lo" return', "fib daddr type local return"]
    out += _outbound_excludes(cfg)
    out += [f"{m} {set_mark}" for m in _outbound_matches(cfg)]
    return (_chain("prerouting", "type filter hook prerouting priority mangle; policy accept;", pre)
            + _chain("output", "type route hook output priority mangle; policy accept;", out))


def _nft_set(values) -> str:
    values = list(values)
    return str(values[0]) if len(values) == 1 else "{ " + ", ".join(map(str, values)) + " }"
