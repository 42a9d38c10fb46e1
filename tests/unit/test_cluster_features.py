"""Tests for xds/cluster_features.py (and fields_cluster.py): defaults, values, errors, and
agreement with the real Envoy (`envoy --mode validate`) on the same bootstraps.

RING_HASH and MAGLEV need translate.LB_POLICIES to list them; until translate.py does, the
`ring_policies` fixture adds them for these tests.
"""

from __future__ import annotations

import copy
import pathlib
import subprocess

import pytest
import yaml

from baton.xds import translate
from baton.xds.bootstrap import ConfigError, load_bootstrap
from baton.xds.cluster_features import OUTLIER_DEFAULTS
from baton.xds.snapshot import validate_snapshot_shape

ENVOY = pathlib.Path(__file__).resolve().parents[2] / ".venv-envoy" / "bin" / "envoy"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.fixture(autouse=True)
def ring_policies(monkeypatch):
    missing = tuple(p for p in ("RING_HASH", "MAGLEV") if p not in translate.LB_POLICIES)
    monkeypatch.setattr(translate, "LB_POLICIES", translate.LB_POLICIES + missing)


def bootstrap(**cluster_fields):
    cluster = {"name": "backend", "connect_timeout": "1s",
               "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                "port_value": 8080}}}}]}]},
               **cluster_fields}
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "t", "cluster": "backend"}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": 10000}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                                       "typed_config": tcp}]}]}],
        "clusters": [cluster]}}


def typed_http(**options):
    return {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}", **options}}


def hc(**fields):
    return {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2,
            **fields}


@pytest.fixture
def load(tmp_path):
    def _load(data):
        path = tmp_path / "bootstrap.yaml"
        path.write_text(yaml.safe_dump(data))
        snap = load_bootstrap(str(path))
        assert validate_snapshot_shape(snap) == []
        return snap["clusters"]["backend"], snap["warnings"]
    return _load


@pytest.fixture
def errors(tmp_path):
    def _errors(data):
        path = tmp_path / "bootstrap.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as info:
            load_bootstrap(str(path))
        return str(info.value)
    return _errors


# -- defaults and values -----------------------------------------------------------------------

def test_defaults_are_envoys(load):
    cluster, warnings = load(bootstrap())
    assert warnings == []
    assert (cluster["max_pending_requests"], cluster["max_requests"], cluster["max_retries"]) == \
        (1024, 1024, 3)
    assert cluster["ring_hash"] is None and cluster["maglev"] is None
    assert cluster["outlier_detection"] is None and cluster["health_checks"] == []
    assert cluster["http2"] is False and cluster["http2_options"] is None
    assert cluster["common_http"] == {"idle_timeout": 3600.0, "max_requests_per_connection": None}
    assert cluster["common_lb"] == {"healthy_panic_threshold": 50.0}


def test_circuit_breaker_request_limits(load):
    cluster, _ = load(bootstrap(circuit_breakers={"thresholds": [
        {"max_connections": 10, "max_pending_requests": 5, "max_requests": 7, "max_retries": 0}]}))
    assert (cluster["max_connections"], cluster["max_pending_requests"], cluster["max_requests"],
            cluster["max_retries"]) == (10, 5, 7, 0)


def test_ring_hash_and_maglev_config(load):
    cluster, _ = load(bootstrap(lb_policy="RING_HASH"))
    assert cluster["ring_hash"] == {"minimum_ring_size": 1024, "maximum_ring_size": 8388608,
                                    "hash_function": "XX_HASH"}
    cluster, _ = load(bootstrap(lb_policy="RING_HASH", ring_hash_lb_config={
        "minimum_ring_size": 64, "maximum_ring_size": 128, "hash_function": "MURMUR_HASH_2"}))
    assert cluster["ring_hash"] == {"minimum_ring_size": 64, "maximum_ring_size": 128,
                                    "hash_function": "MURMUR_HASH_2"}
    cluster, _ = load(bootstrap(lb_policy="MAGLEV"))
    assert cluster["maglev"] == {"table_size": 65537}
    cluster, _ = load(bootstrap(lb_policy="MAGLEV", maglev_lb_config={"table_size": 251}))
    assert cluster["maglev"] == {"table_size": 251} and cluster["lb_policy"] == "MAGLEV"


def test_lb_config_for_another_policy_is_a_warning(load):
    cluster, warnings = load(bootstrap(ring_hash_lb_config={"minimum_ring_size": 64}))
    assert cluster["ring_hash"] is None
    assert warnings == ["static_resources.clusters[0].ring_hash_lb_config: ignored "
                        "(lb_policy is ROUND_ROBIN, not RING_HASH)"]


def test_outlier_detection_defaults_and_values(load):
    cluster, _ = load(bootstrap(outlier_detection={}))
    assert cluster["outlier_detection"] == OUTLIER_DEFAULTS
    assert cluster["outlier_detection"]["enforcing_consecutive_gateway_failure"] == 0
    cluster, _ = load(bootstrap(outlier_detection={
        "consecutive_5xx": 3, "interval": "0.5s", "base_ejection_time": "400s",
        "max_ejection_percent": 100, "enforcing_consecutive_gateway_failure": 100,
        "split_external_local_origin_errors": True, "always_eject_one_host": True,
        "successful_active_health_check_uneject_host": False}))
    od = cluster["outlier_detection"]
    assert (od["consecutive_5xx"], od["interval"], od["base_ejection_time"]) == (3, 0.5, 400.0)
    assert od["max_ejection_percent"] == 100 and od["enforcing_consecutive_gateway_failure"] == 100
    assert od["split_external_local_origin_errors"] and od["always_eject_one_host"]
    assert od["successful_active_health_check_uneject_host"] is False
    # Unset max_ejection_time: max(300s, base_ejection_time), as Envoy.
    assert od["max_ejection_time"] == 400.0


def test_http_health_check(load):
    cluster, _ = load(bootstrap(health_checks=[hc(http_health_check={
        "path": "/healthz", "expected_statuses": [{"start": 200, "end": 300}],
        "retriable_statuses": [{"start": 503, "end": 504}],
        "request_headers_to_add": [{"header": {"key": "X-Probe", "value": "1"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        "request_headers_to_remove": ["User-Agent"]})]))
    [check] = cluster["health_checks"]
    assert check["kind"] == "http" and check["tcp"] is None
    assert (check["timeout"], check["interval"], check["unhealthy_threshold"],
            check["healthy_threshold"]) == (1.0, 2.0, 3, 2)
    # Envoy's defaults for the other intervals.
    assert check["no_traffic_interval"] == 60.0 and check["no_traffic_healthy_interval"] == 60.0
    assert check["unhealthy_interval"] == 2.0 and check["unhealthy_edge_interval"] == 2.0
    assert check["healthy_edge_interval"] == 2.0 and check["reuse_connection"] is True
    http = check["http"]
    assert http["host"] == "backend"              # empty host: the cluster's name
    assert http["method"] == "GET" and http["path"] == "/healthz"
    assert http["expected_statuses"] == [[200, 300]]
    assert http["retriable_statuses"] == [[503, 504]]
    assert http["request_headers_to_add"] == [["x-probe", "1", "OVERWRITE_IF_EXISTS_OR_ADD"]]
    assert http["request_headers_to_remove"] == ["user-agent"]


def test_http_health_check_default_status_and_explicit_host(load):
    cluster, _ = load(bootstrap(health_checks=[hc(unhealthy_interval="5s", http_health_check={
        "path": "/", "host": "svc.local", "method": "HEAD"})]))
    [check] = cluster["health_checks"]
    assert check["http"]["expected_statuses"] == [[200, 201]]
    assert check["http"]["host"] == "svc.local" and check["http"]["method"] == "HEAD"
    assert check["unhealthy_interval"] == 5.0 and check["unhealthy_edge_interval"] == 5.0


def test_tcp_health_check_payloads_are_hex(load):
    cluster, _ = load(bootstrap(health_checks=[hc(tcp_health_check={
        "send": {"text": "50494E47"}, "receive": [{"text": "504f4e47"}, {"binary": "T0s="}]})]))
    [check] = cluster["health_checks"]
    assert check["kind"] == "tcp"
    assert check["tcp"] == {"send": "50494e47", "receive": ["504f4e47", "4f4b"]}
    cluster, _ = load(bootstrap(health_checks=[hc(tcp_health_check={})]))
    assert cluster["health_checks"][0]["tcp"] == {"send": None, "receive": []}


def test_upstream_http2_typed_options(load):
    cluster, _ = load(bootstrap(typed_extension_protocol_options=typed_http(
        common_http_protocol_options={"idle_timeout": "30s", "max_requests_per_connection": 100},
        explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 50}})))
    assert cluster["http2"] is True
    assert cluster["http2_options"] == {"max_concurrent_streams": 50,
                                        "initial_stream_window_size": 268435456,
                                        "initial_connection_window_size": 268435456,
                                        "hpack_table_size": 4096}
    assert cluster["common_http"] == {"idle_timeout": 30.0, "max_requests_per_connection": 100}
    cluster, _ = load(bootstrap(typed_extension_protocol_options=typed_http(
        common_http_protocol_options={"idle_timeout": "0s"},
        explicit_http_config={"http_protocol_options": {}})))
    assert cluster["http2"] is False and cluster["common_http"]["idle_timeout"] is None


def test_upstream_http2_deprecated_fields(load):
    cluster, _ = load(bootstrap(http2_protocol_options={}, max_requests_per_connection=5))
    assert cluster["http2"] is True
    assert cluster["http2_options"]["max_concurrent_streams"] == 2147483647
    assert cluster["common_http"]["max_requests_per_connection"] == 5


def test_panic_threshold(load):
    cluster, _ = load(bootstrap(common_lb_config={"healthy_panic_threshold": {"value": 0}}))
    assert cluster["common_lb"] == {"healthy_panic_threshold": 0.0}


# -- errors ------------------------------------------------------------------------------------

C = "static_resources.clusters[0]"


@pytest.mark.parametrize("fields, message", [
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}},
     f"{C}.maglev_lb_config.table_size: 65536 is not a prime number"),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 100,
                                                        "maximum_ring_size": 10}},
     f"{C}.ring_hash_lb_config: minimum_ring_size (100) > maximum_ring_size (10)"),
    ({"health_checks": [hc(http_health_check={"path": "/", "expected_statuses": [
        {"start": 600, "end": 700}]})]},
     f"{C}.health_checks[0].http_health_check.expected_statuses[0]: [600, 700)"),
    ({"health_checks": [hc(http_health_check={"path": "/", "codec_client_type": "HTTP2"})]},
     f"{C}.health_checks[0].http_health_check.codec_client_type: HTTP2 not supported"),
    ({"health_checks": [hc(http_health_check={"path": "/", "method": "POST"})]},
     f"{C}.health_checks[0].http_health_check.method: POST not supported"),
    ({"health_checks": [hc(http_health_check={"path": "/", "service_name_matcher": {
        "exact": "x"}})]},
     f"{C}.health_checks[0].http_health_check.service_name_matcher: not supported"),
    ({"health_checks": [hc(grpc_health_check={})]},
     f"{C}.health_checks[0].grpc_health_check: not supported"),
    ({"health_checks": [hc(tcp_health_check={}), hc(tcp_health_check={})]},
     f"{C}.health_checks: only one health check per cluster is supported"),
    ({"health_checks": [{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}]},
     f"{C}.health_checks[0].unhealthy_threshold: required"),
    ({"health_checks": [hc(tcp_health_check={"send": {"text": "zz"}})]},
     f"{C}.health_checks[0].tcp_health_check.send.text: 'zz' is not hex"),
    ({"health_checks": [hc()]},
     f"{C}.health_checks[0]: one of http_health_check or tcp_health_check is required"),
    ({"outlier_detection": {"max_ejection_percent": 101}},
     f"{C}.outlier_detection.max_ejection_percent: 101 is over 100"),
    ({"outlier_detection": {"base_ejection_time": "60s", "max_ejection_time": "10s"}},
     f"{C}.outlier_detection.max_ejection_time: must not be smaller than base_ejection_time"),
    ({"outlier_detection": {"monitors": [{"name": "m"}]}},
     f"{C}.outlier_detection.monitors: not supported"),
    ({"common_lb_config": {"healthy_panic_threshold": {"value": 150}}},
     f"{C}.common_lb_config.healthy_panic_threshold.value: 150 is not a percentage"),
    ({"common_lb_config": {"ignore_new_hosts_until_first_hc": True}},
     f"{C}.common_lb_config.ignore_new_hosts_until_first_hc: not supported"),
    ({"circuit_breakers": {"thresholds": [{"max_connection_pools": 3}]}},
     f"{C}.circuit_breakers.thresholds[0].max_connection_pools: not supported"),
    ({"http2_protocol_options": {"initial_stream_window_size": 100}},
     f"{C}.http2_protocol_options.initial_stream_window_size: 100 is out of range"),
    ({"http2_protocol_options": {"allow_connect": True}},
     f"{C}.http2_protocol_options.allow_connect: not supported"),
    ({"http_protocol_options": {"accept_http_10": True}},
     f"{C}.http_protocol_options.accept_http_10: not supported for upstream HTTP/1.1"),
    ({"typed_extension_protocol_options": typed_http(
        common_http_protocol_options={"idle_timeout": "1s"})},
     f"{C}.typed_extension_protocol_options['{HTTP_OPTIONS}']: explicit_http_config is required"),
    ({"typed_extension_protocol_options": typed_http(
        explicit_http_config={"http2_protocol_options": {}},
        common_http_protocol_options={"max_connection_duration": "5s"})},
     f"{C}.typed_extension_protocol_options['{HTTP_OPTIONS}'].common_http_protocol_options."
     "max_connection_duration: not supported"),
    ({"typed_extension_protocol_options": typed_http(
        explicit_http_config={"http3_protocol_options": {}})},
     "explicit_http_config: http3_protocol_options not supported"),
    # (use_downstream_protocol_config, refused here before, is supported since issue 14.)
    # auto_config is supported with upstream TLS (ALPN decides); a plain cluster is refused.
    ({"typed_extension_protocol_options": typed_http(auto_config={})},
     "auto_config needs a TLS transport_socket (ALPN chooses the protocol), as in Envoy"),
    ({"typed_extension_protocol_options": typed_http(use_downstream_protocol_config={
        "http2_protocol_options": {"initial_stream_window_size": 100}})},
     "use_downstream_protocol_config.http2_protocol_options.initial_stream_window_size: 100 is "
     "out of range"),
    ({"typed_extension_protocol_options": typed_http(
        upstream_http_protocol_options={"auto_sni": True, "override_auto_sni_header": ":path"},
        explicit_http_config={"http_protocol_options": {}})},
     "upstream_http_protocol_options.override_auto_sni_header: ':path' is not a request header"),
    ({"typed_extension_protocol_options": {"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"}}},
     f"TcpProtocolOptions not supported (only {HTTP_OPTIONS})"),
    ({"http2_protocol_options": {},
      "typed_extension_protocol_options": typed_http(
          explicit_http_config={"http2_protocol_options": {}})},
     f"{C}.http2_protocol_options: not allowed together with typed_extension_protocol_options"),
])
def test_errors_name_their_path(errors, fields, message):
    assert message in errors(bootstrap(**fields))


def test_every_error_is_reported_at_once(errors):
    text = errors(bootstrap(lb_policy="MAGLEV", maglev_lb_config={"table_size": 10},
                            outlier_detection={"max_ejection_percent": 200},
                            health_checks=[hc(http_health_check={})]))
    assert "table_size" in text and "max_ejection_percent" in text and "path: required" in text


# -- agreement with Envoy ----------------------------------------------------------------------

ENVOY_CASES = [
    # (cluster fields, Envoy and Baton both accept?)
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 7}}, True),
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}}, False),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 100,
                                                        "maximum_ring_size": 10}}, False),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 9000000}}, False),
    ({"health_checks": [hc(http_health_check={"path": "/", "expected_statuses": [
        {"start": 300, "end": 200}]})]}, False),
    ({"health_checks": [hc(http_health_check={})]}, False),
    ({"health_checks": [hc(tcp_health_check={"send": {"text": "zz"}})]}, False),
    ({"health_checks": [hc()]}, False),
    ({"outlier_detection": {"max_ejection_percent": 101}}, False),
    ({"outlier_detection": {"base_ejection_time": "60s", "max_ejection_time": "10s"}}, False),
    ({"common_lb_config": {"healthy_panic_threshold": {"value": 150}}}, False),
    ({"http2_protocol_options": {"initial_stream_window_size": 100}}, False),
    ({"typed_extension_protocol_options": typed_http(
        common_http_protocol_options={"idle_timeout": "1s"})}, False),
    ({"lb_policy": "RING_HASH", "outlier_detection": {"consecutive_5xx": 3},
      "circuit_breakers": {"thresholds": [{"max_pending_requests": 1, "max_requests": 2,
                                           "max_retries": 1}]},
      "health_checks": [hc(http_health_check={"path": "/h", "expected_statuses": [
          {"start": 200, "end": 400}]})],
      "typed_extension_protocol_options": typed_http(
          explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 10}})},
     True),
]


@pytest.mark.skipif(not ENVOY.exists(), reason="no Envoy binary in .venv-envoy")
@pytest.mark.parametrize("fields, accepted", ENVOY_CASES)
def test_envoy_agrees(tmp_path, fields, accepted):
    data = bootstrap(**copy.deepcopy(fields))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(data))
    envoy = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path),
                            "--log-level", "critical"], capture_output=True, text=True,
                           timeout=60)
    assert (envoy.returncode == 0) == accepted, envoy.stdout + envoy.stderr
    try:
        load_bootstrap(str(path))
        baton_accepts = True
    except ConfigError:
        baton_accepts = False
    assert baton_accepts == accepted
