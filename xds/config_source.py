"""Where dynamic config comes from: the bootstrap's dynamic_resources and every ConfigSource.

Baton speaks one transport, as Istio and most control planes use it: a single aggregated
(ADS) gRPC stream to a static cluster. So a ConfigSource is `ads: {}` (with an optional
initial_fetch_timeout and resource_api_version V3); path, api_config_source, self and
authorities are refused with their path, never silently ignored. The one exception is SDS
(translate_sds_config_source): a secret may also come over a gRPC stream of its own or from a
watched file, as Istio's sidecars get theirs.

    translate_dynamic_resources(pb, path, errors, warnings, clusters) -> XDS dict or None
    translate_config_source(pb, path, errors) -> initial_fetch_timeout (seconds; 0 = none)
    translate_sds_config_source(pb, path, errors) -> SOURCE (xds/secrets.py) or None

XDS (snapshot["xds"]; None without dynamic_resources):
    {"api_type": "GRPC" | "DELTA_GRPC",    # state of the world or incremental
     "cluster": "xds_cluster",             # the static cluster the ADS stream dials
     "lds": bool, "cds": bool,             # which wildcard subscriptions to open
     "lds_initial_fetch_timeout": 15.0, "cds_initial_fetch_timeout": 15.0,
     "set_node_on_first_message_only": bool}
"""

from . import protos
from .fields import check_fields
from .parse import join

DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0        # Envoy's ConfigSource.initial_fetch_timeout
API_TYPES = ("GRPC", "DELTA_GRPC")


def translate_config_source(pb, path, errors):
    """A ConfigSource that must say `ads: {}` -> its initial_fetch_timeout in seconds."""
    check_fields(pb, path, errors, None)
    which = pb.WhichOneof("config_source_specifier")
    if which != "ads":
        got = f"'{which}'" if which else "nothing"
        errors.append(f"{path}: only 'ads: {{}}' is supported (the ADS stream of "
                      f"dynamic_resources.ads_config), got {got}")
    if pb.resource_api_version not in (0, 2):      # AUTO (0) means V3 today; V3 is 2
        errors.append(f"{join(path, 'resource_api_version')}: V3 only")
    if pb.HasField("initial_fetch_timeout"):
        t = pb.initial_fetch_timeout
        return t.seconds + t.nanos / 1e9
    return DEFAULT_INITIAL_FETCH_TIMEOUT


def translate_dynamic_resources(pb, path, errors, clusters):
    """Bootstrap.dynamic_resources -> the XDS dict (module docstring), or None on error.

    `clusters`: the static clusters by name (snapshot form); the ADS cluster must be one of
    them, with at least one endpoint to dial.
    """
    start = len(errors)
    check_fields(pb, path, errors, None)
    ads_path = join(path, "ads_config")
    api_type, cluster, node_once = "GRPC", None, False
    if not pb.HasField("ads_config"):
        errors.append(f"{ads_path}: required (Baton gets dynamic resources over ADS only)")
    else:
        ads = pb.ads_config
        node_once = ads.set_node_on_first_message_only
        api_type, cluster = _api_config_source(ads, ads_path, errors)
        if cluster is not None:
            where = f"{join(ads_path, 'grpc_services')}[0].envoy_grpc.cluster_name"
            if not cluster:
                errors.append(f"{where}: required")
            elif cluster not in clusters:
                errors.append(f"{where}: unknown cluster '{cluster}' (it must be a static cluster)")
            elif not clusters[cluster] or not (clusters[cluster].get("endpoints")
                                               or clusters[cluster].get("pipe_endpoints")):
                if clusters[cluster] is not None:
                    errors.append(f"{where}: cluster '{cluster}' has no endpoint to dial")
    xds = {"api_type": api_type, "cluster": cluster, "lds": False, "cds": False,
           "lds_initial_fetch_timeout": DEFAULT_INITIAL_FETCH_TIMEOUT,
           "cds_initial_fetch_timeout": DEFAULT_INITIAL_FETCH_TIMEOUT,
           "set_node_on_first_message_only": node_once}
    for kind in ("lds", "cds"):
        if pb.HasField(f"{kind}_config"):
            xds[kind] = True
            xds[f"{kind}_initial_fetch_timeout"] = translate_config_source(
                getattr(pb, f"{kind}_config"), join(path, f"{kind}_config"), errors)
    if len(errors) > start:
        return None
    return xds


def _api_config_source(api, path, errors):
    """An ApiConfigSource that must be one envoy_grpc service (ads_config, or SDS's own)
    -> (api_type, its cluster name: None when it is not there at all)."""
    api_type = protos.ApiConfigSource.ApiType.Name(api.api_type)
    if api_type not in API_TYPES:
        errors.append(f"{join(path, 'api_type')}: {api_type} not supported "
                      f"({' or '.join(API_TYPES)})")
    if api.transport_api_version not in (0, 2):
        errors.append(f"{join(path, 'transport_api_version')}: V3 only")
    services = api.grpc_services
    if len(services) != 1:
        errors.append(f"{join(path, 'grpc_services')}: exactly one entry is supported, "
                      f"got {len(services)}")
        return api_type, None
    if services[0].WhichOneof("target_specifier") != "envoy_grpc":
        errors.append(f"{join(path, 'grpc_services')}[0]: only envoy_grpc "
                      "(a static cluster) is supported")
        return api_type, None
    return api_type, services[0].envoy_grpc.cluster_name


def translate_eds_cluster_config(pb, path, errors):
    """Cluster.eds_cluster_config -> {"service_name", "initial_fetch_timeout"}.

    The ClusterLoadAssignment is asked for by service_name, or by the cluster's name when
    service_name is empty (Envoy's rule)."""
    check_fields(pb, path, errors, None)
    name = pb.service_name
    timeout = DEFAULT_INITIAL_FETCH_TIMEOUT
    if not pb.HasField("eds_config"):
        errors.append(f"{join(path, 'eds_config')}: required (ads: {{}})")
    else:
        timeout = translate_config_source(pb.eds_config, join(path, "eds_config"), errors)
    return {"service_name": name, "initial_fetch_timeout": timeout}


def translate_rds(pb, path, errors):
    """HttpConnectionManager.rds -> {"route_config_name", "initial_fetch_timeout"}."""
    check_fields(pb, path, errors, None)
    if not pb.route_config_name:
        errors.append(f"{join(path, 'route_config_name')}: required")
    timeout = DEFAULT_INITIAL_FETCH_TIMEOUT
    if not pb.HasField("config_source"):
        errors.append(f"{join(path, 'config_source')}: required (ads: {{}})")
    else:
        timeout = translate_config_source(pb.config_source, join(path, "config_source"), errors)
    return {"route_config_name": pb.route_config_name, "initial_fetch_timeout": timeout}


def translate_sds_config_source(pb, path, errors):
    """An SdsSecretConfig's sds_config -> SOURCE (xds/secrets.py), or None on error.

    SDS comes three ways, as in Envoy: over the ADS stream (`ads: {}`), over a gRPC stream of
    its own to a static cluster (`api_config_source` with one envoy_grpc service: Istio's
    `sds-grpc`, a Unix socket), or from a file of Secret resources that is watched
    (`path_config_source`, optionally with a `watched_directory`)."""
    start = len(errors)
    check_fields(pb, path, errors, None)
    if pb.resource_api_version not in (0, 2):
        errors.append(f"{join(path, 'resource_api_version')}: V3 only")
    timeout = DEFAULT_INITIAL_FETCH_TIMEOUT
    if pb.HasField("initial_fetch_timeout"):
        timeout = pb.initial_fetch_timeout.seconds + pb.initial_fetch_timeout.nanos / 1e9
    which = pb.WhichOneof("config_source_specifier")
    source = None
    if which == "ads":
        source = {"key": "ads", "kind": "ads"}
    elif which == "api_config_source":
        api_path = join(path, "api_config_source")
        api_type, cluster = _api_config_source(pb.api_config_source, api_path, errors)
        if cluster == "":
            errors.append(f"{join(api_path, 'grpc_services')}[0].envoy_grpc.cluster_name: required")
        elif cluster is not None:
            source = {"key": f"grpc:{cluster}", "kind": "grpc", "cluster": cluster,
                      "api_type": api_type}
    elif which in ("path_config_source", "path"):
        file_path = pb.path_config_source.path if which == "path_config_source" else pb.path
        directory = (pb.path_config_source.watched_directory.path
                     if which == "path_config_source" and
                     pb.path_config_source.HasField("watched_directory") else None)
        where = join(path, "path_config_source.path" if which == "path_config_source" else "path")
        if not file_path:
            errors.append(f"{where}: required")
        else:
            source = {"key": f"path:{file_path}", "kind": "path", "path": file_path,
                      "watched_directory": directory or None}
    else:
        got = f"'{which}'" if which else "nothing"
        errors.append(f"{path}: ads, api_config_source (gRPC) or path_config_source is "
                      f"required, got {got}")
    if len(errors) > start or source is None:
        return None
    source["initial_fetch_timeout"] = timeout
    return source


def sds_only_xds(snapshot):
    """The XDS dict of a bootstrap without dynamic_resources whose secrets come over gRPC or
    from watched files: the agent runs for them alone (no ADS stream: "cluster" is None)."""
    from .secrets import spec_references
    specs = [*snapshot["listeners"], *(snapshot.get("clusters") or {}).values()]
    refs = [ref for spec in specs for ref in spec_references(spec)]
    if not any(ref["source"]["kind"] in ("grpc", "path") for ref in refs):
        return None
    return {"api_type": "GRPC", "cluster": None, "lds": False, "cds": False,
            "lds_initial_fetch_timeout": DEFAULT_INITIAL_FETCH_TIMEOUT,
            "cds_initial_fetch_timeout": DEFAULT_INITIAL_FETCH_TIMEOUT,
            "set_node_on_first_message_only": False}
