"""The nftables backend: apply / remove / show / update_set in the CURRENT network namespace.

apply(cfg) replaces `table inet baton` whole in one `nft -f -` transaction (rules.render_nft),
sets the TPROXY policy routing (routing.py) or removes it in REDIRECT mode, and clears what an
iptables-backend run may have left (iptables.remove_rules), so the namespace ends up holding
exactly cfg whatever was there before. remove() deletes the table, Baton's ip rules/routes and
any iptables-backend leftovers; the namespace is then exactly as before apply.
"""

from __future__ import annotations

import time

from . import routing
from ._exec import InterceptError, have, run
from .config import InterceptConfig
from .rules import QUALIFIED, parse_set_update, render_nft, render_nft_remove, render_nft_set_update

NFT = "nft"


def apply_rules(cfg: InterceptConfig) -> float:
    """Load the ruleset; returns the seconds `nft -f` took."""
    text = render_nft(cfg)
    t0 = time.monotonic()
    run([NFT, "-f", "-"], input=text)
    return time.monotonic() - t0


def remove_rules() -> bool:
    """Delete table inet baton; True if it existed."""
    if not have(NFT):
        return False
    existed = table_exists()
    if existed:
        run([NFT, "-f", "-"], input=render_nft_remove())
    return existed


def table_exists() -> bool:
    return run([NFT, "list", "table", *QUALIFIED.split()], check=False).returncode == 0


def show_rules(terse: bool = False) -> str:
    if not have(NFT):
        return ""
    proc = run([NFT, *(["-t"] if terse else []), "list", "table", *QUALIFIED.split()], check=False)
    return proc.stdout.rstrip() if proc.returncode == 0 else ""


def update_set(name: str, add=(), remove=(), ipv6: bool = True) -> dict:
    """Add and delete elements of one named set in place (no rule reload). name is a setting
    (`outbound-ip-ranges-exclude`, ...) or a set name (`out4_exclude`); v4 and v6 values are
    split into their sets. Returns {"added": n, "removed": n, "seconds": t}."""
    adds = parse_set_update(name, add, ipv6)
    dels = parse_set_update(name, remove, ipv6)
    text = render_nft_set_update(adds, dels)
    if not text:
        return {"added": 0, "removed": 0, "seconds": 0.0}
    t0 = time.monotonic()
    try:
        run([NFT, "-f", "-"], input=text)
    except InterceptError as exc:
        if not table_exists():
            raise InterceptError("no interception rules are applied (run `baton intercept apply` first)") from None
        raise InterceptError(f"updating {name}: {exc}") from None
    return {"added": sum(map(len, adds.values())), "removed": sum(map(len, dels.values())),
            "seconds": time.monotonic() - t0}


def apply(cfg: InterceptConfig) -> dict:
    from . import iptables
    cfg = cfg.normalized()
    seconds = apply_rules(cfg)
    leftovers = iptables.remove_rules()
    routes = routing.apply(cfg) if cfg.mode == "TPROXY" else {"added": 0, "removed": routing.remove()}
    return {"backend": "nft", "table": QUALIFIED, "nft_seconds": seconds, "routing": routes,
            "replaced_iptables_leftovers": leftovers}


def remove() -> dict:
    from . import iptables
    return {"nft_table": remove_rules(), "iptables": iptables.remove_rules(),
            "routing": routing.remove()}


def show(terse: bool = False) -> str:
    from . import iptables
    parts = [show_rules(terse), iptables.show_rules(), routing.show()]
    return "\n".join(p for p in parts if p)
