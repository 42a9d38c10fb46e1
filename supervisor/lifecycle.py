"""The master's lifecycle: which phase it is in, and the only moves allowed between phases.

Rules of this file:
- A phase changes only through `Lifecycle.move(event)`, which looks the pair up in TRANSITIONS.
  A pair that is not in the table is a bug in the caller: it is logged loudly (with the stack)
  and refused, and the phase stays what it was. Nothing else assigns `phase`.
- A pair that maps a phase to itself is an event that is expected there and changes nothing
  (SIGTERM while already draining): `move` answers False, quietly, and the caller does nothing.
- The master acts on an event only when `move` answered True; what it does is in master.py,
  which phase it is in is here.
- Everything else the supervisor used to keep as flags is derived from the phase: the state
  name Envoy reports (/ready, /server_info, `baton status`), whether workers are respawned,
  whether the service (systemd's main PID, the control socket, the capture rules) is ours.
- Adding a phase: add it to Phase, give it its Envoy name in ENVOY_STATE, decide RESPAWNING
  and list every event in TRANSITIONS for it (tests/unit/test_master_lifecycle.py checks that
  every phase has a row for every signal-driven event).

    STARTING --workers_ready--> SERVING --reload--> RELOADING --hand_over--> HANDED_OVER
       |  \\                      ^   ^                 |                          |
       |   take_over             |   +---rolled_back---+       successor_gone: STARTING again
       |      v                  |
       |   TAKING_OVER --committed
       +-- drain --> DRAINING  --finish--> STOPPED     (any phase) --fast_stop--> STOPPING
"""

from __future__ import annotations

import enum
import logging
import traceback

log = logging.getLogger("baton.master")


class Phase(enum.Enum):
    STARTING = "starting"            # workers starting (or starting again after a successor died)
    TAKING_OVER = "taking over"      # a new generation serves; the old one is asked to commit
    SERVING = "serving"
    RELOADING = "reloading"          # a next generation is being started; we serve on
    HANDED_OVER = "handed over"      # committed: our connections move out, then we exit
    DRAINING = "draining"            # SIGTERM / `baton stop`: connections finish up to the deadline
    STOPPING = "stopping"            # SIGINT / `baton stop --fast`: connections closed now
    STOPPED = "stopped"              # run() returns


class Event(enum.Enum):
    WORKERS_READY = "workers ready"
    TAKE_OVER = "take over"          # workers ready in a new generation: ask the old to commit
    COMMITTED = "committed"          # the old generation handed over to us
    RELOAD = "reload"
    ROLLED_BACK = "rolled back"      # the reload failed before its commit point
    HAND_OVER = "hand over"          # the reload's commit point, on our side
    SUCCESSOR_GONE = "successor gone"  # the generation we handed over to died
    DRAIN = "drain"
    FAST_STOP = "fast stop"
    FINISH = "finish"


# The Envoy server state each phase reports (envoy.admin.v3.ServerInfo.State); a reload is
# invisible from outside, and every way of stopping reports DRAINING as it always has.
ENVOY_STATE = {
    Phase.STARTING: "PRE_INITIALIZING",
    Phase.TAKING_OVER: "COMMITTING",
    Phase.SERVING: "LIVE",
    Phase.RELOADING: "LIVE",
    Phase.HANDED_OVER: "DRAINING",
    Phase.DRAINING: "DRAINING",
    Phase.STOPPING: "DRAINING",
    Phase.STOPPED: "DRAINING",
}

# Phases in which a worker that dies is a crash to respawn; in the others it is on its way out.
RESPAWNING = frozenset({Phase.STARTING, Phase.TAKING_OVER, Phase.SERVING, Phase.RELOADING})

S, T, V, R, H, D, X, Z = (Phase.STARTING, Phase.TAKING_OVER, Phase.SERVING, Phase.RELOADING,
                          Phase.HANDED_OVER, Phase.DRAINING, Phase.STOPPING, Phase.STOPPED)
E = Event

TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (S, E.WORKERS_READY): V,
    (S, E.TAKE_OVER): T,
    (T, E.COMMITTED): V,
    # The commit may land while a signal already stopped us: we stay stopped.
    (D, E.COMMITTED): D,
    (X, E.COMMITTED): X,
    (Z, E.COMMITTED): Z,
    (V, E.RELOAD): R,
    (R, E.ROLLED_BACK): V,
    # A drain or a fast stop aborts a reload in flight (before its commit point nothing
    # is lost): its rollback then finds us stopping and changes nothing.
    (D, E.ROLLED_BACK): D,
    (X, E.ROLLED_BACK): X,
    (Z, E.ROLLED_BACK): Z,
    (R, E.HAND_OVER): H,
    # The successor died after the commit: serve again, once workers are back (PRE_INITIALIZING
    # until they are, as at a start).
    (H, E.SUCCESSOR_GONE): S,
    (X, E.SUCCESSOR_GONE): X,
    (Z, E.SUCCESSOR_GONE): Z,
    # SIGTERM, `baton stop`, POST /drain_listeners?graceful...
    **{(p, E.DRAIN): D for p in (S, T, V, R)},
    **{(p, E.DRAIN): p for p in (H, D, X, Z)},      # already on the way out
    # SIGINT, `baton stop --fast`, a commit or capture rules that failed.
    **{(p, E.FAST_STOP): X for p in (S, T, V, R, H, D)},
    **{(p, E.FAST_STOP): p for p in (X, Z)},
    **{(p, E.FINISH): Z for p in Phase},
}

del S, T, V, R, H, D, X, Z, E


class Lifecycle:
    """One master's phase, moved only through TRANSITIONS, and what follows from it."""

    def __init__(self, successor: bool = False):
        self.phase = Phase.STARTING
        # A new generation does not own the service until the old one commits; the old one
        # no longer owns it once it handed over, unless its successor dies.
        self.owns_service = not successor
        self.refused: list[tuple[Phase, Event]] = []

    def move(self, event: Event) -> bool:
        """The one place a phase changes. True when it did; False when the event changes
        nothing here (a stay in the table) or is refused (not in the table: a bug, logged)."""
        target = TRANSITIONS.get((self.phase, event))
        if target is None:
            self.refused.append((self.phase, event))
            log.critical("BUG: lifecycle move %r in phase %r is not in the table; refused\n%s",
                         event.value, self.phase.value, "".join(traceback.format_stack(limit=6)))
            return False
        # Who owns the service follows the event even when the phase stays: a new generation
        # told to drain while the old one committed is systemd's main process all the same.
        if event in (Event.COMMITTED, Event.SUCCESSOR_GONE):
            self.owns_service = True
        elif event is Event.HAND_OVER:
            self.owns_service = False
        if target is self.phase:
            return False
        log.debug("lifecycle: %s --%s--> %s", self.phase.value, event.value, target.value)
        self.phase = target
        return True

    def allows(self, event: Event) -> bool:
        """Whether `event` would change the phase now (no logging: a question, not a move)."""
        target = TRANSITIONS.get((self.phase, event))
        return target is not None and target is not self.phase

    # -- what follows from the phase -----------------------------------------------------

    @property
    def envoy_state(self) -> str:
        return ENVOY_STATE[self.phase]

    @property
    def live(self) -> bool:
        """Envoy's LIVE: every worker serves (a reload in flight does not change that)."""
        return ENVOY_STATE[self.phase] == "LIVE"

    @property
    def respawns_workers(self) -> bool:
        return self.phase in RESPAWNING

    @property
    def reloading(self) -> bool:
        """A next generation is being started, or took over and our connections move to it."""
        return self.phase in (Phase.RELOADING, Phase.HANDED_OVER)

    @property
    def stopping(self) -> bool:
        """On the way out: workers are not respawned and their exits are expected."""
        return self.phase in (Phase.HANDED_OVER, Phase.DRAINING, Phase.STOPPING, Phase.STOPPED)
