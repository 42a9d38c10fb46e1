"""The iptables backend, for hosts without nftables: iptables-restore / ip6tables-restore text
with Baton's own chains (BATON_*), and ipset for the address and port lists.

Rendering is sans-IO (render_* take the config and, for the removal part, the current
`iptables-save` text); apply/remove/show run the tools in the CURRENT network namespace.

apply(cfg), per family, in ONE `iptables-restore --noflush` input per family:
    * declare the BATON_* chains the mode needs (declaring an existing chain flushes it),
    * delete every jump to a BATON_* chain found in `iptables-save` (a previous or crashed run),
      and flush + delete BATON_* chains the new mode does not use,
    * insert the jumps first in the built-in chains and fill the BATON_* chains.
The ipsets (baton_*) are filled first through `ipset restore`, each built aside and swapped in
atomically (`swap`), so a running rule never sees a half-filled set.

remove(): the same deletion without the additions, in every iptables variant present (legacy
and nft), then `ipset destroy` of the baton_* sets (a set is only destroyable once no rule
references it), then the policy routing. With iptables-nft, a `nat`/`mangle` table that Baton's
removal leaves with no rule, no user chain and ACCEPT policies is deleted too, so that
`nft list ruleset` is as before.

Set types: hash:net (family inet / inet6) for CIDRs (0.0.0.0/0 is written as the two /1 halves,
hash:net refuses /0), bitmap:port (0-65535) for ports, usable from both iptables and ip6tables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time

from . import routing
from ._exec import InterceptError, have, one_line, run
from .config import InterceptConfig
from .rules import SETS, SetSpec, parse_set_update, set_elements, sets_for

PREFIX = "BATON_"
IPSET_PREFIX = "baton_"
BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
           "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}
VARIANTS = ("iptables", "iptables-nft", "iptables-legacy")


def binaries(variant: str, version: int) -> tuple[str, str]:
    """(restore, save) commands of a variant for IPv4 or IPv6."""
    base = "iptables" if version == 4 else "ip6tables"
    suffix = variant[len("iptables"):]           # "", "-nft", "-legacy"
    return f"{base}{suffix}-restore", f"{base}{suffix}-save"


def ipset_name(spec_or_name) -> str:
    name = spec_or_name.name if isinstance(spec_or_name, SetSpec) else spec_or_name
    return IPSET_PREFIX + name


# ---- sans-IO rendering -------------------------------------------------------------------------


def _ipset_elements(spec: SetSpec, elements: list[str]) -> list[str]:
    if spec.kind == "port":
        return elements
    out = []
    for e in elements:
        net = ipaddress.ip_network(e)
        if net.prefixlen == 0:                        # hash:net takes /1 .. /32 (/128)
            out += [str(n) for n in net.subnets(prefixlen_diff=1)]
        else:
            out.append(e)
    return out


def _ipset_create(spec: SetSpec, name: str, size: int) -> str:
    if spec.kind == "port":
        return f"create {name} bitmap:port range 0-65535"
    family = "inet" if spec.kind == "ipv4" else "inet6"
    maxelem = max(65536, 2 * size)
    return f"create {name} hash:net family {family} hashsize {_hashsize(size)} maxelem {maxelem}"


def _hashsize(n: int) -> int:
    size = 1024
    while size < n and size < (1 << 20):
        size <<= 1
    return size


def render_ipset(cfg: InterceptConfig, existing: set[str] = frozenset()) -> str:
    """`ipset restore` text that creates (if missing) and atomically refills every baton_* set."""
    cfg = cfg.normalized()
    lines = []
    for spec in sets_for(cfg, hosts=False):
        live, new = ipset_name(spec), ipset_name(spec) + "-new"
        elements = _ipset_elements(spec, set_elements(cfg, spec, hosts=False))
        if live not in existing:
            lines.append(_ipset_create(spec, live, len(elements)))
        if new in existing:
            lines.append(f"destroy {new}")
        lines.append(_ipset_create(spec, new, len(elements)))
        lines += [f"add {new} {e}" for e in elements]
        lines += [f"swap {new} {live}", f"destroy {new}"]
    return "\n".join(lines) + "\n"


def render_ipset_update(adds: dict[str, list[str]], dels: dict[str, list[str]]) -> str:
    """`ipset restore` text for update_set; nft *_hosts set names map to their network ipset."""
    specs = {s.name: s for s in SETS}
    lines = []
    for verb, updates in (("del", dels), ("add", adds)):
        for name, elements in updates.items():
            target = name.removesuffix("_hosts")
            for e in _ipset_elements(specs[target], elements):
                lines.append(f"{verb} -exist {ipset_name(target)} {e}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_chains(cfg: InterceptConfig, version: int) -> dict[str, dict[str, list[str]]]:
    """{table: {chain: [rule args]}} of Baton's chains for one family, plus the jumps under
    the key "jumps": {table: [(builtin chain, rule args)]}."""
    cfg = cfg.normalized()
    v = "4" if version == 4 else "6"
    tcp = "-p tcp"
    own = [f"-m mark --mark {cfg.proxy_mark:#x}/{cfg.proxy_mark:#x} -j RETURN"]
    own += [f"-m owner --uid-owner {u} -j RETURN" for u in cfg.proxy_uid]
    own += [f"-m owner --gid-owner {g} -j RETURN" for g in cfg.proxy_gid]
    excl = [f"-m set --match-set {IPSET_PREFIX}out{v}_exclude dst -j RETURN",
            f"{tcp} -m set --match-set {IPSET_PREFIX}out_ports_exclude dst -j RETURN"]
    incl = [f"{tcp} -m set --match-set {IPSET_PREFIX}out{v}_include dst",
            f"{tcp} -m set --match-set {IPSET_PREFIX}out_ports_include dst"]
    in_excl = f"{tcp} -m set --match-set {IPSET_PREFIX}in_ports_exclude dst -j RETURN"
    in_incl = f"{tcp} -m set --match-set {IPSET_PREFIX}in_ports_include dst"
    if cfg.mode == "REDIRECT":
        out = own + ["-o lo -j RETURN"] + excl + [f"{m} -j REDIRECT --to-ports {cfg.proxy_port}" for m in incl]
        pre = ["-i lo -j RETURN", "-m addrtype ! --dst-type LOCAL -j RETURN", in_excl,
               f"{in_incl} -j REDIRECT --to-ports {cfg.inbound_capture_port}"]
        return {"nat": {"BATON_OUTPUT": out, "BATON_PREROUTING": pre},
                "jumps": {"nat": [("OUTPUT", f"{tcp} -j BATON_OUTPUT"),
                                  ("PREROUTING", f"{tcp} -j BATON_PREROUTING")]}}
    t = f"{cfg.tproxy_mark:#x}"
    tmark = f"--tproxy-mark {t}/{t}"
    divert = [f"-j MARK --set-xmark {t}/{t}", "-j ACCEPT"]
    syn = "--tcp-flags SYN,ACK SYN"
    # `! --syn`: a TIME_WAIT socket must not divert a new connection (see rules.py).
    pre = [f"{tcp} ! --syn -m socket --transparent -j BATON_DIVERT",
           f"-i lo {tcp} -m mark --mark {t}/{t} -m tcp {syn} -j TPROXY --on-port {cfg.proxy_port} {tmark}",
           "-i lo -j RETURN",
           "-m addrtype ! --dst-type LOCAL -j RETURN",
           in_excl,
           f"{in_incl} -m tcp {syn} -j TPROXY --on-port {cfg.inbound_capture_port} {tmark}"]
    out = ["-m conntrack --ctdir REPLY -j RETURN"] + own + [
        "-o lo -j RETURN", "-m addrtype --dst-type LOCAL -j RETURN"] + excl
    out += [f"{m} -j MARK --set-xmark {t}/{t}" for m in incl]
    return {"mangle": {"BATON_DIVERT": divert, "BATON_PREROUTING": pre, "BATON_OUTPUT": out},
            "jumps": {"mangle": [("PREROUTING", f"{tcp} -j BATON_PREROUTING"),
                                 ("OUTPUT", f"{tcp} -j BATON_OUTPUT")]}}


def parse_save(saved: str) -> dict[str, dict]:
    """From iptables-save text: {table: {"chains": [BATON chains], "jumps": [(chain, args)],
    "builtin_policies": {chain: policy}, "other_chains": [..], "rules": n}}."""
    tables: dict[str, dict] = {}
    cur = None
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], {"chains": [], "jumps": [], "builtin_policies": {},
                                               "other_chains": [], "rules": 0})
        elif cur is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name.startswith(PREFIX):
                cur["chains"].append(name)
            elif policy != "-":
                cur["builtin_policies"][name] = policy
            else:
                cur["other_chains"].append(name)
        elif line.startswith("-A "):
            chain, _, args = line[3:].partition(" ")
            if chain.startswith(PREFIX):
                continue
            cur["rules"] += 1
            if re.search(r"(^|\s)-[jg] " + PREFIX + r"\w+", args):
                cur["jumps"].append((chain, args))
    return tables


def render_restore(cfg: InterceptConfig | None, version: int, saved: str = "") -> str:
    """iptables-restore --noflush input: remove what `saved` shows of Baton, then (unless cfg is
    None) install cfg's chains for this family. Empty string when there is nothing to do."""
    current = parse_save(saved)
    wanted = render_chains(cfg, version) if cfg is not None else {"jumps": {}}
    jumps = wanted.pop("jumps")
    blocks = []
    for table in sorted(set(current) | set(wanted)):
        have_t = current.get(table, {"chains": [], "jumps": []})
        want_t = wanted.get(table, {})
        if not have_t["chains"] and not have_t["jumps"] and not want_t:
            continue
        lines = [f"*{table}"]
        lines += [f":{c} - [0:0]" for c in want_t]
        lines += [f"-D {chain} {args}" for chain, args in have_t["jumps"]]
        stale = [c for c in have_t["chains"] if c not in want_t]
        lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
        position: dict[str, int] = {}
        for chain, args in jumps.get(table, ()):
            position[chain] = position.get(chain, 0) + 1
            lines.append(f"-I {chain} {position[chain]} {args}")
        for chain, rules in want_t.items():
            lines += [f"-A {chain} {r}" for r in rules]
        lines.append("COMMIT")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n" if blocks else ""


# ---- running -----------------------------------------------------------------------------------


def _variant_of(backend: str) -> str:
    return backend if backend in VARIANTS else "iptables"


def _present_variants() -> list[str]:
    found = [v for v in ("iptables-nft", "iptables-legacy") if have(binaries(v, 4)[0])]
    return found or ([v for v in ("iptables",) if have("iptables-restore")])


def _save(variant: str, version: int, table: str | None = None) -> str:
    _, save = binaries(variant, version)
    if not have(save):
        return ""
    proc = run([save, *(["-t", table] if table else [])], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _restore(variant: str, version: int, text: str) -> None:
    if not text:
        return
    restore, _ = binaries(variant, version)
    proc = run([restore, "--noflush", "--wait"], input=text, check=False)
    if proc.returncode != 0:
        raise InterceptError(f"{restore}: {one_line(proc.stderr or proc.stdout)}")


def _ipsets() -> set[str]:
    if not have("ipset"):
        return set()
    proc = run(["ipset", "list", "-n"], check=False)
    return {n for n in proc.stdout.split() if n.startswith(IPSET_PREFIX)} if proc.returncode == 0 else set()


def _is_nft_variant(variant: str) -> bool:
    if variant == "iptables-nft":
        return True
    if variant == "iptables-legacy":
        return False
    proc = run(["iptables", "--version"], check=False)
    return "nf_tables" in proc.stdout


def apply_rules(cfg: InterceptConfig) -> dict:
    """Sets, then rules for IPv4 (and IPv6); returns {"seconds", "ipset_seconds"}: how long
    the tools took in all, and `ipset restore` alone."""
    cfg = cfg.normalized()
    variant = _variant_of(cfg.backend)
    if not have(binaries(variant, 4)[0]):
        raise InterceptError(f"{binaries(variant, 4)[0]} not found: install iptables "
                             f"(apt-get install iptables) or use --backend nft")
    if not have("ipset"):
        raise InterceptError("ipset not found: install it (apt-get install ipset) or use --backend nft")
    text = render_ipset(cfg, _ipsets())
    t0 = time.monotonic()
    run(["ipset", "restore"], input=text)
    ipset_seconds = time.monotonic() - t0
    nft_variant = _is_nft_variant(variant)
    for version in (4, 6):
        saved = _save(variant, version)
        _restore(variant, version, render_restore(cfg if version == 4 or cfg.ipv6 else None,
                                                  version, saved))
        if nft_variant:      # e.g. the nat table a REDIRECT run left, now that TPROXY uses mangle
            _drop_empty_tables(variant, version, parse_save(saved))
    # the same chains left in the other variant (a run with another backend) go too
    for other in _present_variants():
        if other != variant and _is_nft_variant(other) != nft_variant:
            _remove_variant(other)
    if not cfg.ipv6:
        for spec in SETS:
            if spec.kind == "ipv6" and not spec.hosts and ipset_name(spec) in _ipsets():
                run(["ipset", "destroy", ipset_name(spec)], check=False)
    return {"seconds": time.monotonic() - t0, "ipset_seconds": ipset_seconds}


def _remove_variant(variant: str) -> bool:
    touched = False
    for version in (4, 6):
        saved = _save(variant, version)
        text = render_restore(None, version, saved)
        if text:
            _restore(variant, version, text)
            touched = True
            if _is_nft_variant(variant):
                _drop_empty_tables(variant, version, parse_save(saved))
    return touched


def _drop_empty_tables(variant: str, version: int, before: dict) -> None:
    """iptables-nft creates `table ip nat` (...) on first use; drop the ones Baton used that are
    now empty, so that `nft list ruleset` is as it was before apply."""
    if not have("nft"):
        return
    family = "ip" if version == 4 else "ip6"
    for table, info in before.items():
        if not info["chains"] and not info["jumps"]:
            continue
        now = parse_save(_save(variant, version, table)).get(table)
        if now is None:
            continue
        if now["rules"] == 0 and not now["chains"] and not now["other_chains"] and \
                all(p == "ACCEPT" for p in now["builtin_policies"].values()):
            run(["nft", "delete", "table", family, table], check=False)


def remove_rules() -> bool:
    """Remove Baton's chains from every iptables variant present and destroy the baton_* sets."""
    touched = False
    for variant in _present_variants():
        touched |= _remove_variant(variant)
    sets = _ipsets()
    for name in sorted(sets):
        run(["ipset", "destroy", name])
    return touched or bool(sets)


def show_rules() -> str:
    lines = []
    for variant in _present_variants():
        for version in (4, 6):
            for line in _save(variant, version).splitlines():
                if PREFIX in line:
                    lines.append(f"{binaries(variant, version)[1].replace('-save', '')}: {line}")
    sets = _ipsets()
    if sets:
        proc = run(["ipset", "list", "-t"], check=False)
        name = None
        for line in proc.stdout.splitlines():
            if line.startswith("Name: "):
                name = line[6:]
            elif line.startswith("Number of entries: ") and name in sets:
                lines.append(f"ipset {name}: {line[19:]} entries")
    return "\n".join(lines)


def update_set(name: str, add=(), remove=(), ipv6: bool = True) -> dict:
    adds = parse_set_update(name, add, ipv6)
    dels = parse_set_update(name, remove, ipv6)
    text = render_ipset_update(adds, dels)
    if not text:
        return {"added": 0, "removed": 0, "seconds": 0.0}
    missing = {ipset_name(n.removesuffix("_hosts")) for n in (*adds, *dels)} - _ipsets()
    if missing:
        raise InterceptError("no interception rules are applied with the iptables backend "
                             f"(no ipset {', '.join(sorted(missing))}); run `baton intercept apply` first")
    t0 = time.monotonic()
    run(["ipset", "restore"], input=text)
    return {"added": sum(map(len, adds.values())), "removed": sum(map(len, dels.values())),
            "seconds": time.monotonic() - t0}


def apply(cfg: InterceptConfig) -> dict:
    from . import nft
    cfg = cfg.normalized()
    if cfg.backend == "nft":
        cfg = dataclasses.replace(cfg, backend="iptables").normalized()
    timing = apply_rules(cfg)
    leftovers = nft.remove_rules()
    routes = routing.apply(cfg) if cfg.mode == "TPROXY" else {"added": 0, "removed": routing.remove()}
    return {"backend": cfg.backend, **timing, "routing": routes,
            "replaced_nft_leftovers": leftovers}


def remove() -> dict:
    from . import nft
    return {"iptables": remove_rules(), "nft_table": nft.remove_rules(), "routing": routing.remove()}


def show() -> str:
    from . import nft
    parts = [show_rules(), nft.show_rules(terse=True), routing.show()]
    return "\n".join(p for p in parts if p)
