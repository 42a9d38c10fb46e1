"""EDS health_status, endpoint metadata and health_check_config, as istiod sends them.

Envoy: UNHEALTHY, DRAINING and TIMEOUT take a host out of balancing (FAILED_EDS_HEALTH),
whatever the active health check says; HEALTHY and UNKNOWN leave it in."""

import pytest

from baton.worker.proxy.cluster import Cluster
from baton.xds import protos
from baton.xds.translate import translate_load_assignment


def assignment(*endpoints):
    data = {"cluster_name": "c", "endpoints": [{"lb_endpoints": list(endpoints)}]}
    return protos.json_format.ParseDict(data, protos.ClusterLoadAssignment())


def lb_endpoint(port, **fields):
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}},
                         "health_check_config": {}},
            "metadata": {"filter_metadata": {"istio": {"workload": "w;ns;app;v1;cluster"}}},
            **fields}


def test_eds_unhealthy_hosts_take_no_traffic_even_when_checks_pass():
    errors = []
    result = translate_load_assignment(assignment(
        lb_endpoint(1, health_status="HEALTHY"), lb_endpoint(2, health_status="UNHEALTHY"),
        lb_endpoint(3, health_status="DRAINING"), lb_endpoint(4, health_status="UNKNOWN")),
        "eds", errors)
    assert errors == []
    assert [ep.get("eds_unhealthy", False) for ep in result["endpoints"]] == [
        False, True, True, False]
    cluster = Cluster({"name": "c", "endpoints": result["endpoints"]})
    for host in cluster.hosts:
        host.healthy = True             # an active health check passes every host
    cluster.refresh()
    assert {cluster.pick().port for _ in range(20)} == {1, 4}


@pytest.mark.parametrize("fields, error", [
    ({"health_status": "DEGRADED"},
     "eds.endpoints[0].lb_endpoints[0].health_status: DEGRADED not supported (degraded hosts "
     "are not implemented)"),
])
def test_refusals_name_their_path(fields, error):
    errors = []
    assert translate_load_assignment(assignment(lb_endpoint(1, **fields)), "eds", errors) is None
    assert errors == [error]


def test_a_health_check_config_that_sets_something_is_refused():
    data = lb_endpoint(1)
    data["endpoint"]["health_check_config"] = {"port_value": 9}
    errors = []
    assert translate_load_assignment(assignment(data), "eds", errors) is None
    assert errors == ["eds.endpoints[0].lb_endpoints[0].endpoint.health_check_config: "
                      "not supported"]
