"""The contract every connection a worker holds implements, and the registry of movable kinds.

A worker keeps all its connections in one dict (`Worker.connections`), whatever they are: an
L4 tcp_proxy connection, an HTTP connection, a connection still being inspected, or one half
of a connection split by write migration. The worker and the mover (migration.py) only ever
use the interface below; they never ask which class they hold.

Rules of this file:
- `state` is a `Lifecycle` for every connection (INSPECTING -> CONNECTING -> OPEN -> CLOSED,
  any state may go straight to CLOSED); nothing else is stored in it.
- `readiness()` says whether a reload may move the connection now (NOW), once its current
  exchange ends (WHEN_IDLE: `hold_when_idle` calls back), or not at all (NEVER: it drains
  where it is, or decides soon, as an inspection does).
- A move is export -> (adopted) migrated, or export -> (refused, lost) resume. Between
  export and either of those the connection is paused: it reads and writes nothing, so the
  descriptors and bytes it exported are exactly its state.
- What crosses to another process is an `Export`: a record kind of
  supervisor/handoff/protocol.py, that record's fields, and its descriptors in the order the
  record declares. The receiving side adopts a record with the class registered for its
  kind (`register`); adding a kind is one class, one record definition and one registration.
"""

from __future__ import annotations

import enum
from typing import Callable, ClassVar, NamedTuple


class Lifecycle(enum.Enum):
    INSPECTING = "inspecting"   # listener filters read the first bytes; no chain chosen yet
    CONNECTING = "connecting"   # the upstream connect is in flight; nothing read from the client
    OPEN = "open"               # serving
    CLOSED = "closed"           # gone, or given to another process

    def __repr__(self) -> str:
        return self.value


class Move(enum.Enum):
    NOW = "now"                 # export() may be called at once
    WHEN_IDLE = "when idle"     # hold_when_idle(); movable once the exchange in flight ends
    NEVER = "never"             # stays: drains here (HTTP/2 today) or is about to decide


class Export(NamedTuple):
    kind: str                   # a record kind of supervisor/handoff/protocol.py
    fields: dict                # that record's fields
    fds: list                   # its descriptors, in the record's order


class Connection:
    """Base of every connection in `Worker.connections`. Subclasses set `kind` and the
    attributes below, and override what they support; the defaults describe a connection
    that cannot move and has nothing to drain."""

    __slots__ = ()

    kind: ClassVar[str] = "?"    # a name for logs and status ("tcp", "http", ...)
    # Every subclass has: id (int), listener, chain (or None), state (Lifecycle).

    # -- moving ---------------------------------------------------------------------------

    def readiness(self) -> Move:
        return Move.NEVER

    def handoff_target(self, workers: int) -> int | None:
        """The index of the receiving worker (of `workers`) this connection must go to, or
        None: any (they are spread round-robin). A UDP session goes to the worker that will
        read its listener (udp_proxy.py)."""
        return None

    def export(self, client_only: bool = False) -> Export:
        """Pause and describe this connection for another worker. `client_only`: leave the
        upstream half here and forward it (write migration), where the kind supports it."""
        raise NotImplementedError(f"{self.kind} connections do not move")

    def migrated(self, channel, new_id: int) -> None:
        """Another worker adopted the export (as `new_id`, over `channel`): let go of the
        descriptors without shutting them down; the adopter holds the same sockets."""
        raise NotImplementedError

    def resume(self) -> None:
        """The move failed: carry on exactly where export() paused."""
        raise NotImplementedError

    def keeps_exchange_here(self) -> bool:
        """Exported, with an exchange that goes on here for the receiver (write migration):
        it can wait for a late answer (worker/batch_ownership.py) instead of ending."""
        return False

    def hold_when_idle(self, on_idle: Callable) -> None:
        """Finish the exchange in flight, then pause and call on_idle(self). A kind that is
        never WHEN_IDLE is ready at once or never."""
        if self.readiness() is not Move.NOW:
            raise NotImplementedError(f"{self.kind} connections cannot wait to move")
        on_idle(self)

    def cancel_hold(self) -> None:
        """The mover stopped waiting for this connection: it serves on normally."""

    def after_adoption(self) -> None:
        """Called on the adopting side once the sender knows the new id."""

    # -- running --------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop taking new work and end when the work in flight is done. L4 connections have
        no unit of work: they run on until they end."""

    def close(self) -> None:
        raise NotImplementedError

    def buffered(self) -> tuple[int, int]:
        """Bytes held for (the upstream, the client): Envoy's *_bytes_buffered gauges."""
        return 0, 0

    # -- write migration (forwarding.py) ----------------------------------------------------

    def on_forwarded(self, msg: dict) -> bool:
        """A forwarding message addressed to this connection; False if it takes none."""
        return False

    def uses_channel(self, channel) -> bool:
        """True while this connection needs `channel` (a forwarded half talks over it)."""
        return False

    def channel_lost(self, channel) -> None:
        """`channel` died; a connection that needs it ends."""


# record kind -> adopter(worker, listener, fields, fds, conn_id, channel) -> Connection | None
_ADOPTERS: dict[str, Callable] = {}
# record kind -> refusal(worker, listener, fields) -> reason or None
_CHECKS: dict[str, Callable] = {}


def register(kind: str, adopt: Callable, check: Callable | None = None) -> None:
    """Make record `kind` adoptable. `adopt` continues the connection here and returns it
    (None if it ended at once, e.g. no healthy host); `check` says why this worker cannot
    take it (a cluster it does not have...) before any descriptor is touched."""
    _ADOPTERS[kind] = adopt
    if check is not None:
        _CHECKS[kind] = check


def adopter(kind: str) -> Callable | None:
    return _ADOPTERS.get(kind)


def refusal(kind: str, worker, listener, fields: dict) -> str | None:
    check = _CHECKS.get(kind)
    return check(worker, listener, fields) if check is not None else None
