"""Envoy's overload manager, evaluated: resource pressures in, action states out. Sans-IO.

Rules of this file (Envoy 1.40's, source/server/overload_manager_impl.cc):
  - A pressure is a float, 1.0 = the resource's limit; it may exceed 1.0.
  - A threshold trigger is saturated (1.0) when pressure >= threshold, else inactive (0.0).
  - A scaled trigger is 0.0 below scaling_threshold, 1.0 at or above saturation_threshold,
    and linear in between.
  - An action's (or load shed point's) value is the largest of its triggers' values.
  - A monitor that fails a round counts failed_updates and keeps its last pressure, so the
    actions it drives keep their state (Envoy updates them only on success).
  - Stats, with Envoy's names: gauges overload.<action>.active (1 when saturated) and
    .scale_percent (value x 100, truncated), overload.<monitor>.pressure (pressure x 100,
    truncated); counters overload.<monitor>.failed_updates and, except for the downstream
    connections monitor (Envoy's "proactive" resource, never polled asynchronously),
    .skipped_updates; overload.<load shed point>.scale_percent.

Nothing here reads a clock, a file or a socket: the worker's thin wiring
(overload_manager.py) measures, calls update() and applies the values.
"""

from __future__ import annotations

SATURATED = 1.0


def trigger_value(trigger: dict, pressure: float) -> float:
    """One trigger's state for `pressure`: 0.0 (inactive) .. 1.0 (saturated)."""
    threshold = trigger.get("threshold")
    if threshold is not None:
        return SATURATED if pressure >= threshold else 0.0
    scaling, saturation = trigger["scaling_threshold"], trigger["saturation_threshold"]
    if pressure < scaling:
        return 0.0
    if pressure >= saturation:
        return SATURATED
    return (pressure - scaling) / (saturation - scaling)


def fires(value: float, draw: float) -> bool:
    """Envoy's bernoulli(value) given a uniform draw in [0, 1): a saturated action always
    fires, a scaling one for that fraction of the requests or connections."""
    return value >= SATURATED or draw < value


class Evaluator:
    """The overload state of one worker for the snapshot's "overload" config
    (xds/overload.py)."""

    __slots__ = ("monitors", "actions", "points", "pressures", "values", "gauges", "counters")

    def __init__(self, config: dict, gauges: dict | None = None, counters: dict | None = None):
        """`gauges`, `counters`: where the stats go (the worker's Stats dicts); fresh dicts
        when not given."""
        self.monitors = {m["name"]: m for m in config.get("monitors") or ()}
        self.actions = {a["name"]: a["triggers"] for a in config.get("actions") or ()}
        self.points = {p["name"]: p["triggers"] for p in config.get("loadshed_points") or ()}
        self.pressures: dict[str, float] = {name: 0.0 for name in self.monitors}
        self.values: dict[str, float] = {name: 0.0 for name in (*self.actions, *self.points)}
        self.gauges: dict[str, int] = gauges if gauges is not None else {}
        self.counters: dict[str, int] = counters if counters is not None else {}
        for name, monitor in self.monitors.items():
            self.gauges[f"overload.{name}.pressure"] = 0
            self.counters[f"overload.{name}.failed_updates"] = 0
            if monitor["kind"] != "downstream_connections":
                self.counters[f"overload.{name}.skipped_updates"] = 0
        for name in self.actions:
            self.gauges[f"overload.{name}.active"] = 0
            self.gauges[f"overload.{name}.scale_percent"] = 0
        for name in self.points:
            self.gauges[f"overload.{name}.scale_percent"] = 0

    def update(self, measured: dict[str, float | None]) -> set[str]:
        """New pressures by monitor name (None: that monitor failed this round; a monitor
        left out keeps its pressure). Returns the actions and load shed points whose value
        changed."""
        for name, pressure in measured.items():
            if pressure is None:
                self.failed(name)
                continue
            self.pressures[name] = pressure
            self.gauges[f"overload.{name}.pressure"] = int(pressure * 100)
        changed = set()
        for name, triggers in (*self.actions.items(), *self.points.items()):
            value = max((trigger_value(t, self.pressures[t["monitor"]]) for t in triggers),
                        default=0.0)
            if value != self.values[name]:
                changed.add(name)
                self.values[name] = value
            self.gauges[f"overload.{name}.scale_percent"] = int(value * 100)
            if name in self.actions:
                self.gauges[f"overload.{name}.active"] = int(value >= SATURATED)
        return changed

    def failed(self, monitor: str) -> None:
        """A monitor could not measure, or (downstream connections) refused a connection:
        Envoy counts both as a failed update."""
        self.counters[f"overload.{monitor}.failed_updates"] += 1

    def value(self, name: str) -> float:
        """The current value of an action or load shed point; 0.0 when not configured."""
        return self.values.get(name, 0.0)
