"""The overload manager: its translation from the bootstrap (xds/overload.py), its sans-IO
evaluation (worker/overload.py), the monitors' measurements, the shared connection table and
the worker-side decisions (worker/overload_manager.py) on plain stand-ins.

The rules and messages refused here are Envoy 1.40's (checked with `envoy --mode validate`
on the same documents).
"""

import copy
import mmap
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from baton.xds.bootstrap import ConfigError, load_bootstrap
from baton.worker import overload_manager as om
from baton.worker import overload_reset
from baton.worker.connection_table import ConnectionTable
from baton.worker.overload import Evaluator, fires, trigger_value
from baton.worker.overload_monitors import (DownstreamConnections, InjectedResource,
                                            anonymous_resident_bytes)
from baton.worker.stats import merge

HEAP = "envoy.resource_monitors.fixed_heap"
CX = "envoy.resource_monitors.global_downstream_max_connections"
INJECTED = "envoy.resource_monitors.injected_resource"
STOP_RQ = "envoy.overload_actions.stop_accepting_requests"
KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_CX = "envoy.overload_actions.stop_accepting_connections"
OM = "overload_manager"


def monitors():
    return [
        {"name": HEAP, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
            "max_heap_size_bytes": 1 << 30}},
        {"name": CX, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                     "DownstreamConnectionsConfig",
            "max_active_downstream_connections": 100}},
        {"name": INJECTED, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3."
                     "InjectedResourceConfig",
            "filename": "/tmp/pressure"}}]


def manager(**fields):
    result = {"refresh_interval": "0.25s", "resource_monitors": monitors(), "actions": [
        {"name": STOP_RQ, "triggers": [{"name": HEAP, "threshold": {"value": 0.95}}]},
        {"name": KEEPALIVE, "triggers": [
            {"name": INJECTED, "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}]},
        {"name": STOP_CX, "triggers": [{"name": CX, "threshold": {"value": 1.0}}]}]}
    result.update(fields)
    return result


def load(tmp_path, overload):
    doc = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
           OM: overload}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_bootstrap(str(path))


def errors(tmp_path, overload):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, overload)
    return info.value.errors


# --- translation -------------------------------------------------------------------------------

def test_a_full_overload_manager_translates(tmp_path):
    snap = load(tmp_path, manager())
    overload = snap["overload"]
    assert overload["refresh_interval"] == 0.25
    assert overload["monitors"] == [
        {"name": HEAP, "kind": "fixed_heap", "limit": 1 << 30},
        {"name": CX, "kind": "downstream_connections", "limit": 100},
        {"name": INJECTED, "kind": "injected_resource", "filename": "/tmp/pressure"}]
    assert overload["actions"][0] == {"name": STOP_RQ, "triggers": [{"monitor": HEAP, "threshold": 0.95}]}
    assert overload["actions"][1]["triggers"] == [
        {"monitor": INJECTED, "scaling_threshold": 0.5, "saturation_threshold": 0.9}]
    assert overload["loadshed_points"] == []


def test_defaults_and_no_overload_manager(tmp_path):
    snap = load(tmp_path, {"resource_monitors": monitors()[:1]})
    assert snap["overload"] == {"refresh_interval": 1.0, "monitors": [
        {"name": HEAP, "kind": "fixed_heap", "limit": 1 << 30}], "actions": [], "loadshed_points": [],
        "minimum_account_to_track_power_of_two": 0}
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"admin": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 9901}}}}))
    assert load_bootstrap(str(path)).get("overload") is None


def test_a_monitor_is_known_by_its_type_not_its_name(tmp_path):
    """Envoy picks the implementation by typed_config type; the name is what triggers use."""
    odd = monitors()[:1]
    odd[0]["name"] = "my_heap"
    snap = load(tmp_path, {"resource_monitors": odd, "actions": [
        {"name": STOP_RQ, "triggers": [{"name": "my_heap", "threshold": {"value": 0.5}}]}]})
    assert snap["overload"]["monitors"][0]["kind"] == "fixed_heap"


@pytest.mark.parametrize("change, expected", [
    (lambda o: o["actions"].append({"name": "envoy.overload_actions.foo", "triggers": [
        {"name": HEAP, "threshold": {"value": 0.5}}]}),
     f"{OM}.actions[3].name: Unknown Overload Manager Action envoy.overload_actions.foo"),
    (lambda o: o["actions"].append({"name": "envoy.overload_actions.reduce_timeouts", "triggers": [
        {"name": HEAP, "threshold": {"value": 0.5}}]}),
     f"{OM}.actions[3].name: envoy.overload_actions.reduce_timeouts not supported"),
    (lambda o: o["actions"][0]["triggers"].__setitem__(0, {"name": "nope", "threshold": {"value": 0.5}}),
     f"{OM}.actions[0].triggers[0].name: Unknown trigger resource nope for overload action {STOP_RQ}"),
    (lambda o: o["actions"].append(copy.deepcopy(o["actions"][0])),
     f"{OM}.actions[3].name: Duplicate overload action {STOP_RQ}"),
    (lambda o: o["resource_monitors"].append(copy.deepcopy(o["resource_monitors"][0])),
     f"{OM}.resource_monitors[3].name: Duplicate resource monitor {HEAP}"),
    (lambda o: o["actions"][0]["triggers"].append(copy.deepcopy(o["actions"][0]["triggers"][0])),
     f"{OM}.actions[0].triggers[1].name: Duplicate trigger resource for overload action {STOP_RQ}"),
    (lambda o: o["actions"][0].__setitem__("triggers", []),
     f"{OM}.actions[0].triggers: at least one trigger is required"),
    (lambda o: o["actions"][0]["triggers"][0].__setitem__("threshold", {"value": 2}),
     f"{OM}.actions[0].triggers[0].threshold.value: 2 is outside [0, 1]"),
    (lambda o: o["actions"][0]["triggers"][0].pop("threshold"),
     f"{OM}.actions[0].triggers[0]: one of threshold or scaled is required"),
    (lambda o: o["actions"][1]["triggers"][0].__setitem__(
        "scaled", {"scaling_threshold": 0.9, "saturation_threshold": 0.5}),
     f"{OM}.actions[1].triggers[0].scaled: scaling_threshold must be less than saturation_threshold"),
    (lambda o: o["actions"][0].__setitem__("typed_config", {"@type": "type.googleapis.com/google.protobuf.Empty"}),
     f"{OM}.actions[0].typed_config: Overload action \"{STOP_RQ}\" has an unexpected value for the typed_config field"),
    (lambda o: o["resource_monitors"][0]["typed_config"].__setitem__("max_heap_size_bytes", 0),
     f"{OM}.resource_monitors[0].typed_config.max_heap_size_bytes: must be greater than 0"),
    (lambda o: o["resource_monitors"][1]["typed_config"].__setitem__("max_active_downstream_connections", 0),
     f"{OM}.resource_monitors[1].typed_config.max_active_downstream_connections: must be greater than 0"),
    (lambda o: o["resource_monitors"][2]["typed_config"].pop("filename"),
     f"{OM}.resource_monitors[2].typed_config.filename: required"),
    (lambda o: o["resource_monitors"][0].__setitem__("typed_config", {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"}),
     f"{OM}.resource_monitors[0].typed_config: Didn't find a registered implementation for "
     f"'{HEAP}' with type URL: 'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'"),
    (lambda o: o["resource_monitors"][0].__setitem__("typed_config", {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.cpu_utilization.v3."
                 "CpuUtilizationConfig"}),
     f"{OM}.resource_monitors[0].typed_config: envoy.extensions.resource_monitors.cpu_utilization.v3."
     "CpuUtilizationConfig not supported"),
    (lambda o: o.__setitem__("buffer_factory_config", {"minimum_account_to_track_power_of_two": 9}),
     f"{OM}.buffer_factory_config.minimum_account_to_track_power_of_two: value must be inside "
     "range [10, 56]"),
    (lambda o: o["actions"].append({"name": "envoy.overload_actions.close_idle_http_connections",
                                    "triggers": [{"name": HEAP, "threshold": {"value": 0.5}}]}),
     f"{OM}.actions[3].name: envoy.overload_actions.close_idle_http_connections not supported"),
    (lambda o: o.__setitem__("loadshed_points", [{"name": "envoy.load_shed_points.tcp_proxy_on_data",
                                                  "triggers": [{"name": HEAP, "threshold": {"value": 0.5}}]}]),
     f"{OM}.loadshed_points[0].name: envoy.load_shed_points.tcp_proxy_on_data not supported"),
])
def test_refused_as_envoy_refuses(tmp_path, change, expected):
    overload = manager()
    change(overload)
    found = errors(tmp_path, overload)
    assert any(e.startswith(expected) for e in found), found


def test_reset_high_memory_stream_and_its_buffer_factory_config(tmp_path):
    reset = {"name": om.RESET_HIGH_MEMORY_STREAM, "triggers": [
        {"name": HEAP, "scaled": {"scaling_threshold": 0.85, "saturation_threshold": 0.95}}]}
    snap = load(tmp_path, manager(actions=[reset],
                                  buffer_factory_config={"minimum_account_to_track_power_of_two": 20}))
    assert snap["overload"]["actions"] == [{"name": om.RESET_HIGH_MEMORY_STREAM, "triggers": [
        {"monitor": HEAP, "scaling_threshold": 0.85, "saturation_threshold": 0.95}]}]
    assert snap["overload"]["minimum_account_to_track_power_of_two"] == 20
    # Envoy accepts the action without buffer_factory_config and then tracks no stream.
    snap = load(tmp_path, manager(actions=[reset]))
    assert snap["overload"]["minimum_account_to_track_power_of_two"] == 0
    assert any(w.startswith(f"{OM}.actions: {om.RESET_HIGH_MEMORY_STREAM} resets nothing without")
               for w in snap["warnings"])


def test_load_shed_points(tmp_path):
    snap = load(tmp_path, manager(loadshed_points=[
        {"name": "envoy.load_shed_points.tcp_listener_accept",
         "triggers": [{"name": HEAP, "threshold": {"value": 0.9}}]},
        {"name": "envoy.load_shed_points.not_one_of_envoys",
         "triggers": [{"name": HEAP, "threshold": {"value": 0.9}}]}]))
    assert [p["name"] for p in snap["overload"]["loadshed_points"]] == [
        "envoy.load_shed_points.tcp_listener_accept"]
    assert any(w.startswith(f"{OM}.loadshed_points[1].name: envoy.load_shed_points.not_one_of_envoys "
                            "is no load shed point") for w in snap["warnings"])


def test_baton_check_names_the_path(tmp_path):
    overload = manager()
    overload["actions"][0]["name"] = "envoy.overload_actions.nope"
    doc = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
           OM: overload}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    baton = os.path.join(os.path.dirname(sys.executable), "baton")
    done = subprocess.run([baton, "check", "-c", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert (f"{OM}.actions[0].name: Unknown Overload Manager Action envoy.overload_actions.nope"
            in done.stdout + done.stderr)
    assert "Traceback" not in done.stdout + done.stderr


# --- evaluation ----------------------------------------------------------------------------------

def test_threshold_and_scaled_triggers():
    threshold = {"monitor": "m", "threshold": 0.8}
    assert trigger_value(threshold, 0.79) == 0.0
    assert trigger_value(threshold, 0.8) == 1.0
    assert trigger_value(threshold, 3.0) == 1.0
    scaled = {"monitor": "m", "scaling_threshold": 0.5, "saturation_threshold": 0.9}
    assert trigger_value(scaled, 0.49) == 0.0
    assert trigger_value(scaled, 0.7) == pytest.approx(0.5)
    assert trigger_value(scaled, 0.9) == 1.0


def test_fires_is_bernoulli_of_the_value():
    assert fires(1.0, 0.999)
    assert not fires(0.0, 0.0)
    assert fires(0.3, 0.29) and not fires(0.3, 0.3)


def config():
    return {"refresh_interval": 1.0,
            "monitors": [{"name": "heap", "kind": "fixed_heap", "limit": 100},
                         {"name": "cx", "kind": "downstream_connections", "limit": 10},
                         {"name": "file", "kind": "injected_resource", "filename": "x"}],
            "actions": [{"name": "a", "triggers": [{"monitor": "heap", "threshold": 0.9},
                                                  {"monitor": "file", "scaling_threshold": 0.2,
                                                   "saturation_threshold": 0.6}]},
                        {"name": "b", "triggers": [{"monitor": "cx", "threshold": 1.0}]}],
            "loadshed_points": [{"name": "p", "triggers": [{"monitor": "file", "threshold": 0.5}]}]}


def test_an_action_takes_the_largest_trigger_and_reports_envoys_stats():
    ev = Evaluator(config())
    assert ev.gauges == {"overload.heap.pressure": 0, "overload.cx.pressure": 0,
                         "overload.file.pressure": 0, "overload.a.active": 0,
                         "overload.a.scale_percent": 0, "overload.b.active": 0,
                         "overload.b.scale_percent": 0, "overload.p.scale_percent": 0}
    # The downstream connections monitor is proactive in Envoy: no skipped_updates.
    assert set(ev.counters) == {"overload.heap.failed_updates", "overload.heap.skipped_updates",
                                "overload.cx.failed_updates", "overload.file.failed_updates",
                                "overload.file.skipped_updates"}
    assert ev.update({"heap": 0.5, "cx": 0.1, "file": 0.4}) == {"a"}
    assert ev.value("a") == pytest.approx(0.5)
    assert ev.gauges["overload.a.scale_percent"] == 50 and ev.gauges["overload.a.active"] == 0
    assert ev.gauges["overload.file.pressure"] == 40
    assert ev.update({"heap": 0.95, "cx": 0.1, "file": 0.4}) == {"a"}
    assert ev.value("a") == 1.0 and ev.gauges["overload.a.active"] == 1
    assert ev.update({"heap": 0.95, "cx": 1.0, "file": 0.5}) == {"b", "p"}
    assert ev.gauges["overload.p.scale_percent"] == 100
    assert ev.update({"heap": 0.1, "cx": 0.3, "file": 0.0}) == {"a", "b", "p"}
    assert ev.value("a") == ev.value("b") == 0.0
    assert ev.value("not configured") == 0.0


def test_a_failed_monitor_keeps_its_pressure_and_counts():
    ev = Evaluator(config())
    ev.update({"heap": 0.95})
    assert ev.update({"heap": None}) == set()
    assert ev.value("a") == 1.0
    assert ev.counters["overload.heap.failed_updates"] == 1
    assert ev.gauges["overload.heap.pressure"] == 95


def test_stats_go_to_the_given_dicts_and_merge_as_the_worst_worker():
    gauges, counters = {}, {}
    ev = Evaluator(config(), gauges, counters)
    ev.update({"heap": 0.95})
    assert gauges["overload.a.active"] == 1
    other = Evaluator(config())
    other.update({"heap": 0.2})
    merged = merge([{"gauges": gauges, "counters": counters},
                    {"gauges": other.gauges, "counters": {"overload.heap.failed_updates": 2}}])
    assert merged["gauges"]["overload.heap.pressure"] == 95          # max, not 115
    assert merged["gauges"]["overload.a.active"] == 1
    assert merged["counters"]["overload.heap.failed_updates"] == 2    # counters still sum


# --- monitors --------------------------------------------------------------------------------------

def test_heap_is_anonymous_resident_memory(tmp_path):
    statm = tmp_path / "statm"
    statm.write_text("5000 3000 1000 10 0 2500 0\n")
    assert anonymous_resident_bytes(str(statm)) == 2000 * os.sysconf("SC_PAGE_SIZE")
    real = anonymous_resident_bytes()
    assert 1 << 20 < real < 1 << 34


def test_injected_resource(tmp_path):
    path = tmp_path / "pressure"
    monitor = InjectedResource({"filename": str(path)})
    with pytest.raises(FileNotFoundError):                # a failed update
        monitor.pressure(None)
    path.write_text("0.75\n")
    assert monitor.pressure(None) == 0.75
    path.write_text("1.5")
    with pytest.raises(ValueError, match="out of range"):  # as Envoy
        monitor.pressure(None)
    path.write_text("lots")
    with pytest.raises(ValueError, match="not a number"):
        monitor.pressure(None)


def test_the_connection_table_is_shared_between_slots():
    table = mmap.mmap(-1, 1 << 16)
    me = os.getpid()
    a = ConnectionTable(0, pid=me, table=table)
    b = ConnectionTable(1, pid=os.getppid(), table=table)
    a.refresh_peers()
    b.refresh_peers()
    a.publish(3)
    b.publish(4)
    assert a.others_total() == 4 and b.others_total() == 3
    # worker 0's replacement (baton recycle) takes the second slot of worker 0
    c = ConnectionTable(0, pid=os.getppid(), table=table)
    assert c.mine == a.mine + 1
    c.refresh_peers()
    assert c.others_total() == 7
    a.release()
    c.refresh_peers()
    assert c.others_total() == 4


def test_a_worker_started_later_counts_from_its_first_connection():
    """Worker 0 looked for peers before worker 1 existed (the master forks them one after the
    other); worker 1's connections still count for worker 0 at once, not from its next
    refresh tick (a connection over the limit was admitted this way under load)."""
    table = mmap.mmap(-1, 1 << 16)
    first = ConnectionTable(0, pid=os.getpid(), table=table)
    assert first.others == []
    later = ConnectionTable(1, pid=os.getppid(), table=table)
    later.publish(2)
    assert first.others_total() == 2
    limit = DownstreamConnections({"limit": 3}, first)
    assert limit.admits(SimpleNamespace(connections={}))          # 0 + 2 < 3
    assert not limit.admits(SimpleNamespace(connections={1: None}))  # 1 + 2 = 3


def test_a_dead_workers_slot_counts_nothing_and_is_taken_over():
    table = mmap.mmap(-1, 1 << 16)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = ConnectionTable(0, pid=dead.pid, table=table)
    gone.publish(50)
    alive = ConnectionTable(1, pid=os.getpid(), table=table)
    assert alive.others_total() == 0
    respawned = ConnectionTable(0, pid=os.getpid(), table=table)
    assert respawned.mine == gone.mine


def test_the_limit_admits_up_to_the_total_of_all_workers():
    table = mmap.mmap(-1, 1 << 16)
    other = ConnectionTable(1, pid=os.getppid(), table=table)
    other.publish(3)
    limit = DownstreamConnections({"limit": 5}, ConnectionTable(0, pid=os.getpid(), table=table))
    worker = SimpleNamespace(connections={1: None})
    assert limit.admits(worker)                          # 1 + 3 < 5, now counted as 2
    worker.connections[2] = None
    assert not limit.admits(worker)                      # 2 + 3 = 5
    assert limit.pressure(worker) == 1.0


# --- the worker's decisions ------------------------------------------------------------------------

class FakeLoop:
    def __init__(self):
        self.calls = []

    def call_soon(self, fn, *args):
        self.calls.append(fn)
        return SimpleNamespace(cancel=lambda: None)

    call_later = lambda self, delay, fn, *args: self.call_soon(fn)  # noqa: E731


class FakeListener:
    def __init__(self):
        self.held = False
        self.stat_global_cx_overflow = "listener.l.downstream_global_cx_overflow"
        self.stat_overload_reject = "listener.l.downstream_cx_overload_reject"
        self.ignore_global_limit = False
        self.chains = []

    def hold(self, on):
        self.held = on


def fake_worker():
    from baton.worker.stats import Stats
    return SimpleNamespace(id=0, loop=FakeLoop(), stats=Stats(), connections={},
                           listeners={"l": FakeListener()})


def test_no_overload_manager_costs_nothing():
    manager = om.OverloadManager(fake_worker(), None)
    assert manager.screen_accept is None
    assert not (manager.holding or manager.shedding or manager.http_active)
    assert manager.disable_keepalive == 0.0


def test_actions_reach_the_listeners_and_the_http_hooks(tmp_path):
    pressure = tmp_path / "p"
    pressure.write_text("1.0")
    cfg = {"refresh_interval": 1.0,
           "monitors": [{"name": "f", "kind": "injected_resource", "filename": str(pressure)}],
           "actions": [{"name": om.STOP_ACCEPTING_CONNECTIONS, "triggers": [{"monitor": "f", "threshold": 0.9}]},
                       {"name": om.STOP_ACCEPTING_REQUESTS, "triggers": [{"monitor": "f", "threshold": 0.9}]},
                       {"name": om.DISABLE_HTTP_KEEPALIVE,
                        "triggers": [{"monitor": "f", "scaling_threshold": 0.0, "saturation_threshold": 0.5}]}],
           "loadshed_points": []}
    worker = fake_worker()
    manager = om.OverloadManager(worker, cfg, rand=lambda: 0.5)
    manager._refresh()
    assert manager.holding and worker.listeners["l"].held
    assert manager.shedding and manager.http_active
    stream = SimpleNamespace(stats=worker.stats.counters, hcm=SimpleNamespace(stat_prefix="in"),
                             info=SimpleNamespace(response_flags=[]), replies=[],
                             conn=SimpleNamespace(draining=False))
    stream.local_reply = lambda status, body, details: stream.replies.append((status, body, details))
    assert manager.rejects_request(stream)
    assert stream.replies == [(503, "envoy overloaded", "overload")]
    assert stream.info.response_flags == ["OM"]
    assert worker.stats.counters["http.in.downstream_rq_overload_close"] == 1
    assert manager.closes_connection(stream) and stream.conn.draining
    assert not manager.closes_connection(stream)          # once per connection
    assert worker.stats.counters["http.in.downstream_cx_overload_disable_keepalive"] == 1

    pressure.write_text("0.2")                             # keep-alive scaled to 40%
    manager._refresh()
    assert not manager.holding and not worker.listeners["l"].held
    assert not manager.shedding
    assert manager.disable_keepalive == pytest.approx(0.4)
    fresh = SimpleNamespace(stats=stream.stats, hcm=stream.hcm, conn=SimpleNamespace(draining=False))
    assert not manager.closes_connection(fresh)           # the draw 0.5 is above 0.4


def test_the_global_limit_screens_accepts(monkeypatch):
    table = mmap.mmap(-1, 1 << 16)
    monkeypatch.setattr(om, "ConnectionTable", lambda worker_id: ConnectionTable(worker_id, table=table))
    cfg = {"refresh_interval": 1.0, "monitors": [{"name": "cx", "kind": "downstream_connections", "limit": 2}],
           "actions": [], "loadshed_points": []}
    worker = fake_worker()
    manager = om.OverloadManager(worker, cfg)
    listener = worker.listeners["l"]
    assert manager.screen_accept(listener)
    worker.connections[1] = None
    assert manager.screen_accept(listener)
    worker.connections[2] = None
    assert not manager.screen_accept(listener)
    counters = worker.stats.counters
    assert counters["listener.l.downstream_global_cx_overflow"] == 1
    assert counters["overload.cx.failed_updates"] == 1
    manager._refresh()
    assert worker.stats.gauges["overload.cx.pressure"] == 100
    listener.ignore_global_limit = True                   # Envoy's ignore_global_conn_limit
    assert manager.screen_accept(listener)
    manager.stop()


def test_a_monitor_that_cannot_measure_counts_and_is_logged_once(tmp_path, caplog):
    pressure = tmp_path / "p"
    pressure.write_text("garbage")
    cfg = {"refresh_interval": 1.0,
           "monitors": [{"name": "f", "kind": "injected_resource", "filename": str(pressure)}],
           "actions": [{"name": om.STOP_ACCEPTING_REQUESTS, "triggers": [{"monitor": "f", "threshold": 0.9}]}],
           "loadshed_points": []}
    worker = fake_worker()
    manager = om.OverloadManager(worker, cfg)
    with caplog.at_level("WARNING", logger="baton.overload"):
        manager._refresh()
        manager._refresh()
    assert worker.stats.counters["overload.f.failed_updates"] == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"overload: worker 0: resource monitor f failed to update: {pressure}: not a number: b'garbage'"]
    pressure.write_text("1")
    manager._refresh()
    assert manager.shedding and worker.stats.counters["overload.f.failed_updates"] == 2


def test_ignore_global_conn_limit_is_carried_to_the_listener(tmp_path):
    doc = {"static_resources": {"listeners": [{
        "name": "l", "ignore_global_conn_limit": True,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "t", "cluster": "c"}}]}]}],
        "clusters": [{"name": "c", "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}]}}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_bootstrap(str(path))["listeners"][0]["ignore_global_conn_limit"] is True


def test_reject_incoming_connections_and_the_accept_load_shed_point(tmp_path):
    pressure = tmp_path / "p"
    pressure.write_text("0.0")
    cfg = {"refresh_interval": 1.0,
           "monitors": [{"name": "f", "kind": "injected_resource", "filename": str(pressure)}],
           "actions": [{"name": om.REJECT_INCOMING_CONNECTIONS, "triggers": [
               {"monitor": "f", "scaling_threshold": 0.0, "saturation_threshold": 0.5}]}],
           "loadshed_points": [{"name": om.TCP_LISTENER_ACCEPT, "triggers": [{"monitor": "f", "threshold": 0.9}]}]}
    draws = iter([0.3, 0.1, 0.99])
    worker = fake_worker()
    manager = om.OverloadManager(worker, cfg, rand=lambda: next(draws))
    assert manager.screen_accept is None                  # nothing limits accepting yet
    pressure.write_text("0.1")                            # reject 20% of the connections
    manager._refresh()
    listener = worker.listeners["l"]
    assert manager.screen_accept(listener)                # draw 0.3: kept
    assert not manager.screen_accept(listener)            # draw 0.1: closed
    assert worker.stats.counters["listener.l.downstream_cx_overload_reject"] == 1
    pressure.write_text("0.95")                           # the load shed point is saturated too
    manager._refresh()
    assert worker.stats.gauges[f"overload.{om.TCP_LISTENER_ACCEPT}.scale_percent"] == 100
    assert not manager.screen_accept(listener)            # saturated: whatever the draw
    assert worker.stats.counters["listener.l.downstream_cx_overload_reject"] == 2


def test_shrink_heap_releases_memory_every_ten_seconds_while_saturated(tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(om, "release_free_memory", lambda: released.append(1) or True)
    pressure = tmp_path / "p"
    pressure.write_text("0.0")
    cfg = {"refresh_interval": 1.0,
           "monitors": [{"name": "f", "kind": "injected_resource", "filename": str(pressure)}],
           "actions": [{"name": om.SHRINK_HEAP, "triggers": [{"monitor": "f", "threshold": 0.9}]}],
           "loadshed_points": []}
    worker = fake_worker()
    manager = om.OverloadManager(worker, cfg)
    count = f"overload.{om.SHRINK_HEAP}.shrink_count"
    assert worker.stats.counters[count] == 0              # Envoy's counter, there from the start
    manager._shrink()
    assert released == [] and worker.stats.counters[count] == 0
    pressure.write_text("1.0")
    manager._refresh()
    manager._shrink()
    assert released == [1] and worker.stats.counters[count] == 1


def test_release_free_memory_calls_the_allocator():
    from baton.worker import heap_shrinker
    heap_shrinker.release_free_memory()
    assert heap_shrinker._libc                             # glibc's malloc_trim was found


# --- reset_high_memory_stream ------------------------------------------------------------------

def test_memory_classes_are_envoys():
    """Envoy's WatermarkBufferFactory shifts balances by power - 1 (its unit tests track 1 MiB
    accounts with power 21): class i holds [2^(p-1+i), 2^(p+i)), the last one the rest."""
    shift = 20 - 1
    assert overload_reset.memory_class((1 << 19) - 1, shift) is None
    assert overload_reset.memory_class(1 << 19, shift) == 0
    assert overload_reset.memory_class((1 << 20) - 1, shift) == 0
    assert overload_reset.memory_class(1 << 20, shift) == 1
    assert overload_reset.memory_class(1 << 26, shift) == 7
    assert overload_reset.memory_class(1 << 40, shift) == 7


def test_the_largest_classes_go_first_scaled_by_the_value_and_at_most_50():
    shift = 10              # 1 KiB and over is tracked
    streams = [("tiny", 100), ("c0", 1500), ("c3", 9000), ("c7", 1 << 20), ("c6", 70_000)]
    assert overload_reset.choose(streams, 0.01, shift) == ["c7"]            # 1 class
    assert overload_reset.choose(streams, 0.125, shift) == ["c7", "c6"]     # 2 classes
    assert overload_reset.choose(streams, 0.5, shift) == ["c7", "c6", "c3"]  # 5 classes
    assert overload_reset.choose(streams, 1.0, shift) == ["c7", "c6", "c3", "c0"]
    many = [(f"s{i}", 1 << 20) for i in range(60)] + [("small", 2048)]
    chosen = overload_reset.choose(many, 1.0, shift)
    assert len(chosen) == 50 and "small" not in chosen


class BalanceConn:
    def __init__(self, multiplexed, pending=0, unsent=0):
        self.kind, self.closed, self.streams = "http", False, {}
        self.codec = SimpleNamespace(multiplexed=multiplexed, pending=lambda sid: pending,
                                     held_stream_ids=lambda: [])
        self.transport = SimpleNamespace(get_write_buffer_size=lambda: unsent)


def test_a_streams_balance_is_what_baton_holds_for_it():
    """HTTP/2: the bytes its window holds back (the connection's unsent bytes are no one
    stream's); HTTP/1.1: the connection's unsent bytes; and the request body the upstream has
    not taken: held for a retry, in the upstream's HTTP/2 window or its unsent bytes."""
    h2 = BalanceConn(True, pending=5000, unsent=70_000)
    assert overload_reset.stream_balance(SimpleNamespace(conn=h2, id=1, router=None)) == 5000
    h1 = BalanceConn(False, unsent=70_000)
    exchange = SimpleNamespace(conn=h1, id=1)
    exchange.router = exchange                  # the express lane's stand-in for a router
    assert overload_reset.stream_balance(exchange) == 70_000
    upstream = SimpleNamespace(done=False, stream_id=3, pool=SimpleNamespace(http2=False),
                               conn=BalanceConn(False, unsent=300))
    router = SimpleNamespace(body=[b"x" * 100, b"y" * 20], upstream=upstream)
    stream = SimpleNamespace(conn=h2, id=1, router=router, held_bytes=7)
    assert overload_reset.stream_balance(stream) == 5000 + 7 + 120 + 300
    upstream.pool.http2, upstream.conn = True, BalanceConn(True, pending=40, unsent=300)
    assert overload_reset.stream_balance(stream) == 5000 + 7 + 120 + 40


def test_the_action_resets_on_each_change_of_its_value(tmp_path):
    """The worker resets when the action's value changes (Envoy's callback), not on every
    refresh; nothing at value 0; the count is Envoy's root counter, there from the start."""
    pressure = tmp_path / "p"
    pressure.write_text("0.0")
    cfg = {"refresh_interval": 1.0,
           "monitors": [{"name": "f", "kind": "injected_resource", "filename": str(pressure)}],
           "actions": [{"name": om.RESET_HIGH_MEMORY_STREAM, "triggers": [
               {"monitor": "f", "scaling_threshold": 0.5, "saturation_threshold": 0.9}]}],
           "loadshed_points": [], "minimum_account_to_track_power_of_two": 11}
    worker = fake_worker()
    conn = BalanceConn(True)
    worker.connections = {1: conn}
    resets = []

    def stream(sid, balance):
        s = SimpleNamespace(id=sid, conn=conn, router=None, held_bytes=balance)
        s.reset_by_overload = lambda: (resets.append(sid), conn.streams.pop(sid))
        conn.streams[sid] = s

    stream(1, 100)                  # untracked (under 1 KiB)
    stream(3, 1 << 20)              # class 7 with power 11
    stream(5, 5000)                 # class 2
    manager = om.OverloadManager(worker, cfg)
    counters = worker.stats.counters
    assert counters[overload_reset.RESET_COUNT] == 0
    manager._refresh()
    assert resets == []
    pressure.write_text("0.52")     # value 0.05: the largest class only
    manager._refresh()
    assert resets == [3] and counters[overload_reset.RESET_COUNT] == 1
    stream(7, 1 << 20)
    manager._refresh()              # same value: Envoy does not call again
    assert resets == [3]
    pressure.write_text("0.9")      # saturated: every tracked class
    manager._refresh()
    assert resets == [3, 7, 5] and counters[overload_reset.RESET_COUNT] == 3
    assert set(conn.streams) == {1}


def test_without_buffer_factory_config_no_stream_is_tracked():
    worker = fake_worker()
    assert overload_reset.reset_high_memory_streams(worker, 1.0, None) == 0
    assert om.OverloadManager(fake_worker(), None).account_bitshift is None
    assert fake_worker().stats.counters.get(overload_reset.RESET_COUNT) is None
    manager_worker = fake_worker()
    om.OverloadManager(manager_worker, None)
    assert manager_worker.stats.counters[overload_reset.RESET_COUNT] == 0
