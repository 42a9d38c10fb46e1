"""Applying the agent's dynamic config in the master: sockets, workers, readiness.

Each config the agent sends is merged with the static bootstrap (xds/merge.py) and compared
with what runs. Only the difference travels to the workers, in one `update` message each:

- a new listener is bound here (the master owns every listening socket) and its descriptor
  goes with the message; a listener that fails to bind is left out and logged, the rest
  applies;
- a removed listener (or one moved to another address) is closed by the workers, which stop
  accepting on it and drain its connections; the master closes its own copy;
- changed listeners and clusters are updated in place by the workers (worker/main.py says
  what a change does to the connections already open: a route table swap touches none);
- an EDS update is a changed cluster: no listener and no connection is touched.

A worker started later (a respawn) forks from the master's merged snapshot and so has it all.
"""

from __future__ import annotations

import logging

from ..xds.merge import diff, merge
from .handoff.framing import encode
from .listeners import BindError, bind_listener
from .xds_link import save_applied

log = logging.getLogger("baton.xds")

SAVE_DELAY = 0.05


class XdsApplier:
    def __init__(self, master, static: dict, applied: dict | None):
        self.master = master
        self.static = static                   # the bootstrap's snapshot (DNS resolved)
        self.published = applied               # the agent's config that runs now
        # A reload starts from the config the previous generation served: nothing to wait for.
        self.initialized = applied is not None
        self.missing = [] if applied is not None else ["xds: the agent has not reported yet"]
        self.updates_applied = 0
        self._save_pending = None
        # Envoy's listener_manager counters for what LDS did here.
        self.counters = {"listener_manager.listener_added": 0,
                         "listener_manager.listener_modified": 0,
                         "listener_manager.listener_removed": 0,
                         "listener_manager.listener_create_failure": 0}

    def merged(self) -> dict:
        return merge(self.static, self.published)

    def set_static_cluster(self, name: str, spec: dict) -> None:
        """A STRICT_DNS refresh of a static cluster."""
        self.static = {**self.static, "clusters": {**self.static["clusters"], name: spec}}

    def apply(self, published: dict) -> None:
        master = self.master
        self.published = published
        new = self.merged()
        changes = diff(master.snapshot, new)
        # Removed first: a listener that moved to another address is removed, then added.
        closing = [master.listener_socks.pop(name) for name in changes.removed_listeners
                   if name in master.listener_socks]
        fds, names = [], []
        for spec in list(changes.added_listeners):
            if spec.get("bind_to_port") is False:     # no socket (use_original_dst target)
                continue
            try:
                sock = master.listener_socks[spec["name"]] = bind_listener(spec)
            except BindError as exc:
                log.error("xds: %s; the listener is not added", exc)
                self.counters["listener_manager.listener_create_failure"] += 1
                changes.added_listeners.remove(spec)
                new["listeners"] = [l for l in new["listeners"] if l["name"] != spec["name"]]
                continue
            fds.append(sock.fileno())
            names.append(spec["name"])
        master.snapshot = {**new, "runtime": master.snapshot.get("runtime")}
        if changes:
            msg = {"type": "update",
                   "listeners": changes.changed_listeners + changes.added_listeners,
                   "listener_fds": names,
                   "remove_listeners": changes.removed_listeners,
                   "clusters": changes.changed_clusters,
                   "remove_clusters": changes.removed_clusters}
            frame = encode(msg, len(fds))
            for slot in master.workers.alive():
                if slot.channel is not None and not slot.channel.closed:
                    try:
                        slot.channel.send_frame(frame, fds)
                    except Exception as exc:  # noqa: BLE001 - a dying worker: its respawn
                        log.warning("xds: worker %d missed an update: %s", slot.id, exc)
            self.updates_applied += 1
            moved = {spec["name"] for spec in changes.added_listeners} & set(changes.removed_listeners)
            self.counters["listener_manager.listener_added"] += len(changes.added_listeners) - len(moved)
            self.counters["listener_manager.listener_removed"] += len(changes.removed_listeners) - len(moved)
            self.counters["listener_manager.listener_modified"] += len(changes.changed_listeners) + len(moved)
            log.info("xds: applied %s", _describe(changes))
        # The workers hold their own copies of removed sockets until they have drained.
        for sock in closing:
            sock.close()
        # Saved for the next generation a moment later, off the path to the workers (the
        # update is still being written to their channels) and once per burst of updates.
        if self._save_pending is None:
            self._save_pending = master.loop.call_later(SAVE_DELAY, self.save_now)
        self.missing = list(published.get("missing") or ())
        if published.get("initialized") and not self.initialized:
            self.initialized = True
            master.xds_initialized()

    def save_now(self) -> None:
        if self._save_pending is not None:
            self._save_pending.cancel()
            self._save_pending = None
        if self.published is not None:
            save_applied(self.master.runtime_dir, self.published)

    def give_up_waiting(self) -> None:
        """The first fetch timed out (the agent never got a config): serve what is static."""
        if not self.initialized:
            log.warning("xds: no config from the control plane in time; serving the static "
                        "resources (%s)", "; ".join(self.missing) or "nothing received")
            self.initialized = True
            self.master.xds_initialized()


def _describe(changes) -> str:
    parts = []
    for label, items in (("listeners added", [l["name"] for l in changes.added_listeners]),
                         ("listeners changed", [l["name"] for l in changes.changed_listeners]),
                         ("listeners removed", changes.removed_listeners),
                         ("clusters changed", list(changes.changed_clusters)),
                         ("clusters removed", changes.removed_clusters)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5})" if len(items) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)
