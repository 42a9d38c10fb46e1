"""Static bootstrap + the agent's dynamic config -> the snapshot workers run; and what changed.

Pure functions on plain snapshot values (snapshot.py), used by the master:

    merge(static, published) -> snapshot
        static: the bootstrap's snapshot (STRICT_DNS resolved); published: the agent's
        DynamicConfig.published() or None. Dynamic listeners follow the static ones; every
        EDS cluster (static or dynamic) gets the endpoints of its service name, every
        http_connection_manager with rds the route table of its name (None until known), and
        every TLS context the secrets it names (xds/secrets.py; none until all are known).
    diff(old, new) -> Changes
        what a worker must do to go from `old` to `new`: listeners added, changed (same name
        and address), removed (or moved to another address: removed, then added), and
        clusters changed or removed. Compared by value, so an unchanged resource is never
        touched (an EDS update leaves every listener and connection alone).
"""

from __future__ import annotations


class Changes:
    __slots__ = ("added_listeners", "changed_listeners", "removed_listeners",
                 "changed_clusters", "removed_clusters")

    def __init__(self):
        self.added_listeners: list[dict] = []
        self.changed_listeners: list[dict] = []
        self.removed_listeners: list[str] = []
        self.changed_clusters: dict[str, dict] = {}
        self.removed_clusters: list[str] = []

    def __bool__(self):
        return bool(self.added_listeners or self.changed_listeners or self.removed_listeners
                     or self.changed_clusters or self.removed_clusters)


def merge(static: dict, published: dict | None) -> dict:
    published = published or {}
    endpoints = published.get("endpoints") or {}
    routes = published.get("routes") or {}
    clusters = {}
    for name, spec in {**static["clusters"], **(published.get("clusters") or {})}.items():
        if spec.get("type") == "EDS":
            spec = {**spec, "endpoints": endpoints.get(spec["eds"]["service_name"], [])}
        clusters[name] = spec
    listeners = [_with_routes(spec, routes)
                 for spec in [*static["listeners"], *(published.get("listeners") or ())]]
    # Every TLS context gets the secrets it names (static, or SDS through the agent).
    from .secrets import resolve_specs
    secrets = {"static": static.get("secrets") or {}, **(published.get("secrets") or {})}
    listeners = resolve_specs(listeners, secrets)
    clusters = resolve_specs(clusters, secrets)
    return {**static, "listeners": listeners, "clusters": clusters}


def _with_routes(listener: dict, routes: dict) -> dict:
    chains = listener.get("filter_chains")
    if not chains or not any((c.get("http") or {}).get("rds") for c in chains):
        return listener
    filled = []
    for chain in chains:
        http = chain.get("http")
        if http and http.get("rds"):
            chain = {**chain, "http": {**http,
                                       "route_config": routes.get(http["rds"]["route_config_name"])}}
        filled.append(chain)
    return {**listener, "filter_chains": filled}


def diff(old: dict, new: dict) -> Changes:
    changes = Changes()
    before = {spec["name"]: spec for spec in old["listeners"]}
    after = {spec["name"]: spec for spec in new["listeners"]}
    for name, spec in before.items():
        later = after.get(name)
        if later is None or _address(later) != _address(spec):
            changes.removed_listeners.append(name)
    for name, spec in after.items():
        earlier = before.get(name)
        if earlier is None or _address(earlier) != _address(spec):
            changes.added_listeners.append(spec)
        elif earlier != spec:
            changes.changed_listeners.append(spec)
    for name, spec in new["clusters"].items():
        if old["clusters"].get(name) != spec:
            changes.changed_clusters[name] = spec
    changes.removed_clusters = [n for n in old["clusters"] if n not in new["clusters"]]
    return changes


def _address(spec):
    return spec["address"], spec["port"], spec.get("transparent", False), spec.get("reuse_port", True)
