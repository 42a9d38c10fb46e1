"""Whitelist (see fields.py) for the bootstrap's overload_manager (xds/overload.py).

Merged into fields.ALLOWED. The typed_config of a resource monitor or an action is SKIP:
overload.py unpacks it by its type, as Envoy picks the monitor's factory by type URL.
buffer_factory_config configures reset_high_memory_stream (which streams are tracked).
"""

from .fields import SKIP, WALK

ALLOWED_OVERLOAD: dict = {
    "envoy.config.bootstrap.v3.Bootstrap": {
        "overload_manager": SKIP},
    "envoy.config.listener.v3.Listener": {
        # The global_downstream_max_connections monitor never refuses this listener's
        # connections (Baton still counts them towards the limit).
        "ignore_global_conn_limit": WALK},
    "envoy.config.overload.v3.OverloadManager": {
        "refresh_interval": WALK, "resource_monitors": WALK, "actions": WALK,
        "loadshed_points": WALK, "buffer_factory_config": WALK},
    "envoy.config.overload.v3.BufferFactoryConfig": {
        "minimum_account_to_track_power_of_two": WALK},
    "envoy.config.overload.v3.ResourceMonitor": {
        "name": WALK, "typed_config": SKIP},
    "envoy.config.overload.v3.OverloadAction": {
        "name": WALK, "triggers": WALK, "typed_config": SKIP},
    "envoy.config.overload.v3.LoadShedPoint": {
        "name": WALK, "triggers": WALK},
    "envoy.config.overload.v3.Trigger": {
        "name": WALK, "threshold": WALK, "scaled": WALK},
    "envoy.config.overload.v3.ThresholdTrigger": {
        "value": WALK},
    "envoy.config.overload.v3.ScaledTrigger": {
        "scaling_threshold": WALK, "saturation_threshold": WALK},
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig": {
        "max_heap_size_bytes": WALK},
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": {
        "max_active_downstream_connections": WALK},
    "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig": {
        "filename": WALK},
}
