"""A workload's identity as Istio's metrics label it, from its node metadata.

The local workload's comes from the bootstrap's node metadata (what pilot-agent writes for a
sidecar or a VM); a peer's from the metadata it sent in the exchange (peer_metadata.py), which
is the same Struct. Istio's keys and fallbacks (istio/proxy extensions/common and the stats
filter; the labels are documented on istio.io "Istio Standard Metrics"):

    workload            WORKLOAD_NAME
    namespace           NAMESPACE
    app                 LABELS app, else app.kubernetes.io/name
    version             LABELS version, else app.kubernetes.io/version
    canonical_service   LABELS service.istio.io/canonical-name, else the app label, else
                        WORKLOAD_NAME
    canonical_revision  LABELS service.istio.io/canonical-revision, else the version label,
                        else "latest"
    cluster             CLUSTER_ID

Anything missing is "unknown", and so is every label of a peer that sent nothing.
"""

from __future__ import annotations

from typing import NamedTuple

UNKNOWN = "unknown"
# The node metadata keys a sidecar shares with its peers (Istio's exchanged set).
SHARED_KEYS = ("NAME", "NAMESPACE", "LABELS", "WORKLOAD_NAME", "OWNER", "PLATFORM_METADATA",
               "CLUSTER_ID", "APP_CONTAINERS", "INSTANCE_IPS", "MESH_ID", "SERVICE_ACCOUNT")


class Workload(NamedTuple):
    """A workload's labels; hashable, so a label set keys the metric names' cache."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN
    cluster: str = UNKNOWN


UNKNOWN_WORKLOAD = Workload()


def _text(value) -> str:
    return value if isinstance(value, str) and value else ""


def from_metadata(metadata: dict | None) -> Workload:
    """Node metadata (a dict, as the Struct decodes) -> Workload; {} or None: unknown."""
    if not metadata:
        return UNKNOWN_WORKLOAD
    labels = metadata.get("LABELS")
    labels = labels if isinstance(labels, dict) else {}
    workload = _text(metadata.get("WORKLOAD_NAME"))
    app = _text(labels.get("app")) or _text(labels.get("app.kubernetes.io/name"))
    version = _text(labels.get("version")) or _text(labels.get("app.kubernetes.io/version"))
    return Workload(
        workload=workload or UNKNOWN,
        namespace=_text(metadata.get("NAMESPACE")) or UNKNOWN,
        app=app or UNKNOWN,
        version=version or UNKNOWN,
        canonical_service=_text(labels.get("service.istio.io/canonical-name")) or app
        or workload or UNKNOWN,
        canonical_revision=_text(labels.get("service.istio.io/canonical-revision")) or version
        or "latest",
        cluster=_text(metadata.get("CLUSTER_ID")) or UNKNOWN)


def shared_metadata(metadata: dict | None) -> dict:
    """The part of this node's metadata a sidecar tells its peers."""
    return {key: metadata[key] for key in SHARED_KEYS if metadata and key in metadata}


def spiffe_principal(der: bytes | None, cache: dict | None = None) -> str:
    """The first URI SAN of a peer certificate: an Istio workload's SPIFFE id, shown whole
    ("spiffe://cluster.local/ns/default/sa/name") as Istio's *_principal labels show it;
    "unknown" without a certificate or a URI SAN. `cache` (a TLS session's) keeps it per
    connection."""
    if der is None:
        return UNKNOWN
    if cache is not None and "istio.principal" in cache:
        return cache["istio.principal"]
    from ...tls.server import _subject_alt_names
    uris = [value for kind, value in _subject_alt_names(der) if kind == "URI"]
    principal = uris[0] if uris else UNKNOWN
    if cache is not None:
        cache["istio.principal"] = principal
    return principal
