"""Bootstrap dynamic_resources, ConfigSource, eds_cluster_config and rds (baton.xds.config_source),
through load_bootstrap on small YAML files, as tests/unit/test_config.py does for the rest.

Baton speaks ADS only: every ConfigSource must be `ads: {}` (V3), dynamic_resources must have
an ads_config with one envoy_grpc service naming a static cluster it can dial.
"""

import copy

import pytest

from baton.xds.bootstrap import ConfigError

from .xds_helpers import (ADS, eds_cluster, http_listener, load, static_cluster, tcp_listener,
                          xds_bootstrap)

DR = "dynamic_resources"


def errors_of(tmp_path, data):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    return info.value.errors


# --- dynamic_resources -------------------------------------------------------------------------

def test_a_full_dynamic_resources_translates_to_the_xds_dict(tmp_path):
    snap = load(tmp_path, xds_bootstrap())
    assert snap["xds"] == {"api_type": "GRPC", "cluster": "xds", "lds": True, "cds": True,
                           "lds_initial_fetch_timeout": 15.0, "cds_initial_fetch_timeout": 15.0,
                           "set_node_on_first_message_only": False}


def test_delta_timeouts_and_node_once(tmp_path):
    data = xds_bootstrap(api_type="DELTA_GRPC", lds_timeout="2.5s", cds_timeout="0s")
    data[DR]["ads_config"]["set_node_on_first_message_only"] = True
    xds = load(tmp_path, data)["xds"]
    assert xds["api_type"] == "DELTA_GRPC" and xds["set_node_on_first_message_only"] is True
    assert (xds["lds_initial_fetch_timeout"], xds["cds_initial_fetch_timeout"]) == (2.5, 0.0)


def test_only_the_configured_wildcards_are_opened(tmp_path):
    xds = load(tmp_path, xds_bootstrap(lds=False))["xds"]
    assert (xds["lds"], xds["cds"]) == (False, True)


def test_no_dynamic_resources_no_xds(tmp_path):
    data = xds_bootstrap(listeners=[tcp_listener("l", 10000, cluster="xds")])
    del data[DR]
    assert load(tmp_path, data)["xds"] is None


def test_ads_config_is_required(tmp_path):
    data = xds_bootstrap()
    del data[DR]["ads_config"]
    assert errors_of(tmp_path, data) == [
        f"{DR}.ads_config: required (Baton gets dynamic resources over ADS only)"]


@pytest.mark.parametrize("api_type", ["REST", "AGGREGATED_GRPC"])
def test_api_types_other_than_grpc_and_delta_grpc_are_refused(tmp_path, api_type):
    (error,) = errors_of(tmp_path, xds_bootstrap(api_type=api_type))
    assert error == f"{DR}.ads_config.api_type: {api_type} not supported (GRPC or DELTA_GRPC)"


def test_transport_api_version_v2_is_refused(tmp_path):
    data = xds_bootstrap()
    data[DR]["ads_config"]["transport_api_version"] = "V2"
    assert f"{DR}.ads_config.transport_api_version: V3 only" in errors_of(tmp_path, data)


def test_exactly_one_grpc_service(tmp_path):
    data = xds_bootstrap()
    data[DR]["ads_config"]["grpc_services"] *= 2
    assert errors_of(tmp_path, data) == [
        f"{DR}.ads_config.grpc_services: exactly one entry is supported, got 2"]


def test_google_grpc_is_refused(tmp_path):
    data = xds_bootstrap()
    data[DR]["ads_config"]["grpc_services"] = [
        {"google_grpc": {"target_uri": "127.0.0.1:18000", "stat_prefix": "ads"}}]
    errors = errors_of(tmp_path, data)
    assert any(e.startswith(f"{DR}.ads_config.grpc_services[0]") for e in errors)


def test_the_ads_cluster_must_be_a_static_cluster(tmp_path):
    data = xds_bootstrap()
    data[DR]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "nowhere"
    assert errors_of(tmp_path, data) == [
        f"{DR}.ads_config.grpc_services[0].envoy_grpc.cluster_name: unknown cluster 'nowhere' "
        "(it must be a static cluster)"]


def test_the_ads_cluster_needs_an_endpoint(tmp_path):
    data = xds_bootstrap(clusters=[eds_cluster("eds_xds")])
    data[DR]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "eds_xds"
    assert errors_of(tmp_path, data) == [
        f"{DR}.ads_config.grpc_services[0].envoy_grpc.cluster_name: cluster 'eds_xds' has no "
        "endpoint to dial"]


def test_a_broken_ads_cluster_is_reported_once(tmp_path):
    data = xds_bootstrap()
    data["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    errors = errors_of(tmp_path, data)
    assert len(errors) == 1 and errors[0].startswith("static_resources.clusters[0].lb_policy")


# --- ConfigSource ------------------------------------------------------------------------------

def test_a_config_source_other_than_ads_is_refused_with_its_path(tmp_path):
    data = xds_bootstrap()
    data[DR]["lds_config"] = {"path_config_source": {"path": "/etc/lds.yaml"}}
    errors = errors_of(tmp_path, data)
    assert (f"{DR}.lds_config: only 'ads: {{}}' is supported (the ADS stream of "
            f"{DR}.ads_config), got 'path_config_source'") in errors
    assert all(e.startswith(f"{DR}.lds_config") for e in errors)


def test_an_empty_config_source_is_refused(tmp_path):
    data = xds_bootstrap()
    data[DR]["cds_config"] = {"initial_fetch_timeout": "1s"}
    assert errors_of(tmp_path, data) == [
        f"{DR}.cds_config: only 'ads: {{}}' is supported (the ADS stream of {DR}.ads_config), "
        "got nothing"]


def test_resource_api_version_v2_is_refused(tmp_path):
    data = xds_bootstrap()
    data[DR]["cds_config"]["resource_api_version"] = "V2"
    assert errors_of(tmp_path, data) == [f"{DR}.cds_config.resource_api_version: V3 only"]


def test_resource_api_version_auto_is_v3(tmp_path):
    data = xds_bootstrap()
    data[DR]["cds_config"] = {"ads": {}}
    assert load(tmp_path, data)["xds"]["cds"] is True


# --- eds_cluster_config ------------------------------------------------------------------------

def test_an_eds_cluster_asks_for_its_service_name_or_its_own_name(tmp_path):
    snap = load(tmp_path, xds_bootstrap(clusters=[eds_cluster("named", "svc", timeout="3s"),
                                                  eds_cluster("plain")]))
    assert snap["clusters"]["named"]["eds"] == {"service_name": "svc",
                                                "initial_fetch_timeout": 3.0}
    assert snap["clusters"]["plain"]["eds"] == {"service_name": "plain",
                                                "initial_fetch_timeout": 15.0}
    assert snap["clusters"]["plain"]["endpoints"] == []
    assert snap["clusters"]["xds"]["eds"] is None


def test_eds_config_is_required(tmp_path):
    cluster = eds_cluster("e")
    del cluster["eds_cluster_config"]["eds_config"]
    assert errors_of(tmp_path, xds_bootstrap(clusters=[cluster])) == [
        "static_resources.clusters[1].eds_cluster_config.eds_config: required (ads: {})"]


def test_eds_config_must_be_ads(tmp_path):
    cluster = eds_cluster("e")
    cluster["eds_cluster_config"]["eds_config"] = {"path_config_source": {"path": "/x"}}
    errors = errors_of(tmp_path, xds_bootstrap(clusters=[cluster]))
    assert ("static_resources.clusters[1].eds_cluster_config.eds_config: only 'ads: {}' is "
            "supported (the ADS stream of dynamic_resources.ads_config), got "
            "'path_config_source'") in errors


def test_an_eds_cluster_has_no_load_assignment(tmp_path):
    cluster = eds_cluster("e", load_assignment={"cluster_name": "e"})
    assert errors_of(tmp_path, xds_bootstrap(clusters=[cluster])) == [
        "static_resources.clusters[1].load_assignment: an EDS cluster gets its endpoints from EDS"]


def test_eds_cluster_config_only_for_eds(tmp_path):
    cluster = static_cluster("s", eds_cluster_config={"eds_config": copy.deepcopy(ADS)})
    assert errors_of(tmp_path, xds_bootstrap(clusters=[cluster])) == [
        "static_resources.clusters[1].eds_cluster_config: only for type EDS"]


def test_ads_config_sources_need_an_ads_config(tmp_path):
    data = xds_bootstrap(clusters=[eds_cluster("e")],
                         listeners=[tcp_listener("l", 10000, cluster="e")])
    del data[DR]
    assert errors_of(tmp_path, data) == [
        "static_resources.clusters[1].eds_cluster_config.eds_config: an 'ads: {}' config "
        "source needs dynamic_resources.ads_config"]


# --- rds -----------------------------------------------------------------------------------------

H0 = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def test_rds_translates_to_name_and_timeout_with_no_route_table_yet(tmp_path):
    snap = load(tmp_path, xds_bootstrap(listeners=[http_listener("h", 10000, "routes", "4s")]))
    http = snap["listeners"][0]["filter_chains"][0]["http"]
    assert http["rds"] == {"route_config_name": "routes", "initial_fetch_timeout": 4.0}
    assert http["route_config"] is None


def test_rds_needs_a_route_config_name_and_a_config_source(tmp_path):
    listener = http_listener("h", 10000, "routes")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["rds"] = {}
    errors = errors_of(tmp_path, xds_bootstrap(listeners=[listener]))
    assert f"{H0}.rds.route_config_name: required" in errors
    assert f"{H0}.rds.config_source: required (ads: {{}})" in errors


def test_rds_config_source_must_be_ads_v3(tmp_path):
    listener = http_listener("h", 10000, "routes")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["rds"]["config_source"]["resource_api_version"] = "V2"
    assert errors_of(tmp_path, xds_bootstrap(listeners=[listener])) == [
        f"{H0}.rds.config_source.resource_api_version: V3 only"]
