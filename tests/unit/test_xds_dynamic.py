"""DynamicConfig (baton.xds.dynamic): what an xDS response does to the accepted config.

Envoy's rules checked here: a response is applied whole or not at all (one bad resource
NACKs it, and nothing of it changes); state of the world removes LDS/CDS resources absent
from a response but keeps absent RDS/EDS ones; delta removes what removed_resources names;
new EDS clusters and rds listeners warm until their endpoints / routes arrive or their
initial_fetch_timeout passes, while the previous version keeps serving; validate_clusters
(default false for RDS) decides whether a route may name an unknown cluster.
"""

import copy

import pytest
from hypothesis import given, settings, strategies as st

from baton.xds import protos
from baton.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsProtocol
from baton.xds.dynamic import MAX_ERROR, DynamicConfig, error_detail

from .xds_helpers import (assignment, delta_response, delta_update, eds_cluster, http_listener,
                          load, message, packed, route_config, sotw_update, static_cluster,
                          tcp_listener, xds_bootstrap)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The bootstrap snapshot: ADS over `xds`, LDS and CDS, a static cluster `static_c` and a
    static listener `static_l` on 127.0.0.1:10000."""
    return load(tmp_path_factory.mktemp("xds"), xds_bootstrap(
        clusters=[static_cluster("static_c")],
        listeners=[tcp_listener("static_l", 10000, cluster="static_c")]))


@pytest.fixture
def config(base):
    return DynamicConfig(copy.deepcopy(base), started=0.0)


def state(config):
    """Everything apply() may change, for "a NACK changes nothing" checks."""
    return copy.deepcopy((
        {t: {n: (a.version, a.value, a.raw) for n, a in by_name.items()}
         for t, by_name in config.accepted.items()},
        config.versions, config.responded, config.active_clusters,
        {n: (w.value, w.since, w.timeout) for n, w in config.warming_clusters.items()},
        config.active_listeners,
        {n: (w.value, w.since, w.timeout) for n, w in config.warming_listeners.items()},
        config.listener_order))


# --- accepting and rejecting -------------------------------------------------------------------

def test_a_valid_cds_response_is_accepted_and_published(config):
    assert config.apply(sotw_update(CLUSTER, "1", static_cluster("c1", 9001)), 0.0) == []
    published = config.published(0.0)
    assert list(published["clusters"]) == ["c1"]
    assert published["clusters"]["c1"]["endpoints"] == [
        {"address": "127.0.0.1", "port": 9001, "weight": 1}]
    assert published["versions"]["cds"] == "1"
    assert config.accepted[CLUSTER]["c1"].version == "1"


def test_one_bad_resource_rejects_the_whole_response_and_changes_nothing(config):
    assert config.apply(sotw_update(CLUSTER, "1", static_cluster("keep")), 0.0) == []
    before = state(config)
    bad = message(CLUSTER, static_cluster("bad"))
    bad.lb_policy = 42                                   # proto3 enums are open on the wire
    errors = config.apply(sotw_update(CLUSTER, "2", static_cluster("new"), bad), 1.0)
    assert errors == ["Cluster[bad].lb_policy: 42 is not a value of enum "
                      "envoy.config.cluster.v3.Cluster.LbPolicy"]
    assert state(config) == before
    assert "new" not in config.published(1.0)["clusters"]
    assert config.published(1.0)["versions"]["cds"] == "1"


def test_every_bad_resource_is_named(config):
    errors = config.apply(sotw_update(CLUSTER, "1",
                                      static_cluster("a", lb_policy="CLUSTER_PROVIDED"),
                                      static_cluster("b", type="LOGICAL_DNS")), 0.0)
    assert len(errors) == 2
    assert errors[0].startswith("Cluster[a].lb_policy: ")
    assert errors[1].startswith("Cluster[b].type: LOGICAL_DNS not supported")


@pytest.mark.parametrize("type_url, build, path", [
    (CLUSTER, lambda m: setattr(m, "type", 77), "Cluster[c].type"),
    (CLUSTER, lambda m: setattr(m, "dns_lookup_family", 9), "Cluster[c].dns_lookup_family"),
    (CLUSTER, lambda m: setattr(m.circuit_breakers.thresholds.add(), "priority", 5),
     "Cluster[c].circuit_breakers.thresholds[0].priority"),
    (LISTENER, lambda m: setattr(m.address.socket_address, "protocol", 9),
     "Listener[c].address.socket_address.protocol"),
    (ROUTE, lambda m: setattr(m.virtual_hosts[0].routes[0].route,
                              "cluster_not_found_response_code", 9),
     "RouteConfiguration[c].virtual_hosts[0].routes[0].route.cluster_not_found_response_code"),
])
def test_an_unknown_enum_number_is_nacked_with_its_path(config, type_url, build, path):
    data = {CLUSTER: static_cluster("c"), LISTENER: tcp_listener("c", 10001),
            ROUTE: route_config("c")}[type_url]
    msg = message(type_url, data)
    build(msg)
    (error,) = config.apply(sotw_update(type_url, "1", msg), 0.0)
    assert error.startswith(f"{path}: ") and "is not a value of enum" in error


def test_an_unknown_enum_inside_a_typed_config_is_named(config):
    msg = message(LISTENER, http_listener("l", 10001))
    hcm = protos.HttpConnectionManager()
    msg.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.codec_type = 55
    msg.filter_chains[0].filters[0].typed_config.Pack(hcm)
    (error,) = config.apply(sotw_update(LISTENER, "1", msg), 0.0)
    assert error.startswith("Listener[l].filter_chains[0].filters[0].typed_config.codec_type: ")


def test_a_resource_of_another_type_is_rejected(config):
    update = sotw_update(CLUSTER, "1", packed(message(LISTENER, tcp_listener("l", 10001))))
    (error,) = config.apply(update, 0.0)
    assert error == ("Cluster[l]: a envoy.config.listener.v3.Listener in a Cluster response")


def test_undecodable_bytes_are_rejected(config):
    any_pb = packed(message(CLUSTER, static_cluster("c")))
    any_pb.value = b"\x0a\x01c" + b"\xff\xff"            # name "c", then garbage
    (error,) = config.apply(sotw_update(CLUSTER, "1", any_pb), 0.0)
    assert error.startswith("Cluster[c]: cannot decode the resource")


def test_a_delta_resource_named_unlike_its_content_is_rejected(config):
    update = delta_update(CLUSTER, [("alias", "1", static_cluster("real"))])
    assert config.apply(update, 0.0) == [
        "Cluster[alias]: the resource is named 'real', not 'alias'"]


def test_a_static_cluster_name_is_not_changed_by_cds(config):
    (error,) = config.apply(sotw_update(CLUSTER, "1", static_cluster("static_c", 9999)), 0.0)
    assert error.startswith("Cluster[static_c]: a static cluster has that name")
    assert config.published(0.0)["clusters"] == {}


def test_strict_dns_from_cds_is_refused(config):
    data = static_cluster("d", type="STRICT_DNS")
    data["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
        "socket_address": {"address": "localhost", "port_value": 80}}
    (error,) = config.apply(sotw_update(CLUSTER, "1", data), 0.0)
    assert error.startswith("Cluster[d].type: STRICT_DNS is not supported from CDS")


def test_a_static_listener_name_is_not_changed_by_lds(config):
    (error,) = config.apply(sotw_update(LISTENER, "1", tcp_listener("static_l", 10001)), 0.0)
    assert error == "Listener[static_l]: a static listener has that name"


@pytest.mark.parametrize("type_url, make", [
    (CLUSTER, lambda: (static_cluster("dup", 1), static_cluster("dup", 2))),
    (LISTENER, lambda: (tcp_listener("dup", 10001), tcp_listener("dup", 10002))),
], ids=["cds", "lds"])
def test_duplicate_names_in_a_sotw_response_are_nacked(config, type_url, make):
    errors = config.apply(sotw_update(type_url, "1", *make()), 0.0)
    assert errors and "dup" in errors[0]


def test_duplicate_names_in_a_delta_response_are_nacked(config):
    update = delta_update(CLUSTER, [("dup", "1", static_cluster("dup", 1)),
                                    ("dup", "2", static_cluster("dup", 2))])
    errors = config.apply(update, 0.0)
    assert errors and "dup" in errors[0]


def test_a_delta_response_adding_and_removing_one_name_is_nacked(config):
    protocol = AdsProtocol({"id": "n"}, delta=True)
    protocol.set_interest(CLUSTER, None)
    protocol.stream_started()
    update = protocol.on_response(delta_response(CLUSTER, "n1", [("a", "1", static_cluster("a"))],
                                                 removed=["a"]))
    errors = config.apply(update, 0.0)
    if not errors:                      # what happens today: the two halves disagree
        protocol.ack(update)
        assert ("a" in protocol.types[CLUSTER].held) == ("a" in config.accepted[CLUSTER])
    assert errors


# --- listener addresses ------------------------------------------------------------------------

def test_a_listener_on_a_static_listeners_address_is_nacked(config):
    errors = config.apply(sotw_update(LISTENER, "1", tcp_listener("dyn", 10000)), 0.0)
    assert errors == ["Listener[dyn].address: 127.0.0.1:10000 is already used by listener "
                      "'static_l'"]
    assert config.published(0.0)["listeners"] == []


def test_address_conflicts_compare_ip_addresses_not_spellings(tmp_path):
    snap = load(tmp_path, xds_bootstrap(listeners=[tcp_listener("v6", 10000, address="::1",
                                                                cluster="xds")]))
    config = DynamicConfig(snap)
    errors = config.apply(sotw_update(LISTENER, "1",
                                      tcp_listener("dyn", 10000, address="0:0::1")), 0.0)
    assert len(errors) == 1 and "already used by listener 'v6'" in errors[0]


def test_two_dynamic_listeners_on_one_address_are_nacked(config):
    errors = config.apply(sotw_update(LISTENER, "1", tcp_listener("a", 10001),
                                      tcp_listener("b", 10001)), 0.0)
    assert errors == ["Listener[b].address: 127.0.0.1:10001 is already used by listener 'a'"]


def test_sotw_an_address_freed_in_the_same_response_can_be_taken(config):
    assert config.apply(sotw_update(LISTENER, "1", tcp_listener("a", 10001)), 0.0) == []
    assert config.apply(sotw_update(LISTENER, "2", tcp_listener("b", 10001)), 0.0) == []
    assert [l["name"] for l in config.published(0.0)["listeners"]] == ["b"]


def test_delta_an_address_held_by_an_accepted_listener_is_nacked_unless_removed(config):
    assert config.apply(delta_update(LISTENER, [("a", "1", tcp_listener("a", 10001))]), 0) == []
    errors = config.apply(delta_update(LISTENER, [("b", "1", tcp_listener("b", 10001))]), 0)
    assert errors == ["Listener[b].address: 127.0.0.1:10001 is already used by listener 'a'"]
    assert config.apply(delta_update(LISTENER, [("b", "1", tcp_listener("b", 10001))],
                                     removed=["a"]), 0) == []
    assert [l["name"] for l in config.published(0.0)["listeners"]] == ["b"]


# --- removal: state of the world and delta -----------------------------------------------------

def test_sotw_cds_removes_clusters_absent_from_the_response(config):
    config.apply(sotw_update(CLUSTER, "1", static_cluster("a"), static_cluster("b")), 0.0)
    assert config.apply(sotw_update(CLUSTER, "2", static_cluster("b")), 0.0) == []
    assert list(config.published(0.0)["clusters"]) == ["b"]
    assert list(config.accepted[CLUSTER]) == ["b"]


def test_sotw_lds_removes_listeners_absent_from_the_response(config):
    config.apply(sotw_update(LISTENER, "1", tcp_listener("a", 10001),
                             tcp_listener("b", 10002)), 0.0)
    assert config.apply(sotw_update(LISTENER, "2"), 0.0) == []        # an empty set: none
    assert config.published(0.0)["listeners"] == []


def test_sotw_eds_and_rds_keep_resources_absent_from_the_response(config):
    config.apply(sotw_update(ENDPOINT, "1", assignment("s1", 1), assignment("s2", 2)), 0.0)
    config.apply(sotw_update(ENDPOINT, "2", assignment("s2", 3)), 0.0)
    assert config.published(0.0)["endpoints"] == {
        "s1": [{"address": "127.0.0.1", "port": 1, "weight": 1}],
        "s2": [{"address": "127.0.0.1", "port": 3, "weight": 1}]}
    config.apply(sotw_update(ROUTE, "1", route_config("r1"), route_config("r2")), 0.0)
    config.apply(sotw_update(ROUTE, "2", route_config("r2", cluster="other")), 0.0)
    assert sorted(config.published(0.0)["routes"]) == ["r1", "r2"]


def test_delta_removes_what_removed_resources_names(config):
    config.apply(delta_update(CLUSTER, [("a", "1", static_cluster("a")),
                                        ("b", "1", static_cluster("b"))]), 0.0)
    assert config.apply(delta_update(CLUSTER, [("c", "1", static_cluster("c"))]), 0.0) == []
    assert sorted(config.published(0.0)["clusters"]) == ["a", "b", "c"]   # nothing implied
    assert config.apply(delta_update(CLUSTER, removed=["a", "never-held"]), 0.0) == []
    assert sorted(config.published(0.0)["clusters"]) == ["b", "c"]
    config.apply(delta_update(ENDPOINT, [("s", "1", assignment("s", 1))]), 0.0)
    config.apply(delta_update(ENDPOINT, removed=["s"]), 0.0)
    assert config.published(0.0)["endpoints"] == {}


def test_delta_keeps_each_resources_own_version(config):
    config.apply(delta_update(CLUSTER, [("a", "va", static_cluster("a")),
                                        ("b", "vb", static_cluster("b"))], system_version="s1"),
                 0.0)
    assert {n: a.version for n, a in config.accepted[CLUSTER].items()} == {"a": "va", "b": "vb"}
    assert config.published(0.0)["versions"]["cds"] == "s1"


def test_the_same_content_again_keeps_its_timestamp_and_takes_the_new_version(config):
    config.apply(sotw_update(CLUSTER, "1", static_cluster("a")), 0.0)
    first = config.accepted[CLUSTER]["a"]
    first.updated = "then"
    config.apply(sotw_update(CLUSTER, "2", static_cluster("a")), 5.0)
    again = config.accepted[CLUSTER]["a"]
    assert (again.updated, again.version) == ("then", "2")


# --- warming: clusters -------------------------------------------------------------------------

def test_an_eds_cluster_warms_until_its_endpoints_arrive(config):
    assert config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc")), 0.0) == []
    assert config.published(0.0)["clusters"] == {}
    assert "e" in config.warming_clusters
    assert config.interest(ENDPOINT) == {"svc"}            # asked for while warming
    assert "eds: cluster 'e' is warming (waits for its endpoints)" in config.missing(0.0)
    assert config.apply(sotw_update(ENDPOINT, "1", assignment("svc", 7)), 1.0) == []
    published = config.published(1.0)
    assert list(published["clusters"]) == ["e"]
    assert published["endpoints"]["svc"] == [{"address": "127.0.0.1", "port": 7, "weight": 1}]
    assert config.warming_clusters == {}


def test_an_eds_cluster_without_service_name_asks_for_its_own_name(config):
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("own")), 0.0)
    assert config.interest(ENDPOINT) == {"own"}


def test_interest_in_endpoints_includes_static_eds_clusters(tmp_path):
    snap = load(tmp_path, xds_bootstrap(clusters=[eds_cluster("se", "static-svc")]))
    config = DynamicConfig(snap)
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("de", "dyn-svc"),
                             static_cluster("plain")), 0.0)
    assert config.interest(ENDPOINT) == {"static-svc", "dyn-svc"}
    assert config.interest(CLUSTER) is None and config.interest(LISTENER) is None


def test_wildcards_follow_the_bootstrap(tmp_path):
    config = DynamicConfig(load(tmp_path, xds_bootstrap(lds=False)))
    assert config.interest(LISTENER) == frozenset() and config.interest(CLUSTER) is None


def test_an_eds_cluster_times_out_into_service_without_endpoints(config):
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc", timeout="2s")), 10.0)
    assert config.next_deadline() == 12.0
    assert config.promote(11.9) is False and config.published(11.9)["clusters"] == {}
    assert config.promote(12.0) is True
    assert list(config.published(12.0)["clusters"]) == ["e"]
    assert config.next_deadline() is None


def test_an_initial_fetch_timeout_of_zero_waits_forever(config):
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc", timeout="0s")), 0.0)
    assert config.next_deadline() is None
    assert config.promote(1e9) is False
    assert "e" in config.warming_clusters


def test_a_changed_eds_cluster_warms_while_the_old_version_serves(config):
    config.apply(sotw_update(ENDPOINT, "1", assignment("old-svc", 1)), 0.0)
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "old-svc")), 0.0)
    old = config.published(0.0)["clusters"]["e"]
    assert old["eds"]["service_name"] == "old-svc"
    config.apply(sotw_update(CLUSTER, "2", eds_cluster("e", "new-svc")), 1.0)
    assert config.published(1.0)["clusters"]["e"] == old          # still the old one
    assert config.interest(ENDPOINT) == {"old-svc", "new-svc"}
    config.apply(sotw_update(ENDPOINT, "2", assignment("new-svc", 2)), 2.0)
    assert config.published(2.0)["clusters"]["e"]["eds"]["service_name"] == "new-svc"


def test_a_changed_cluster_with_known_endpoints_is_warm_at_once(config):
    config.apply(sotw_update(ENDPOINT, "1", assignment("svc", 1)), 0.0)
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc")), 0.0)
    config.apply(sotw_update(CLUSTER, "2", eds_cluster("e", "svc", connect_timeout="3s")), 1.0)
    assert config.published(1.0)["clusters"]["e"]["connect_timeout"] == 3.0
    assert config.warming_clusters == {}


def test_a_removed_warming_cluster_stops_warming(config):
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc", timeout="1s")), 0.0)
    config.apply(sotw_update(CLUSTER, "2"), 0.5)
    assert config.warming_clusters == {} and config.next_deadline() is None
    assert config.promote(5.0) is False and config.published(5.0)["clusters"] == {}


def test_a_static_cluster_needs_no_warming(config):
    config.apply(sotw_update(CLUSTER, "1", static_cluster("s")), 0.0)
    assert config.warming_clusters == {} and "s" in config.active_clusters


# --- warming: listeners and routes -------------------------------------------------------------

def test_an_rds_listener_warms_until_its_routes_arrive(config):
    config.apply(sotw_update(LISTENER, "1", http_listener("h", 10001, "routes")), 0.0)
    assert config.published(0.0)["listeners"] == []
    assert config.interest(ROUTE) == {"routes"}
    assert "rds: listener 'h' is warming (waits for its routes)" in config.missing(0.0)
    config.apply(sotw_update(ROUTE, "1", route_config("routes")), 1.0)
    published = config.published(1.0)
    assert [l["name"] for l in published["listeners"]] == ["h"]
    assert published["routes"]["routes"]["name"] == "routes"


def test_an_rds_listener_times_out_into_service_without_routes(config):
    config.apply(sotw_update(LISTENER, "1", http_listener("h", 10001, "routes", "3s")), 1.0)
    assert config.next_deadline() == 4.0
    assert config.promote(3.5) is False
    assert config.promote(4.0) is True
    assert [l["name"] for l in config.published(4.0)["listeners"]] == ["h"]
    assert config.published(4.0)["routes"] == {}


def test_a_listener_whose_routes_are_known_is_warm_at_once(config):
    config.apply(sotw_update(ROUTE, "1", route_config("routes")), 0.0)
    config.apply(sotw_update(LISTENER, "1", http_listener("h", 10001, "routes")), 0.0)
    assert [l["name"] for l in config.published(0.0)["listeners"]] == ["h"]


def test_a_changed_listener_warms_while_the_old_version_serves(config):
    config.apply(sotw_update(ROUTE, "1", route_config("r1")), 0.0)
    config.apply(sotw_update(LISTENER, "1", http_listener("h", 10001, "r1")), 0.0)
    config.apply(sotw_update(LISTENER, "2", http_listener("h", 10001, "r2")), 1.0)
    (serving,) = config.published(1.0)["listeners"]
    assert serving["filter_chains"][0]["http"]["rds"]["route_config_name"] == "r1"
    assert config.interest(ROUTE) == {"r1", "r2"}
    config.apply(sotw_update(ROUTE, "2", route_config("r2")), 2.0)
    (serving,) = config.published(2.0)["listeners"]
    assert serving["filter_chains"][0]["http"]["rds"]["route_config_name"] == "r2"


def test_interest_in_routes_includes_static_rds_listeners(tmp_path):
    snap = load(tmp_path, xds_bootstrap(listeners=[http_listener("sh", 10000, "static-routes")]))
    config = DynamicConfig(snap)
    config.apply(sotw_update(LISTENER, "1", http_listener("dh", 10001, "dyn-routes")), 0.0)
    assert config.interest(ROUTE) == {"static-routes", "dyn-routes"}
    assert "rds: listener 'sh' waits for routes 'static-routes'" in config.missing(0.0)


# --- validate_clusters ---------------------------------------------------------------------------

def test_rds_does_not_check_clusters_by_default(config):
    assert config.apply(sotw_update(ROUTE, "1", route_config("r", cluster="nowhere")), 0.0) == []


def test_rds_validate_clusters_false_does_not_check(config):
    update = sotw_update(ROUTE, "1", route_config("r", cluster="nowhere", validate_clusters=False))
    assert config.apply(update, 0.0) == []


def test_rds_validate_clusters_true_nacks_an_unknown_cluster(config):
    update = sotw_update(ROUTE, "1", route_config("r", cluster="nowhere", validate_clusters=True))
    errors = config.apply(update, 0.0)
    assert errors == ["RouteConfiguration[r].virtual_hosts[0].routes[0].route.cluster: unknown "
                      "cluster 'nowhere'"]
    assert config.published(0.0)["routes"] == {}


def test_rds_validate_clusters_true_knows_static_active_and_warming_clusters(config):
    config.apply(sotw_update(CLUSTER, "1", static_cluster("dyn"), eds_cluster("warm", "svc")),
                 0.0)
    assert "warm" in config.warming_clusters
    for name in ("static_c", "dyn", "warm"):
        update = sotw_update(ROUTE, "1", route_config("r", cluster=name, validate_clusters=True))
        assert config.apply(update, 0.0) == [], name


# --- initialization ------------------------------------------------------------------------------

def test_not_initialized_until_cds_and_lds_respond(config):
    assert config.missing(0.0) == ["cds: no response from the control plane yet",
                                   "lds: no response from the control plane yet"]
    assert config.initialized(0.0) is False
    config.apply(sotw_update(CLUSTER, "1"), 0.0)
    assert config.missing(0.0) == ["lds: no response from the control plane yet"]
    config.apply(sotw_update(LISTENER, "1"), 0.0)
    assert config.missing(0.0) == [] and config.initialized(0.0) is True
    assert config.published(0.0)["initialized"] is True


def test_a_nacked_response_does_not_count_as_a_response(config):
    bad = message(CLUSTER, static_cluster("bad"))
    bad.lb_policy = 42
    config.apply(sotw_update(CLUSTER, "1", bad), 0.0)
    assert "cds: no response from the control plane yet" in config.missing(0.0)


def test_initialized_after_the_initial_fetch_timeouts_pass(tmp_path):
    config = DynamicConfig(load(tmp_path, xds_bootstrap(lds_timeout="2s", cds_timeout="3s")),
                           started=100.0)
    assert config.initialized(102.5) is False
    assert config.initialized(103.0) is True


def test_a_zero_initial_fetch_timeout_waits_for_the_response(tmp_path):
    config = DynamicConfig(load(tmp_path, xds_bootstrap(lds_timeout="0s", cds_timeout="0s")))
    assert config.initialized(1e9) is False


def test_a_warming_cluster_holds_initialization_until_its_deadline(config):
    config.apply(sotw_update(LISTENER, "1"), 0.0)
    config.apply(sotw_update(CLUSTER, "1", eds_cluster("e", "svc", timeout="5s")), 1.0)
    assert config.initialized(2.0) is False
    config.promote(6.0)
    assert config.initialized(6.0) is True


@pytest.mark.parametrize("static", [
    {"clusters": [eds_cluster("se", "svc", timeout="1s")]},
    {"listeners": [http_listener("sh", 10000, "routes", timeout="1s")]},
], ids=["static-eds-cluster", "static-rds-listener"])
def test_static_resources_stop_holding_initialization_after_their_timeout(tmp_path, static):
    snap = load(tmp_path, xds_bootstrap(lds=False, cds=False, **static))
    config = DynamicConfig(snap, started=0.0)
    assert config.initialized(0.5) is False
    assert config.initialized(100.0) is True


def test_a_type_that_responded_does_not_hold_initialization(tmp_path):
    config = DynamicConfig(load(tmp_path, xds_bootstrap(cds_timeout="0s", lds_timeout="2s")))
    assert config.apply(sotw_update(CLUSTER, "1"), 0.0) == []
    assert config.missing(5.0) == ["lds: no response from the control plane yet"]
    assert config.initialized(5.0) is True


# --- the published shape -----------------------------------------------------------------------

def test_published_lists_listeners_in_lds_order(config):
    config.apply(sotw_update(LISTENER, "1", tcp_listener("z", 10001), tcp_listener("a", 10002)),
                 0.0)
    published = config.published(0.0)
    assert [l["name"] for l in published["listeners"]] == ["z", "a"]
    assert set(published) == {"listeners", "clusters", "endpoints", "routes", "versions",
                              "missing", "initialized", "secrets"}
    assert published["versions"] == {"lds": "1", "rds": "", "cds": "", "eds": "", "sds": "",
                                     "ecds": ""}
    assert published["secrets"] == {"ads": {}}


# --- error_detail ------------------------------------------------------------------------------

def test_error_detail_joins_every_error():
    assert error_detail(["a: x", "b: y"]) == "a: x; b: y"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
                min_size=1, max_size=60))
def test_error_detail_is_bounded(errors):
    text = error_detail(errors)
    assert len(text.encode()) <= MAX_ERROR
    if len("; ".join(errors)) <= MAX_ERROR:
        assert text == "; ".join(errors)
    else:
        assert text.endswith(f" ... ({len(errors)} errors)")


def test_error_detail_is_bounded_in_bytes_for_non_ascii_names():
    errors = [f"Cluster[{'é' * 50}-{i}].lb_policy: no" for i in range(100)]
    assert len(error_detail(errors).encode()) <= MAX_ERROR


# --- property: all or nothing ------------------------------------------------------------------

CLUSTER_NAMES = st.sampled_from(["a", "b", "c"])
DELTA_CDS = st.tuples(
    st.dictionaries(CLUSTER_NAMES, st.integers(1, 3), max_size=3),  # name -> port (0: broken)
    st.lists(CLUSTER_NAMES, max_size=2, unique=True),                # removed
    st.booleans())                                                    # one resource broken?


def _cluster_message(name, port, broken):
    msg = message(CLUSTER, static_cluster(name, port))
    if broken:
        msg.lb_policy = 42
    return msg


@settings(max_examples=25, deadline=None)
@given(st.lists(DELTA_CDS, max_size=8))
def test_delta_cds_applies_whole_responses_or_nothing(base, steps):
    """Any sequence of delta CDS responses, some with a broken resource: the published
    clusters are exactly those of the accepted responses applied in order, and a rejected
    response changes no state at all."""
    config = DynamicConfig(copy.deepcopy(base))
    model = {}                                            # name -> port
    for changed, removed, broken in steps:
        broken = broken and bool(changed)
        removed = [n for n in removed if n not in changed]     # malformed otherwise (above)
        resources = [(n, str(p), _cluster_message(n, p, broken and i == 0))
                     for i, (n, p) in enumerate(sorted(changed.items()))]
        before = state(config)
        errors = config.apply(delta_update(CLUSTER, resources, removed), 0.0)
        if broken:
            assert len(errors) == 1 and "lb_policy" in errors[0]
            assert state(config) == before
        else:
            assert errors == []
            for name in removed:
                model.pop(name, None)
            model.update(changed)
        published = config.published(0.0)["clusters"]
        assert {n: c["endpoints"][0]["port"] for n, c in published.items()} == model


# --- the fast path for plain EDS endpoints -------------------------------------------------------

_ENDPOINT_EXTRAS = st.sampled_from([None, "weight", "weight0", "health", "metadata", "hostname",
                                    "ipv6", "protocol", "zone"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 70000), st.integers(0, 300), _ENDPOINT_EXTRAS),
                min_size=1, max_size=6))
def test_plain_endpoints_translate_as_the_general_path_does(endpoints):
    """translate_load_assignment's size-based fast path must give exactly what the general
    walk gives, and leave every error (and every unusual field) to the general walk."""
    from baton.xds import translate
    pb = protos.ClusterLoadAssignment(cluster_name="c")
    locality = pb.endpoints.add()
    for port, weight, extra in endpoints:
        lb = locality.lb_endpoints.add()
        sa = lb.endpoint.address.socket_address
        sa.address = {"hostname": "localhost", "ipv6": "::1", "zone": "fe80::1%lo"}.get(
            extra, "127.0.0.1")
        sa.port_value = port
        if extra == "weight":
            lb.load_balancing_weight.value = weight
        elif extra == "weight0":
            lb.load_balancing_weight.SetInParent()
        elif extra == "health":
            lb.health_status = 1
        elif extra == "metadata":
            lb.metadata.filter_metadata["m"].update({"k": "v"})
        elif extra == "protocol":
            sa.protocol = 1
    fast = translate._plain_endpoints(pb)
    errors = []
    general = translate.translate_load_assignment(pb, "x", errors, [], require_ip=False)
    if fast is not None:
        assert errors == [] and general == {"cluster_name": "c", "endpoints": fast}
    plain = all(extra in (None, "weight", "ipv6") and 0 < port <= 65535 and
                (extra != "weight" or weight > 0) for port, weight, extra in endpoints)
    assert (fast is not None) == plain
