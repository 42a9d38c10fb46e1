"""What `baton intercept` captures: one plain dataclass, validated into one-line errors.

Field names follow istio-iptables flags where it has one (operators know them):

    mode                        -m --istio-inbound-interception-mode   REDIRECT | TPROXY
    proxy_port                  -p --envoy-port                        outbound capture port (15001)
    inbound_capture_port        -z --inbound-capture-port              (15006)
    proxy_uid / proxy_gid       -u / -g                                never captured (Baton's own)
    outbound_ip_ranges_include  -i --istio-service-cidr                "*" = every address
    outbound_ip_ranges_exclude  -x --istio-service-exclude-cidr
    outbound_ports_include      -q --istio-outbound-ports              captured whatever the address
    outbound_ports_exclude      -o --istio-local-outbound-ports-exclude
    inbound_ports_include       -b --istio-inbound-ports               "*" = every port
    inbound_ports_exclude       -d --istio-local-exclude-ports
    tproxy_mark                 -t --istio-inbound-tproxy-mark         (1337)
    tproxy_route_table          -r --istio-inbound-tproxy-route-table  (133)

And Baton's own: proxy_mark (the SO_MARK Baton sets on its upstream sockets, never captured; in
TPROXY mode it must not share a bit with tproxy_mark), tproxy_rule_priority, ipv6, backend, and
default_policy: "allow" captures everything that is not excluded (the include lists default to
"*"), "deny" captures only what is listed (they default to empty). Under "allow",
inbound_ports_exclude defaults to 22: with REDIRECT a captured port refuses connections while
nothing listens on the capture port, and SSH must survive that.

Outbound, as in istio-iptables: a TCP connection is captured when its destination address is in
the included ranges OR its destination port is in the included ports, and neither its address nor
its port is excluded. Inbound: a TCP connection to a local address whose port is included and not
excluded.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import pwd
from dataclasses import dataclass, field
from typing import Iterable

MODES = ("REDIRECT", "TPROXY")
BACKENDS = ("nft", "iptables", "iptables-nft", "iptables-legacy")
POLICIES = ("allow", "deny")
ALL = "*"
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}


class InterceptConfigError(ValueError):
    """A setting is wrong; str() is one line naming the flag."""


@dataclass
class InterceptConfig:
    mode: str = "REDIRECT"
    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    proxy_uid: tuple = ()
    proxy_gid: tuple = ()
    default_policy: str = "allow"
    # None: the default of default_policy ("*" for allow, nothing for deny)
    outbound_ip_ranges_include: tuple | None = None
    outbound_ip_ranges_exclude: tuple = ()
    outbound_ports_include: tuple = ()
    outbound_ports_exclude: tuple = ()
    inbound_ports_include: tuple | None = None
    # None: "22" under allow (SSH stays reachable even when Baton is down), nothing under deny
    inbound_ports_exclude: tuple | None = None
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    tproxy_rule_priority: int = 100
    proxy_mark: int = 0x1000
    ipv6: bool = True
    backend: str = "nft"
    # set by normalized(): the values are parsed and checked (not compared, not shown)
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: dict) -> "InterceptConfig":
        """From a dict whose keys are field names or flag names (dashes or underscores);
        list values may be lists or comma-separated strings."""
        names = {f.name for f in dataclasses.fields(cls)} - {"checked"}
        kwargs = {}
        for key, value in data.items():
            name = key.lstrip("-").replace("-", "_")
            if name not in names:
                raise InterceptConfigError(f"unknown interception setting {key!r}")
            kwargs[name] = value
        return cls(**kwargs).normalized()

    def normalized(self) -> "InterceptConfig":
        """A copy with every value parsed and checked: raises InterceptConfigError (one line).
        A config that normalized() returned is returned as is."""
        if self.checked:
            return self
        c = dataclasses.replace(self)
        c.mode = _choice("--inbound-interception-mode", c.mode, MODES, upper=True)
        c.default_policy = _choice("--default-policy", c.default_policy, POLICIES)
        c.backend = _choice("--backend", c.backend, BACKENDS)
        c.proxy_port = _port("--proxy-port", c.proxy_port)
        c.inbound_capture_port = _port("--inbound-capture-port", c.inbound_capture_port)
        c.proxy_uid = tuple(_ids("--proxy-uid", c.proxy_uid, _uid))
        c.proxy_gid = tuple(_ids("--proxy-gid", c.proxy_gid, _gid))
        c.tproxy_mark = _mark("--inbound-tproxy-mark", c.tproxy_mark)
        c.proxy_mark = _mark("--proxy-mark", c.proxy_mark)
        c.tproxy_route_table = _int("--inbound-tproxy-route-table", c.tproxy_route_table, 1, 0xFFFFFFFF)
        if c.tproxy_route_table in RESERVED_TABLES:
            raise InterceptConfigError(
                f"--inbound-tproxy-route-table {c.tproxy_route_table} is the kernel's "
                f"'{RESERVED_TABLES[c.tproxy_route_table]}' table; pick another (default 133)")
        c.tproxy_rule_priority = _int("--tproxy-rule-priority", c.tproxy_rule_priority, 1, 32765)
        c.ipv6 = _bool("--ipv6", c.ipv6)
        default = (ALL,) if c.default_policy == "allow" else ()
        if c.outbound_ip_ranges_include is None:
            c.outbound_ip_ranges_include = default
        if c.inbound_ports_include is None:
            c.inbound_ports_include = default
        if c.inbound_ports_exclude is None:
            c.inbound_ports_exclude = ("22",) if c.default_policy == "allow" else ()
        c.outbound_ip_ranges_include = _ranges("--outbound-ip-ranges-include",
                                               c.outbound_ip_ranges_include, c.ipv6)
        c.outbound_ip_ranges_exclude = _ranges("--outbound-ip-ranges-exclude",
                                               c.outbound_ip_ranges_exclude, c.ipv6, star=False)
        c.outbound_ports_include = _ports("--outbound-ports-include", c.outbound_ports_include)
        c.outbound_ports_exclude = _ports("--outbound-ports-exclude", c.outbound_ports_exclude,
                                          star=False)
        c.inbound_ports_include = _ports("--inbound-ports-include", c.inbound_ports_include)
        c.inbound_ports_exclude = _ports("--inbound-ports-exclude", c.inbound_ports_exclude,
                                         star=False)
        if c.mode == "TPROXY":
            shared = c.proxy_mark & c.tproxy_mark
            if shared:
                raise InterceptConfigError(
                    f"--proxy-mark {c.proxy_mark:#x} shares bits {shared:#x} with "
                    f"--inbound-tproxy-mark {c.tproxy_mark:#x}: Baton's own upstream packets would "
                    f"match the TPROXY fwmark rule and loop back to Baton; use disjoint bits "
                    f"(e.g. --proxy-mark {_free_bit(c.tproxy_mark):#x})")
        c.checked = True
        return c

    # ---- derived views used by the rule generators ------------------------------------------

    def addresses(self, which: str, version: int) -> tuple[list, list]:
        """outbound_ip_ranges_<which> for IP version 4 or 6, split as (networks, hosts):
        networks are collapsed ip_network objects shorter than a host ("*" becomes 0.0.0.0/0 or
        ::/0), hosts are ip_address objects, kept apart (and not merged into networks) so that
        each can be deleted again by value and large host lists load as a plain hash set."""
        cache = self.__dict__.setdefault("_addresses", {})
        key = (which, tuple(getattr(self, f"outbound_ip_ranges_{which}")))
        if key not in cache:
            split = {4: ([], []), 6: ([], [])}
            for v in key[1]:
                if v == ALL:
                    split[4][0].append(ipaddress.ip_network("0.0.0.0/0"))
                    split[6][0].append(ipaddress.ip_network("::/0"))
                elif "/" not in v:
                    a = ipaddress.ip_address(v)
                    split[a.version][1].append(a)
                else:
                    n = ipaddress.ip_network(v)
                    if n.prefixlen == n.max_prefixlen:
                        split[n.version][1].append(n.network_address)
                    else:
                        split[n.version][0].append(n)
            cache[key] = {ver: (list(ipaddress.collapse_addresses(nets)), list(dict.fromkeys(hosts)))
                          for ver, (nets, hosts) in split.items()}
        return cache[key][version]

    def port_ranges(self, attr: str) -> list[tuple[int, int]]:
        """Merged (first, last) port ranges of a ports setting; "*" becomes (0, 65535)."""
        spans = []
        for v in getattr(self, attr):
            spans.append((0, 65535) if v == ALL else _span(v))
        return _merge(spans)

    @property
    def captures_outbound(self) -> bool:
        return bool(self.outbound_ip_ranges_include or self.outbound_ports_include)

    @property
    def captures_inbound(self) -> bool:
        return bool(self.inbound_ports_include)

    def summary(self) -> str:
        out = ("off" if not self.captures_outbound else
               f"-> :{self.proxy_port} (ranges {_show(self.outbound_ip_ranges_include)}, "
               f"ports {_show(self.outbound_ports_include)}; excluded ranges "
               f"{_show(self.outbound_ip_ranges_exclude)}, ports {_show(self.outbound_ports_exclude)})")
        inb = ("off" if not self.captures_inbound else
               f"-> :{self.inbound_capture_port} (ports {_show(self.inbound_ports_include)}; "
               f"excluded {_show(self.inbound_ports_exclude)})")
        skip = [f"mark {self.proxy_mark:#x}"]
        if self.proxy_uid:
            skip.append("uid " + ",".join(map(str, self.proxy_uid)))
        if self.proxy_gid:
            skip.append("gid " + ",".join(map(str, self.proxy_gid)))
        text = (f"mode {self.mode}, {'IPv4+IPv6' if self.ipv6 else 'IPv4 only'}; outbound {out}; "
                f"inbound {inb}; never captured: {' '.join(skip)}, loopback")
        if self.mode == "TPROXY":
            text += (f"; fwmark {self.tproxy_mark:#x} -> table {self.tproxy_route_table} "
                     f"(pref {self.tproxy_rule_priority})")
        return text


# ---- parsing helpers ----------------------------------------------------------------------------


def split_list(value) -> list[str]:
    """'a,b, c' or ['a', 'b,c'] -> ['a', 'b', 'c']; None or '' -> []."""
    if value is None:
        return []
    if isinstance(value, (str, int)):
        value = [value]
    out = []
    for item in value:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                out.append(part)
    return out


def parse_int(text) -> int:
    """1337, '1337', '0x539'."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        return text
    return int(str(text).strip(), 0)


def _choice(flag, value, choices, upper=False):
    v = str(value).strip()
    v = v.upper() if upper else v.lower()
    if v not in choices:
        raise InterceptConfigError(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return v


def _int(flag, value, lo, hi):
    try:
        v = parse_int(value)
    except (TypeError, ValueError):
        raise InterceptConfigError(f"{flag}: {value!r} is not an integer") from None
    if not lo <= v <= hi:
        raise InterceptConfigError(f"{flag}: {v} is out of range {lo}..{hi}")
    return v


def _port(flag, value):
    return _int(flag, value, 1, 65535)


def _mark(flag, value):
    try:
        v = parse_int(value)
    except (TypeError, ValueError):
        raise InterceptConfigError(f"{flag}: {value!r} is not an integer (e.g. 1337 or 0x539)") from None
    if not 1 <= v <= 0xFFFFFFFF:
        raise InterceptConfigError(f"{flag}: {value!r} must be a non-zero 32-bit mark")
    return v


def _bool(flag, value):
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InterceptConfigError(f"{flag}: {value!r} is not a boolean")


def _uid(text: str) -> int:
    try:
        return parse_int(text)
    except ValueError:
        return pwd.getpwnam(text).pw_uid


def _gid(text: str) -> int:
    try:
        return parse_int(text)
    except ValueError:
        return grp.getgrnam(text).gr_gid


def _ids(flag, value, lookup) -> Iterable[int]:
    seen = []
    for item in split_list(value):
        try:
            v = lookup(item)
        except KeyError:
            raise InterceptConfigError(f"{flag}: no such {'user' if 'uid' in flag else 'group'} {item!r}") from None
        if not 0 <= v <= 0xFFFFFFFE:
            raise InterceptConfigError(f"{flag}: {v} is out of range")
        if v not in seen:
            seen.append(v)
    return seen


def _ranges(flag, value, ipv6, star=True) -> tuple:
    out = []
    for item in split_list(value):
        if item == ALL:
            if not star:
                raise InterceptConfigError(f"{flag}: '*' is not allowed here (it would exclude everything)")
            out.append(ALL)
            continue
        try:
            net = ipaddress.ip_address(item) if "/" not in item else ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            if "has host bits set" in str(exc):
                fixed = ipaddress.ip_network(item, strict=False)
                raise InterceptConfigError(f"{flag}: {item} has host bits set (did you mean {fixed}?)") from None
            raise InterceptConfigError(f"{flag}: {item!r} is not an IP address or CIDR") from None
        if net.version == 6 and not ipv6:
            raise InterceptConfigError(f"{flag}: {item} is an IPv6 range but IPv6 is off (--no-ipv6)")
        if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and \
                net.prefixlen == net.max_prefixlen:
            net = net.network_address          # 10.1.2.3/32 -> 10.1.2.3
        out.append(str(net))
    if ALL in out:
        return (ALL,)
    return tuple(dict.fromkeys(out))


def _span(text: str) -> tuple[int, int]:
    if "-" in text:
        a, b = text.split("-", 1)
        lo, hi = int(a), int(b)
    else:
        lo = hi = int(text)
    return lo, hi


def _ports(flag, value, star=True) -> tuple:
    out = []
    for item in split_list(value):
        if item == ALL:
            if not star:
                raise InterceptConfigError(f"{flag}: '*' is not allowed here (it would exclude every port)")
            out.append(ALL)
            continue
        try:
            lo, hi = _span(item)
        except ValueError:
            raise InterceptConfigError(f"{flag}: {item!r} is not a port or a port range (8000-8100)") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535) or lo > hi:
            raise InterceptConfigError(f"{flag}: {item!r} is not a port range within 1-65535")
        out.append(str(lo) if lo == hi else f"{lo}-{hi}")
    if ALL in out:
        return (ALL,)
    return tuple(dict.fromkeys(out))


def _merge(spans):
    spans = sorted(spans)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [tuple(m) for m in merged]


def _free_bit(mark: int) -> int:
    bit = 0x1000
    while bit & mark and bit < 0x80000000:
        bit <<= 1
    return bit


def _show(values) -> str:
    if not values:
        return "none"
    if len(values) > 4:
        return ",".join(values[:3]) + f",... ({len(values)})"
    return ",".join(values)
