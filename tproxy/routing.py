"""TPROXY policy routing through pyroute2, in the current network namespace.

    ip rule add fwmark <mark>/<mark> lookup <table> pref <priority> proto 155      (v4 and v6)
    ip route add local 0.0.0.0/0 dev lo table <table> proto 155
    ip -6 route add local ::/0 dev lo table <table> proto 155

Everything Baton adds carries the routing protocol number RTPROT_BATON (155; `ip rule` and
`ip route` print it as `proto 155`), so `remove()` deletes exactly Baton's rules and routes and
nothing else, without needing the configuration they were made from. `apply()` is idempotent:
it deletes Baton-tagged entries that the new configuration does not want and adds the missing
ones (EEXIST is fine).

pyroute2 is imported lazily: it costs ~0.25 s, and REDIRECT mode does not need routing at all.
"""

from __future__ import annotations

import errno
import socket

from .config import InterceptConfig

RTPROT_BATON = 155
FAMILIES = ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0"))


class RoutingError(RuntimeError):
    pass


def _iproute():
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise RoutingError("TPROXY mode needs pyroute2 (pip install pyroute2)") from None
    return IPRoute()


def wanted(cfg: InterceptConfig) -> tuple[list[dict], list[dict]]:
    """The rules and routes cfg needs (empty in REDIRECT mode), as comparable dicts."""
    if cfg.mode != "TPROXY":
        return [], []
    rules, routes = [], []
    for family, dst in FAMILIES:
        if family == socket.AF_INET6 and not cfg.ipv6:
            continue
        rules.append({"family": family, "fwmark": cfg.tproxy_mark, "fwmask": cfg.tproxy_mark,
                      "table": cfg.tproxy_route_table, "priority": cfg.tproxy_rule_priority})
        routes.append({"family": family, "dst": dst, "table": cfg.tproxy_route_table})
    return rules, routes


def preflight(cfg: InterceptConfig) -> None:
    """Fail before anything is changed if cfg's routing cannot be installed here."""
    if cfg.mode != "TPROXY":
        return
    ipr = _iproute()
    try:
        link = ipr.get_links(_lo_index(ipr))[0]
        if not link["flags"] & 1:                    # IFF_UP
            raise RoutingError("the loopback interface is down: bring it up first (ip link set lo up)")
    finally:
        ipr.close()


def current(ipr=None) -> tuple[list[dict], list[dict]]:
    """Baton-tagged rules and routes present now."""
    own = ipr is None
    ipr = ipr or _iproute()
    try:
        rules, routes = [], []
        for family, dst in FAMILIES:
            for r in ipr.get_rules(family=family):
                if r.get_attr("FRA_PROTOCOL") != RTPROT_BATON:
                    continue
                rules.append({"family": family, "fwmark": r.get_attr("FRA_FWMARK"),
                              "fwmask": r.get_attr("FRA_FWMASK"),
                              "table": r.get_attr("FRA_TABLE") or r["table"],
                              "priority": r.get_attr("FRA_PRIORITY")})
            for r in ipr.get_routes(family=family, match={"proto": RTPROT_BATON}):
                routes.append({"family": family, "dst": dst if r["dst_len"] == 0 else
                               f"{r.get_attr('RTA_DST')}/{r['dst_len']}",
                               "table": r.get_attr("RTA_TABLE") or r["table"]})
        return rules, routes
    finally:
        if own:
            ipr.close()


def apply(cfg: InterceptConfig) -> dict:
    """Make the Baton-tagged policy routing equal what cfg wants. Returns counts."""
    want_rules, want_routes = wanted(cfg)
    ipr = _iproute()
    try:
        have_rules, have_routes = current(ipr)
        removed = _delete(ipr, [r for r in have_rules if r not in want_rules],
                          [r for r in have_routes if r not in want_routes])
        lo = _lo_index(ipr) if want_routes else None
        added = 0
        for r in want_rules:
            if r not in have_rules:
                _ignore(errno.EEXIST, ipr.rule, "add", family=r["family"], fwmark=r["fwmark"],
                        fwmask=r["fwmask"], table=r["table"], priority=r["priority"],
                        protocol=RTPROT_BATON)
                added += 1
        for r in want_routes:
            if r not in have_routes:
                try:
                    _ignore(errno.EEXIST, ipr.route, "add", family=r["family"], dst=r["dst"],
                            type="local", oif=lo, table=r["table"], scope="host",
                            proto=RTPROT_BATON)
                except _netlink_error() as exc:
                    if exc.code == errno.ENETDOWN:
                        raise RoutingError("the loopback interface is down: bring it up first "
                                           "(ip link set lo up)") from None
                    raise
                added += 1
        return {"added": added, "removed": removed}
    except _netlink_error() as exc:
        raise RoutingError(f"policy routing: {exc}") from None
    finally:
        ipr.close()


def remove() -> int:
    """Delete every Baton-tagged rule and route (both families). Returns how many. Without
    pyroute2 there is nothing Baton can have installed: 0."""
    try:
        ipr = _iproute()
    except RoutingError:
        return 0
    try:
        rules, routes = current(ipr)
        return _delete(ipr, rules, routes)
    except _netlink_error() as exc:
        raise RoutingError(f"policy routing: {exc}") from None
    finally:
        ipr.close()


def show() -> str:
    try:
        rules, routes = current()
    except RoutingError:
        return ""
    lines = []
    for r in rules:
        v = "-6 " if r["family"] == socket.AF_INET6 else ""
        lines.append(f"ip {v}rule: pref {r['priority']} fwmark {r['fwmark']:#x}/{r['fwmask']:#x} "
                     f"lookup {r['table']} proto {RTPROT_BATON}")
    for r in routes:
        v = "-6 " if r["family"] == socket.AF_INET6 else ""
        lines.append(f"ip {v}route: local {r['dst']} dev lo table {r['table']} proto {RTPROT_BATON}")
    return "\n".join(lines)


def _delete(ipr, rules, routes) -> int:
    n = 0
    for r in rules:
        _ignore((errno.ENOENT, errno.ESRCH), ipr.rule, "del", family=r["family"], fwmark=r["fwmark"],
                fwmask=r["fwmask"], table=r["table"], priority=r["priority"], protocol=RTPROT_BATON)
        n += 1
    for r in routes:
        _ignore((errno.ENOENT, errno.ESRCH), ipr.route, "del", family=r["family"], dst=r["dst"],
                type="local", table=r["table"], scope="host", proto=RTPROT_BATON)
        n += 1
    return n


def _lo_index(ipr) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise RoutingError("no loopback interface in this network namespace")
    return found[0]


def _netlink_error():
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


def _ignore(codes, fn, *args, **kwargs):
    codes = codes if isinstance(codes, tuple) else (codes,)
    try:
        return fn(*args, **kwargs)
    except _netlink_error() as exc:
        if exc.code not in codes:
            raise
