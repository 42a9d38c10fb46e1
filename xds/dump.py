"""The dynamic half of /config_dump, in Envoy's admin.v3 shapes, built on demand.

Built by the agent (which holds the resources' bytes) when the master asks, never on every
update: turning a 10,000-endpoint assignment into JSON costs more than applying it.

    dynamic_dump(config, secrets=()) -> {"clusters": {...}, "listeners": {...}, "routes": {...},
                                         "endpoints": {...}, "secrets": {...}}
each the dynamic fields of ClustersConfigDump, ListenersConfigDump, RoutesConfigDump,
EndpointsConfigDump and SecretsConfigDump: version_info and, per resource, its version_info,
the resource (with its "@type") and last_updated. `secrets`: (name, version, raw Secret
bytes, last_updated) of the secrets SDS sources other than ADS hold (xds/sds.py).
"""

from __future__ import annotations

from google.protobuf import json_format

from . import protos
from .ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from .secrets import secret_class
from .tls import redact

_CLASSES = {LISTENER: protos.Listener, ROUTE: protos.RouteConfiguration,
            CLUSTER: protos.Cluster, ENDPOINT: protos.ClusterLoadAssignment,
            SECRET: secret_class()}


def _as_json(type_url, raw, field_names=False):
    pb = _CLASSES[type_url]()
    pb.ParseFromString(raw)
    # TLS private keys show as "[redacted]", as in Envoy (xds/tls.py). field_names: the
    # proto's own names (tls_certificate), as Envoy 1.40 writes secrets.
    return {"@type": type_url, **redact(json_format.MessageToDict(
        pb, preserving_proto_field_name=field_names))}


def dynamic_dump(config, secrets=()) -> dict:
    accepted, versions = config.accepted, config.versions

    def entries(type_url, key, names):
        return [{"version_info": a.version, key: _as_json(type_url, a.raw),
                 "last_updated": a.updated}
                for name, a in sorted(accepted[type_url].items()) if name in names]

    clusters = accepted[CLUSTER]
    warming_c = set(config.warming_clusters)
    listeners = accepted[LISTENER]
    warming_l = set(config.warming_listeners)
    dynamic_listeners = []
    for name, a in sorted(listeners.items()):
        state = {"version_info": a.version, "listener": _as_json(LISTENER, a.raw),
                 "last_updated": a.updated}
        entry = {"name": name}
        entry["warming_state" if name in warming_l else "active_state"] = state
        dynamic_listeners.append(entry)
    return {
        "clusters": {"version_info": versions[CLUSTER],
                     "dynamic_active_clusters": entries(CLUSTER, "cluster",
                                                        set(clusters) - warming_c),
                     "dynamic_warming_clusters": entries(CLUSTER, "cluster", warming_c)},
        "listeners": {"version_info": versions[LISTENER], "dynamic_listeners": dynamic_listeners},
        "routes": {"dynamic_route_configs": entries(ROUTE, "route_config", set(accepted[ROUTE]))},
        "endpoints": {"dynamic_endpoint_configs": entries(ENDPOINT, "endpoint_config",
                                                          set(accepted[ENDPOINT]))},
        # Envoy's DynamicSecret entries (private keys "[redacted]", as Envoy shows them).
        "secrets": {"dynamic_active_secrets": sorted(
            [{"name": a.name, "version_info": a.version, "last_updated": a.updated,
              "secret": _as_json(SECRET, a.raw, True)} for a in accepted[SECRET].values()]
            + [{"name": name, "version_info": version, "last_updated": updated,
                "secret": _as_json(SECRET, raw, True)} for name, version, raw, updated in secrets],
            key=lambda entry: entry["name"])},
    }
