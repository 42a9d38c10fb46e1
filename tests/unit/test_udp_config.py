"""UDP listeners: what a udp_proxy listener translates to (xds/udp.py), what is refused and how
the error names the field, the route choice (worker/proxy/udp_proxy.py), which worker reads a
listener, and the `sockets` message a new master gets at a reload (supervisor/upgrade.py)."""

from __future__ import annotations

import socket

import pytest
import yaml

from baton.supervisor.handoff import protocol
from baton.supervisor.listeners import bind_listener, listener_key
from baton.supervisor.upgrade import udp_apart
from baton.worker.proxy.udp_proxy import UdpListener, owner_index
from baton.xds.bootstrap import ConfigError, load_bootstrap
from baton.xds.snapshot import validate_snapshot_shape

from ..integration.test_udp_proxy import SOURCE_PORT_INPUT, route_to, udp_bootstrap

F0 = "static_resources.listeners[0].listener_filters[0].typed_config"


def load(tmp_path, bootstrap):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return load_bootstrap(str(path))


def errors_of(tmp_path, bootstrap) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, bootstrap)
    return info.value.errors


def proxy_of(bootstrap) -> dict:
    return bootstrap["static_resources"]["listeners"][0]["listener_filters"][0]["typed_config"]


def test_a_udp_listener_translates_with_envoys_defaults(tmp_path):
    snap = load(tmp_path, udp_bootstrap(9901, 5353, [53]))
    [spec] = snap["listeners"]
    assert spec["protocol"] == "udp"
    assert (spec["name"], spec["address"], spec["port"], spec["stat_name"],
            spec["max_rx_datagram_size"]) == ("udp_in", "127.0.0.1", 5353, "127.0.0.1_5353", 1500)
    assert spec["udp_proxy"] == {
        "stat_prefix": "dns", "routes": [], "default_cluster": "echo", "idle_timeout": 60.0,
        "hash": None, "per_packet": False, "max_rx_datagram_size": 1500, "access_log": [],
        "proxy_access_log": []}
    assert validate_snapshot_shape(snap) == []


def test_the_deprecated_cluster_field_hash_policy_and_matcher(tmp_path):
    b = udp_bootstrap(9901, 5353, [53], idle_timeout="2.5s", hash_policies=[{"key": "k"}],
                      use_per_packet_load_balancing=True,
                      upstream_socket_config={"max_rx_datagram_size": 9000})
    config = load(tmp_path, b)["listeners"][0]["udp_proxy"]
    assert (config["idle_timeout"], config["hash"], config["per_packet"],
            config["max_rx_datagram_size"]) == (2.5, {"key": "k"}, True, 9000)
    proxy = proxy_of(b)
    del proxy["matcher"]
    proxy["cluster"] = "echo"
    assert load(tmp_path, b)["listeners"][0]["udp_proxy"]["default_cluster"] == "echo"
    proxy.pop("cluster")
    proxy["matcher"] = {"matcher_list": {"matchers": [{
        "predicate": {"single_predicate": {
            "input": {"name": "p", "typed_config": {"@type": SOURCE_PORT_INPUT}},
            "value_match": {"prefix": "4"}}},
        "on_match": route_to("echo")}]}}
    config = load(tmp_path, b)["listeners"][0]["udp_proxy"]
    assert config["routes"] == [{"input": "source_port", "exact": None, "prefix": "4",
                                 "cluster": "echo"}]
    assert config["default_cluster"] is None


@pytest.mark.parametrize("change, expected", [
    (lambda p: p.pop("stat_prefix"), f"{F0}.stat_prefix: required"),
    (lambda p: p.pop("matcher"), f"{F0}: one of cluster or matcher is required"),
    (lambda p: p.update(matcher={"on_no_match": route_to("nowhere")}),
     f"{F0}.matcher.on_no_match.action.typed_config.cluster: unknown cluster 'nowhere'"),
    (lambda p: p.update(use_original_src_ip=True), f"{F0}.use_original_src_ip: not supported"),
    (lambda p: p.update(hash_policies=[{"source_ip": True}, {"key": "x"}]),
     f"{F0}.hash_policies: at most one hash policy (Envoy's max_items 1)"),
    (lambda p: p.update(idle_timeout="0s"), f"{F0}.idle_timeout: must be greater than 0s"),
    (lambda p: p.update(upstream_socket_config={"max_rx_datagram_size": 70000}),
     f"{F0}.upstream_socket_config.max_rx_datagram_size: 70000 is not between 1 and 65535"),
])
def test_what_is_refused_names_its_field(tmp_path, change, expected):
    b = udp_bootstrap(9901, 5353, [53])
    change(proxy_of(b))
    assert expected in errors_of(tmp_path, b)


def test_tcp_fields_and_other_filters_are_refused_on_a_udp_listener(tmp_path):
    b = udp_bootstrap(9901, 5353, [53])
    listener = b["static_resources"]["listeners"][0]
    listener["per_connection_buffer_limit_bytes"] = 1024
    errors = errors_of(tmp_path, b)
    assert ("static_resources.listeners[0].per_connection_buffer_limit_bytes: not supported on "
            "a UDP listener") in errors
    listener.pop("per_connection_buffer_limit_bytes")
    listener["listener_filters"] = []
    assert errors_of(tmp_path, b) == [
        "static_resources.listeners[0].listener_filters: a UDP listener needs exactly one "
        "listener filter, envoy.filters.udp_listener.udp_proxy (got 0)"]


class _Worker:
    """What UdpListener reads of its worker, for the pure parts (no loop runs)."""
    def __init__(self, worker_id=0, concurrency=1):
        from baton.worker.stats import Stats
        self.id, self.concurrency = worker_id, concurrency
        self.loop = type("Loop", (), {"time": staticmethod(lambda: 0.0)})()
        self.stats = Stats()
        self.overload = type("Overload", (), {"holding": False})()


def _listener(tmp_path, bootstrap, worker) -> UdpListener:
    spec = load(tmp_path, bootstrap)["listeners"][0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener = UdpListener(worker, spec, sock.detach())
    return listener


def test_routes_match_in_order_then_the_default(tmp_path):
    b = udp_bootstrap(9901, 5353, [53])
    proxy_of(b)["matcher"] = {
        "matcher_list": {"matchers": [
            {"predicate": {"single_predicate": {
                "input": {"name": "p", "typed_config": {"@type": SOURCE_PORT_INPUT}},
                "value_match": {"exact": "4000"}}}, "on_match": route_to("echo")},
            {"predicate": {"single_predicate": {
                "input": {"name": "ip", "typed_config": {"@type": SOURCE_PORT_INPUT.replace(
                    "SourcePortInput", "SourceIPInput")}},
                "value_match": {"prefix": "10."}}}, "on_match": route_to("other")}]},
        "on_no_match": route_to("echo")}
    b["static_resources"]["clusters"].append({**b["static_resources"]["clusters"][0], "name": "other"})
    listener = _listener(tmp_path, b, _Worker())
    try:
        assert listener.route(("10.0.0.1", 4000)) == "echo"        # the first match wins
        assert listener.route(("10.0.0.1", 4001)) == "other"
        assert listener.route(("127.0.0.1", 4001)) == "echo"       # on_no_match
        listener.default_cluster = None
        assert listener.route(("127.0.0.1", 4001)) is None          # no route
        stats = listener.worker.stats
        assert stats.counters["udp.dns.downstream_sess_no_route"] == 0
        assert stats.gauges["udp.dns.downstream_sess_active"] == 0
        assert stats.counters["cluster.other.udp.sess_tx_datagrams"] == 0
    finally:
        listener.sock.close()


def test_one_worker_reads_each_listener_and_both_generations_agree():
    names = [f"udp_{i}" for i in range(64)]
    for workers in (1, 2, 3, 8):
        owners = [owner_index(n, workers) for n in names]
        assert all(0 <= o < workers for o in owners)
        assert owners == [owner_index(n, workers) for n in names]      # stable
    assert len({owner_index(n, 4) for n in names}) == 4               # listeners spread


def _sockets_message(tcp_fd: int, udp_fd: int, admin_fd: int, control_fd: int):
    msg = {"type": "sockets", "listeners": [
        {"name": "tcp", "address": "127.0.0.1", "port": 80, "fd": 0},
        {"name": "udp_in", "address": "127.0.0.1", "port": 80, "fd": 1}],
        "admin": {"address": "127.0.0.1", "port": 9901, "fd": 2}, "control": 3}
    return msg, [tcp_fd, udp_fd, admin_fd, control_fd]


def test_udp_sockets_reach_only_a_new_master_that_asks_for_them():
    """A release without UDP (0.1.0) keys the sockets it takes by address alone and wraps them
    as stream sockets: a UDP listener on a TCP listener's port would take its place. It is
    sent only the TCP ones, with no stray descriptor."""
    snapshot = {"listeners": [{"name": "tcp"}, {"name": "udp_in", "protocol": "udp"}]}
    msg, fds = _sockets_message(10, 11, 12, 13)
    old, old_fds = udp_apart(msg, fds, snapshot, peer_takes_udp=False)
    assert old_fds == [10, 12, 13]
    assert old["listeners"] == [{"name": "tcp", "address": "127.0.0.1", "port": 80, "fd": 0}]
    assert (old["admin"]["fd"], old["control"]) == (1, 2) and "udp_listeners" not in old
    protocol.check(old)
    new, new_fds = udp_apart(msg, fds, snapshot, peer_takes_udp=True)
    assert new_fds == [10, 11, 12, 13]
    assert new["udp_listeners"] == [{"name": "udp_in", "address": "127.0.0.1", "port": 80, "fd": 1}]
    protocol.check(new)
    protocol.check({"type": "take"})                 # what 0.1.0 sends
    protocol.check({"type": "take", "udp": True})


def test_a_udp_listener_binds_a_datagram_socket_with_its_own_key():
    spec = {"name": "u", "address": "127.0.0.1", "port": 0, "protocol": "udp"}
    sock = bind_listener(spec)
    try:
        assert sock.type == socket.SOCK_DGRAM
        assert listener_key(spec) == ("127.0.0.1", 0, "udp")
        assert listener_key({"address": "127.0.0.1", "port": 0}) == ("127.0.0.1", 0)
    finally:
        sock.close()


def test_a_udp_and_a_tcp_listener_may_share_an_address_and_port(tmp_path):
    """DNS listens on both; Envoy accepts it. Two UDP listeners on one address still clash."""
    b = udp_bootstrap(9901, 5353, [53])
    udp = b["static_resources"]["listeners"][0]
    tcp = {"name": "tcp_in", "address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": 5353}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                           "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
               "stat_prefix": "dns_tcp", "cluster": "echo"}}]}]}
    b["static_resources"]["listeners"].append(tcp)
    assert sorted(l.get("protocol", "tcp") for l in load(tmp_path, b)["listeners"]) == ["tcp", "udp"]
    b["static_resources"]["listeners"].append({**udp, "name": "udp_again"})
    assert errors_of(tmp_path, b) == ["static_resources.listeners[2].address: 127.0.0.1:5353 "
                                      "is already used by static_resources.listeners[0]"]
