"""STRICT_DNS resolution, done by the master: workers only ever see IP addresses.

Envoy's STRICT_DNS turns every resolved address of every hostname into an endpoint, with the
hostname's weight, and re-resolves every dns_refresh_rate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

FAMILIES = {"V4_ONLY": (socket.AF_INET,), "V6_ONLY": (socket.AF_INET6,),
            "AUTO": (socket.AF_INET6, socket.AF_INET), "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6),
            "ALL": (socket.AF_INET, socket.AF_INET6)}


class ResolveError(Exception):
    pass


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def _pick(infos, lookup_family: str) -> list[str]:
    by_family: dict[int, list[str]] = {}
    for family, _, _, _, sockaddr in infos:
        addrs = by_family.setdefault(family, [])
        if sockaddr[0] not in addrs:
            addrs.append(sockaddr[0])
    order = FAMILIES.get(lookup_family, FAMILIES["AUTO"])
    if lookup_family == "ALL":
        return [a for fam in order for a in by_family.get(fam, [])]
    for fam in order:        # AUTO / V4_PREFERRED: the first family that has answers
        if by_family.get(fam):
            return by_family[fam]
    return []


def resolve_cluster_sync(cluster: dict) -> list[dict]:
    endpoints = []
    for ep in cluster["endpoints"]:
        if _is_ip(ep["address"]):
            endpoints.append(dict(ep))
            continue
        try:
            infos = socket.getaddrinfo(ep["address"], ep["port"], type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ResolveError(f"cluster '{cluster['name']}': cannot resolve "
                               f"{ep['address']}: {exc.strerror}") from None
        addrs = _pick(infos, cluster.get("dns_lookup_family", "AUTO"))
        if not addrs:
            raise ResolveError(f"cluster '{cluster['name']}': {ep['address']} has no address of "
                               f"family {cluster.get('dns_lookup_family')}")
        endpoints.extend({**ep, "address": a} for a in addrs)
    return endpoints


async def resolve_cluster(loop: asyncio.AbstractEventLoop, cluster: dict) -> list[dict]:
    return await loop.run_in_executor(None, resolve_cluster_sync, cluster)


def resolve_snapshot(snapshot: dict) -> dict:
    """A copy of the snapshot with every STRICT_DNS cluster's endpoints resolved."""
    clusters = {}
    for name, cluster in snapshot["clusters"].items():
        if cluster.get("type") == "STRICT_DNS":
            cluster = {**cluster, "endpoints": resolve_cluster_sync(cluster)}
        clusters[name] = cluster
    return {**snapshot, "clusters": clusters}
