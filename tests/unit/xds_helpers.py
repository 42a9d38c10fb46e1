"""Builders shared by the xDS unit tests (test_xds_*.py): Envoy resources as protobuf
messages, packed Anys, responses as the control plane sends them, and small bootstraps.

Resources are written as the dicts a control plane's YAML would hold and parsed with
json_format, so that what a test feeds Baton reads like Envoy config.
"""

from __future__ import annotations

import copy

import yaml
from google.protobuf import any_pb2

from baton.xds import protos
from baton.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, AdsProtocol
from baton.xds.bootstrap import load_bootstrap

ADS = {"ads": {}, "resource_api_version": "V3"}
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CLASSES = {LISTENER: protos.Listener, ROUTE: protos.RouteConfiguration,
           CLUSTER: protos.Cluster, ENDPOINT: protos.ClusterLoadAssignment}
CLASSES[SECRET] = protos.message_class(SECRET.rsplit("/", 1)[1])


# --- resources as dicts ----------------------------------------------------------------------

def socket(address, port):
    return {"socket_address": {"address": address, "port_value": port}}


def static_cluster(name, port=8080, **fields):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": socket("127.0.0.1", port)}}]}]}, **fields}


def eds_cluster(name, service_name="", timeout=None, **fields):
    eds_config = dict(ADS)
    if timeout is not None:
        eds_config["initial_fetch_timeout"] = timeout
    config = {"eds_config": eds_config}
    if service_name:
        config["service_name"] = service_name
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": config, **fields}


def assignment(name, *ports):
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": socket("127.0.0.1", port)}} for port in ports]}]}


def tcp_listener(name, port, address="127.0.0.1", cluster="c"):
    return {"name": name, "address": socket(address, port),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY_TYPE,
                                                             "stat_prefix": "tcp",
                                                             "cluster": cluster}}]}]}


def hcm(route_name=None, timeout=None, route_config=None, **fields):
    config = {"@type": HCM_TYPE, "stat_prefix": "http",
              "http_filters": [{"name": "envoy.filters.http.router",
                                "typed_config": {"@type": ROUTER_TYPE}}], **fields}
    if route_config is not None:
        config["route_config"] = route_config
    else:
        source = dict(ADS)
        if timeout is not None:
            source["initial_fetch_timeout"] = timeout
        config["rds"] = {"route_config_name": route_name, "config_source": source}
    return config


def http_listener(name, port, route_name="routes", timeout=None, address="127.0.0.1"):
    return {"name": name, "address": socket(address, port),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm(route_name, timeout)}]}]}


def route_config(name, cluster="c", validate_clusters=None):
    result = {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}
    if validate_clusters is not None:
        result["validate_clusters"] = validate_clusters
    return result


# --- resources as protobuf -------------------------------------------------------------------

def message(type_url, data):
    """The dict `data` as the type's message."""
    data = copy.deepcopy(data)
    protos.import_types_in(data)
    return protos.json_format.ParseDict(data, CLASSES[type_url]())


def packed(msg):
    any_pb = any_pb2.Any()
    any_pb.Pack(msg)
    return any_pb


def sotw_response(type_url, version, nonce, *resources):
    """A DiscoveryResponse; each resource a dict (of the type) or a ready message/Any."""
    response = protos.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    for item in resources:
        if isinstance(item, dict):
            item = message(type_url, item)
        response.resources.append(item if isinstance(item, any_pb2.Any) else packed(item))
    return response


def delta_response(type_url, nonce, resources=(), removed=(), system_version=""):
    """A DeltaDiscoveryResponse; resources: (name, version, dict or message) triples."""
    response = protos.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce,
                                             system_version_info=system_version)
    for name, version, item in resources:
        if isinstance(item, dict):
            item = message(type_url, item)
        resource = response.resources.add(name=name, version=version)
        resource.resource.CopyFrom(item if isinstance(item, any_pb2.Any) else packed(item))
    response.removed_resources.extend(removed)
    return response


def sotw_update(type_url, version, *resources):
    """A state-of-the-world response decoded by the ADS protocol, as the agent does."""
    return AdsProtocol({"id": "n"}).on_response(
        sotw_response(type_url, version, f"nonce-{version}", *resources))


def delta_update(type_url, resources=(), removed=(), system_version=""):
    return AdsProtocol({"id": "n"}, delta=True).on_response(
        delta_response(type_url, "nonce", resources, removed, system_version))


# --- bootstraps -------------------------------------------------------------------------------

def xds_bootstrap(clusters=(), listeners=(), api_type="GRPC", lds=True, cds=True, **timeouts):
    """A bootstrap with an ADS cluster `xds` and dynamic_resources; timeouts: lds=, cds=."""
    dynamic = {"ads_config": {"api_type": api_type, "transport_api_version": "V3",
                              "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}
    for kind, wanted in (("lds", lds), ("cds", cds)):
        if wanted:
            source = dict(ADS)
            if f"{kind}_timeout" in timeouts:
                source["initial_fetch_timeout"] = timeouts[f"{kind}_timeout"]
            dynamic[f"{kind}_config"] = source
    return {"node": {"id": "baton-test", "cluster": "test"},
            "dynamic_resources": dynamic,
            "static_resources": {"clusters": [static_cluster("xds", 18000), *clusters],
                                 "listeners": list(listeners)}}


def load(tmp_path, data, name="bootstrap.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return load_bootstrap(str(path))
