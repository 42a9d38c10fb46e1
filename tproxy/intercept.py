"""One entry point over the two backends: apply / remove / show / update_set.

Each works in the CURRENT network namespace. remove() needs no configuration: it removes
everything Baton owns (table inet baton, BATON_* chains in every iptables variant, baton_*
ipsets, ip rules and routes tagged proto 155), whichever backend and mode installed it.
"""

from __future__ import annotations

from . import iptables, nft, routing
from ._exec import InterceptError
from .config import InterceptConfig, InterceptConfigError
from .rules import QUALIFIED

__all__ = ["InterceptConfig", "InterceptConfigError", "InterceptError", "apply", "remove", "show",
           "update_set", "active_backend"]


def apply(cfg: InterceptConfig) -> dict:
    """Install cfg, replacing whatever Baton installed before. If a step fails after the first
    change, everything Baton owns is removed again (never half a ruleset) and the error raised,
    saying so."""
    cfg = cfg.normalized()
    routing.preflight(cfg)
    try:
        result = nft.apply(cfg) if cfg.backend == "nft" else iptables.apply(cfg)
    except (InterceptError, routing.RoutingError) as exc:
        try:
            remove()
            undone = "nothing is left installed"
        except Exception as again:  # noqa: BLE001 - report both
            undone = f"and removing the partial rules failed too: {again}"
        raise type(exc)(f"{exc} ({undone})") from None
    result["config"] = cfg
    return result


def remove() -> dict:
    return {"nft_table": nft.remove_rules(), "iptables": iptables.remove_rules(),
            "routing": routing.remove()}


def active_backend() -> str | None:
    if nft.have(nft.NFT) and nft.table_exists():
        return "nft"
    if iptables._ipsets():
        return "iptables"
    return None


def show(terse: bool = False) -> str:
    parts = [nft.show_rules(terse), iptables.show_rules(), routing.show()]
    return "\n".join(p for p in parts if p)


def update_set(name: str, add=(), remove=(), ipv6: bool = True) -> dict:
    backend = active_backend()
    if backend is None:
        raise InterceptError("no interception rules are applied (run `baton intercept apply` first)")
    mod = nft if backend == "nft" else iptables
    result = mod.update_set(name, add, remove, ipv6)
    result["backend"] = backend
    return result


def describe_removal(result: dict) -> str:
    parts = []
    if result.get("nft_table"):
        parts.append(f"nft table {QUALIFIED}")
    if result.get("iptables"):
        parts.append("iptables BATON_* chains and baton_* ipsets")
    if result.get("routing"):
        parts.append(f"{result['routing']} policy routing entries (proto {routing.RTPROT_BATON})")
    return ", ".join(parts)
