"""Bootstrap.overload_manager -> the snapshot's "overload" (plain values), with Envoy 1.40's checks.

    translate_overload_manager(pb, path, errors, warnings=None) -> dict | None

    {"refresh_interval": 1.0,                         # seconds (Envoy's default 1 s)
     "monitors": [{"name": "envoy.resource_monitors.fixed_heap", "kind": "fixed_heap",
                   "limit": 1073741824}                # max_heap_size_bytes
                  | {..., "kind": "downstream_connections", "limit": 1000}
                  | {..., "kind": "injected_resource", "filename": "/run/pressure"}],
     "actions": [{"name": "envoy.overload_actions.stop_accepting_requests",
                  "triggers": [TRIGGER]}],
     "loadshed_points": [{"name": "envoy.load_shed_points.tcp_listener_accept",
                          "triggers": [TRIGGER]}],
     "minimum_account_to_track_power_of_two": 20}     # buffer_factory_config; 0: unset
    TRIGGER: {"monitor": "<resource monitor name>", "threshold": 0.9}
           | {"monitor": ..., "scaling_threshold": 0.8, "saturation_threshold": 0.95}

Envoy finds a monitor's implementation by the type of its typed_config (the name is only
what triggers refer to), so a monitor is known by its type here too. Envoy refuses an unknown
action name, and so does Baton; an action or load shed point Envoy knows but Baton does not
implement is refused as "not supported" (it would change behaviour). A load shed point name
Envoy does not know is accepted with a warning: Envoy ignores it too (it is never queried).
"""

from . import protos
from .fields import check_fields
from .parse import join

DEFAULT_REFRESH_INTERVAL = 1.0
MIN_REFRESH_INTERVAL = 0.01      # Envoy accepts 0s; a Python timer at 0 would spin the loop

# typed_config type -> the monitor's kind in the snapshot and its limit field
MONITOR_TYPES = {
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig":
        ("fixed_heap", "max_heap_size_bytes"),
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig":
        ("downstream_connections", "max_active_downstream_connections"),
    "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig":
        ("injected_resource", None),
}
UNSUPPORTED_MONITOR_TYPES = (
    "envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig",
    "envoy.extensions.resource_monitors.cpu_utilization.v3.CpuUtilizationConfig")

RESET_STREAMS = "envoy.overload_actions.reset_high_memory_stream"
ACTIONS = ("envoy.overload_actions.stop_accepting_connections",
           "envoy.overload_actions.reject_incoming_connections",
           "envoy.overload_actions.disable_http_keepalive",
           "envoy.overload_actions.stop_accepting_requests",
           "envoy.overload_actions.shrink_heap",
           RESET_STREAMS)
ENVOY_ONLY_ACTIONS = ("envoy.overload_actions.reduce_timeouts",
                      "envoy.overload_actions.close_idle_http_connections")
# BufferFactoryConfig.minimum_account_to_track_power_of_two: Envoy's validation range.
ACCOUNT_POWER_RANGE = (10, 56)

LOADSHED_POINTS = ("envoy.load_shed_points.tcp_listener_accept",
                   "envoy.load_shed_points.http_connection_manager_decode_headers")
ENVOY_ONLY_LOADSHED_POINTS = tuple(f"envoy.load_shed_points.{name}" for name in (
    "connection_pool_new_connection", "hcm_ondata_creating_codec", "http1_server_abort_dispatch",
    "http2_server_go_away_and_close_on_dispatch", "http2_server_go_away_on_dispatch",
    "http3_server_go_away_and_close_on_dispatch", "http3_server_go_away_on_dispatch",
    "http_downstream_filter_check", "tcp_proxy_on_data", "tcp_proxy_upstream_connect"))


def translate_overload_manager(pb, path, errors, warnings=None):
    """OverloadManager -> the snapshot's "overload" dict, or None on error."""
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    refresh = DEFAULT_REFRESH_INTERVAL
    if pb.HasField("refresh_interval"):
        refresh = pb.refresh_interval.seconds + pb.refresh_interval.nanos / 1e9
        if refresh < MIN_REFRESH_INTERVAL:
            if warnings is not None:
                warnings.append(f"{join(path, 'refresh_interval')}: {refresh:g}s is refreshed "
                                f"every {MIN_REFRESH_INTERVAL:g}s")
            refresh = MIN_REFRESH_INTERVAL

    monitors = []
    for i, monitor_pb in enumerate(pb.resource_monitors):
        here = f"{join(path, 'resource_monitors')}[{i}]"
        monitor = _monitor(monitor_pb, here, errors, warnings)
        if monitor_pb.name and any(m["name"] == monitor_pb.name for m in monitors):
            errors.append(f"{here}.name: Duplicate resource monitor {monitor_pb.name}")
        elif monitor is not None:
            monitors.append(monitor)
    known = {m.name for m in pb.resource_monitors if m.name}

    actions = []
    for i, action_pb in enumerate(pb.actions):
        here = f"{join(path, 'actions')}[{i}]"
        name = action_pb.name
        if name in ENVOY_ONLY_ACTIONS:
            errors.append(f"{here}.name: {name} not supported (Baton implements "
                          f"{', '.join(ACTIONS)})")
        elif name not in ACTIONS:
            errors.append(f"{here}.name: Unknown Overload Manager Action {name or '(empty)'}")
        elif any(a["name"] == name for a in actions):
            errors.append(f"{here}.name: Duplicate overload action {name}")
        if action_pb.HasField("typed_config"):
            errors.append(f"{here}.typed_config: Overload action \"{name}\" has an unexpected "
                          "value for the typed_config field")
        triggers = _triggers(action_pb, here, f"overload action {name}", known, errors)
        actions.append({"name": name, "triggers": triggers})

    points = []
    for i, point_pb in enumerate(pb.loadshed_points):
        here = f"{join(path, 'loadshed_points')}[{i}]"
        name = point_pb.name
        triggers = _triggers(point_pb, here, f"loadshed point {name}", known, errors)
        if any(p["name"] == name for p in points):
            errors.append(f"{here}.name: Duplicate loadshed point {name}")
        elif name in ENVOY_ONLY_LOADSHED_POINTS:
            errors.append(f"{here}.name: {name} not supported (Baton implements "
                          f"{', '.join(LOADSHED_POINTS)})")
        elif name not in LOADSHED_POINTS:
            if warnings is not None:
                warnings.append(f"{here}.name: {name or '(empty)'} is no load shed point; "
                                "ignored (as Envoy does)")
        points.append({"name": name, "triggers": triggers})

    power = _buffer_factory(pb, path, errors)
    if power == 0 and warnings is not None and any(a["name"] == RESET_STREAMS for a in actions):
        # Envoy accepts this too, and then tracks no stream: the action never resets one.
        warnings.append(f"{join(path, 'actions')}: {RESET_STREAMS} resets nothing without "
                        "buffer_factory_config.minimum_account_to_track_power_of_two")

    if len(errors) > start:
        return None
    return {"refresh_interval": refresh, "monitors": monitors, "actions": actions,
            "loadshed_points": [p for p in points if p["name"] in LOADSHED_POINTS],
            "minimum_account_to_track_power_of_two": power}


def _buffer_factory(pb, path, errors) -> int:
    """buffer_factory_config.minimum_account_to_track_power_of_two, 0 when unset (Envoy then
    creates no buffer memory account: nothing is tracked)."""
    if not pb.HasField("buffer_factory_config"):
        return 0
    here = join(path, "buffer_factory_config")
    power = pb.buffer_factory_config.minimum_account_to_track_power_of_two
    low, high = ACCOUNT_POWER_RANGE
    if not low <= power <= high:
        errors.append(f"{here}.minimum_account_to_track_power_of_two: value must be inside "
                      f"range [{low}, {high}] (got {power})")
    return power


def _monitor(pb, here, errors, warnings):
    if not pb.name:
        errors.append(f"{here}.name: required")
    if not pb.HasField("typed_config"):
        errors.append(f"{here}.typed_config: required (Envoy: Didn't find a registered "
                      f"implementation for '{pb.name}' with type URL: '')")
        return None
    type_name = protos.type_name(pb.typed_config.type_url)
    config_path = join(here, "typed_config")
    if type_name in UNSUPPORTED_MONITOR_TYPES:
        errors.append(f"{config_path}: {type_name} not supported (Baton's resource monitors: "
                      f"{', '.join(MONITOR_TYPES)})")
        return None
    if type_name not in MONITOR_TYPES:
        errors.append(f"{config_path}: Didn't find a registered implementation for "
                      f"'{pb.name}' with type URL: '{type_name}'")
        return None
    kind, limit_field = MONITOR_TYPES[type_name]
    config = protos.message_class(type_name)()
    pb.typed_config.Unpack(config)
    start = len(errors)
    check_fields(config, config_path, errors, warnings)
    monitor = {"name": pb.name, "kind": kind}
    if limit_field is not None:
        limit = getattr(config, limit_field)
        if limit <= 0:
            errors.append(f"{join(config_path, limit_field)}: must be greater than 0")
        monitor["limit"] = limit
    else:
        if not config.filename:
            errors.append(f"{join(config_path, 'filename')}: required")
        monitor["filename"] = config.filename
    return monitor if len(errors) == start else None


def _triggers(pb, here, owner, known_monitors, errors):
    """Envoy's trigger rules: at least one, each naming a configured monitor once, with a
    threshold in [0, 1] or a scaled range whose scaling point lies below saturation."""
    if not pb.triggers:
        errors.append(f"{here}.triggers: at least one trigger is required")
    triggers, seen = [], set()
    for j, trigger_pb in enumerate(pb.triggers):
        where = f"{here}.triggers[{j}]"
        monitor = trigger_pb.name
        if monitor not in known_monitors:
            errors.append(f"{where}.name: Unknown trigger resource {monitor or '(empty)'} "
                          f"for {owner}")
        elif monitor in seen:
            errors.append(f"{where}.name: Duplicate trigger resource for {owner}")
        seen.add(monitor)
        kind = trigger_pb.WhichOneof("trigger_oneof")
        if kind == "threshold":
            value = trigger_pb.threshold.value
            _unit(value, f"{where}.threshold.value", errors)
            triggers.append({"monitor": monitor, "threshold": value})
        elif kind == "scaled":
            scaling = trigger_pb.scaled.scaling_threshold
            saturation = trigger_pb.scaled.saturation_threshold
            _unit(scaling, f"{where}.scaled.scaling_threshold", errors)
            _unit(saturation, f"{where}.scaled.saturation_threshold", errors)
            if scaling >= saturation:
                errors.append(f"{where}.scaled: scaling_threshold must be less than "
                              "saturation_threshold")
            triggers.append({"monitor": monitor, "scaling_threshold": scaling,
                             "saturation_threshold": saturation})
        else:
            errors.append(f"{where}: one of threshold or scaled is required")
    return triggers


def _unit(value, where, errors):
    if not 0.0 <= value <= 1.0:
        errors.append(f"{where}: {value:g} is outside [0, 1]")
