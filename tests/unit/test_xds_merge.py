"""merge() and diff() (baton.xds.merge): the bootstrap plus the agent's published config
becomes the snapshot workers run, and diff() says what a worker must touch.

The rule that matters most: compared by value, an update touches only what it changed (an
EDS update changes one cluster and no listener; a route update changes the listener that uses
it; a listener moved to another address is removed and added, never changed in place).
"""

import copy

import pytest
from hypothesis import given, settings, strategies as st

from baton.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE
from baton.xds.dynamic import DynamicConfig
from baton.xds.merge import diff, merge

from .xds_helpers import (assignment, eds_cluster, hcm, http_listener, load, route_config,
                          socket, sotw_update, static_cluster, tcp_listener, xds_bootstrap)


def inline_http_listener(name, port):
    return {"name": name, "address": socket("127.0.0.1", port),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm(route_config=route_config("inline", cluster="static_c"))}]}]}


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    """Static: `static_c` (STATIC), `static_e` (EDS of service static-svc), a tcp listener,
    a listener with rds 'static-routes' and one with an inline route_config."""
    return load(tmp_path_factory.mktemp("merge"), xds_bootstrap(
        clusters=[static_cluster("static_c"), eds_cluster("static_e", "static-svc")],
        listeners=[tcp_listener("tcp", 10000, cluster="static_c"),
                   http_listener("rds", 10001, "static-routes"),
                   inline_http_listener("inline", 10002)]))


def dynamic(static, *updates):
    """The agent's published config after `updates` (each (type_url, version, *resources))."""
    config = DynamicConfig(copy.deepcopy(static))
    for type_url, version, *resources in updates:
        assert config.apply(sotw_update(type_url, version, *resources), 0.0) == []
    config.promote(0.0)
    return config.published(0.0)


ENDPOINTS = (ENDPOINT, "1", assignment("static-svc", 1), assignment("dyn-svc", 2))
CLUSTERS = (CLUSTER, "1", eds_cluster("dyn_e", "dyn-svc"), static_cluster("dyn_c", 9000))
ROUTES = (ROUTE, "1", route_config("static-routes", cluster="static_c"),
          route_config("dyn-routes", cluster="dyn_c"))
LISTENERS = (LISTENER, "1", tcp_listener("dyn_tcp", 11000, cluster="dyn_c"),
             http_listener("dyn_http", 11001, "dyn-routes"))


def chain_http(listener):
    return listener["filter_chains"][0]["http"]


# --- merge -------------------------------------------------------------------------------------

def test_merge_without_dynamic_config_is_the_bootstrap_with_empty_eds_and_rds(static):
    snap = merge(static, None)
    assert {k: v for k, v in snap.items() if k not in ("listeners", "clusters")} == \
        {k: v for k, v in static.items() if k not in ("listeners", "clusters")}
    assert snap["clusters"]["static_e"] == {**static["clusters"]["static_e"], "endpoints": []}
    assert snap["clusters"]["static_c"] == static["clusters"]["static_c"]
    tcp, rds, inline = snap["listeners"]
    assert tcp == static["listeners"][0] and inline == static["listeners"][2]
    assert chain_http(rds)["route_config"] is None                 # until RDS answers
    assert chain_http(rds)["rds"]["route_config_name"] == "static-routes"


def test_merge_fills_eds_endpoints_by_service_name(static):
    snap = merge(static, dynamic(static, ENDPOINTS, CLUSTERS))
    clusters = snap["clusters"]
    assert sorted(clusters) == ["dyn_c", "dyn_e", "static_c", "static_e", "xds"]
    assert clusters["static_e"]["endpoints"] == [{"address": "127.0.0.1", "port": 1, "weight": 1}]
    assert clusters["dyn_e"]["endpoints"] == [{"address": "127.0.0.1", "port": 2, "weight": 1}]
    assert clusters["dyn_c"]["endpoints"] == [{"address": "127.0.0.1", "port": 9000,
                                               "weight": 1}]


def test_merge_fills_rds_route_tables_and_appends_dynamic_listeners(static):
    published = dynamic(static, CLUSTERS, ROUTES, LISTENERS)
    snap = merge(static, published)
    assert [l["name"] for l in snap["listeners"]] == ["tcp", "rds", "inline", "dyn_tcp",
                                                      "dyn_http"]
    by_name = {l["name"]: l for l in snap["listeners"]}
    assert chain_http(by_name["rds"])["route_config"] == published["routes"]["static-routes"]
    assert chain_http(by_name["dyn_http"])["route_config"] == published["routes"]["dyn-routes"]
    assert chain_http(by_name["dyn_http"])["route_config"]["virtual_hosts"][0]["routes"][0][
        "action"]["cluster"] == "dyn_c"
    assert chain_http(by_name["inline"])["route_config"]["name"] == "inline"


def test_merge_leaves_its_inputs_alone(static):
    published = dynamic(static, ENDPOINTS, CLUSTERS, ROUTES, LISTENERS)
    static_before, published_before = copy.deepcopy(static), copy.deepcopy(published)
    merge(static, published)
    assert static == static_before and published == published_before


# --- diff --------------------------------------------------------------------------------------

def test_diff_of_the_same_config_changes_nothing(static):
    updates = (ENDPOINTS, CLUSTERS, ROUTES, LISTENERS)
    old = merge(static, dynamic(static, *updates))
    new = merge(static, dynamic(static, *updates))      # equal values, built afresh
    changes = diff(old, new)
    assert not changes
    assert (changes.added_listeners, changes.changed_listeners, changes.removed_listeners,
            changes.changed_clusters, changes.removed_clusters) == ([], [], [], {}, [])


def test_an_eds_change_changes_only_that_cluster(static):
    old = merge(static, dynamic(static, ENDPOINTS, CLUSTERS, ROUTES, LISTENERS))
    new = merge(static, dynamic(static, (ENDPOINT, "2", assignment("static-svc", 1),
                                         assignment("dyn-svc", 2, 3)),
                                CLUSTERS, ROUTES, LISTENERS))
    changes = diff(old, new)
    assert list(changes.changed_clusters) == ["dyn_e"]
    assert [e["port"] for e in changes.changed_clusters["dyn_e"]["endpoints"]] == [2, 3]
    assert (changes.added_listeners, changes.changed_listeners, changes.removed_listeners,
            changes.removed_clusters) == ([], [], [], [])


def test_a_route_change_changes_the_listener_that_uses_it_in_place(static):
    old = merge(static, dynamic(static, CLUSTERS, ROUTES, LISTENERS))
    new = merge(static, dynamic(static, CLUSTERS, (ROUTE, "2", route_config("static-routes",
                                                                           cluster="static_c"),
                                                   route_config("dyn-routes", cluster="other")),
                                LISTENERS))
    changes = diff(old, new)
    assert [l["name"] for l in changes.changed_listeners] == ["dyn_http"]
    assert changes.added_listeners == [] and changes.removed_listeners == []
    assert changes.changed_clusters == {} and changes.removed_clusters == []


def test_a_listener_moved_to_another_address_is_removed_and_added(static):
    old = merge(static, dynamic(static, CLUSTERS, LISTENERS))
    new = merge(static, dynamic(static, CLUSTERS, (LISTENER, "2",
                                                   tcp_listener("dyn_tcp", 12000, cluster="dyn_c"),
                                                   http_listener("dyn_http", 11001,
                                                                 "dyn-routes"))))
    changes = diff(old, new)
    assert changes.removed_listeners == ["dyn_tcp"]
    assert [(l["name"], l["port"]) for l in changes.added_listeners] == [("dyn_tcp", 12000)]
    assert changes.changed_listeners == []


def test_a_listener_changed_at_the_same_address_is_changed(static):
    old = merge(static, dynamic(static, CLUSTERS, LISTENERS))
    moved_cluster = tcp_listener("dyn_tcp", 11000, cluster="static_c")
    new = merge(static, dynamic(static, CLUSTERS, (LISTENER, "2", moved_cluster,
                                                   http_listener("dyn_http", 11001,
                                                                 "dyn-routes"))))
    changes = diff(old, new)
    assert [l["name"] for l in changes.changed_listeners] == ["dyn_tcp"]
    assert changes.added_listeners == [] and changes.removed_listeners == []


def test_listeners_and_clusters_added_and_removed(static):
    old = merge(static, dynamic(static, ENDPOINTS, CLUSTERS, ROUTES, LISTENERS))
    assert {"dyn_http", "dyn_tcp"} <= {l["name"] for l in old["listeners"]}
    assert "dyn_e" in old["clusters"]
    new = merge(static, dynamic(static, ENDPOINTS, ROUTES,
                                (CLUSTER, "2", static_cluster("dyn_c", 9000),
                                         static_cluster("brand_new")),
                                (LISTENER, "2", tcp_listener("dyn_tcp", 11000, cluster="dyn_c"),
                                 tcp_listener("other", 11005))))
    changes = diff(old, new)
    assert changes.removed_listeners == ["dyn_http"]
    assert [l["name"] for l in changes.added_listeners] == ["other"]
    assert changes.removed_clusters == ["dyn_e"]
    assert list(changes.changed_clusters) == ["brand_new"]
    assert bool(changes)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=2, max_size=2),
       st.lists(st.integers(1, 3), min_size=2, max_size=2))
def test_endpoint_updates_change_exactly_the_clusters_whose_endpoints_changed(before, after):
    """Any endpoint update: the changed clusters are those whose endpoint list changed, and
    no listener is ever touched."""
    static = {"version": "bootstrap", "listeners": [
        {"name": "l", "address": "127.0.0.1", "port": 1, "filter_chains": []}],
        "clusters": {n: {"name": n, "type": "EDS", "eds": {"service_name": f"{n}-svc"}}
                     for n in ("a", "b")}}

    def published(ports):
        return {"endpoints": {f"{n}-svc": [{"address": "127.0.0.1", "port": p, "weight": 1}]
                              for n, p in zip("ab", ports)}}

    changes = diff(merge(static, published(before)), merge(static, published(after)))
    assert sorted(changes.changed_clusters) == [n for n, x, y in zip("ab", before, after)
                                                if x != y]
    assert not (changes.added_listeners or changes.changed_listeners
                or changes.removed_listeners or changes.removed_clusters)
    assert bool(changes) == (before != after)
