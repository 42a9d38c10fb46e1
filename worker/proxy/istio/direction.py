"""Which side of the mesh a connection is on, from its listener's traffic_direction
(Istio's inbound listener virtualInbound says INBOUND, its outbound ones OUTBOUND). Istio's
filters report as the destination on inbound traffic and as the source otherwise."""

from __future__ import annotations


def is_inbound(listener) -> bool:
    spec = getattr(listener, "spec", None) or {}
    return spec.get("traffic_direction") == "INBOUND"


def local_node(worker) -> dict:
    """The bootstrap's node ({"id", "cluster", "metadata"}) the worker was started with."""
    return getattr(worker, "node", None) or {}
