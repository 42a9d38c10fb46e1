"""Many connections' timers of one duration under one loop timer.

A connection per request armed two loop timers of its own (the idle timeout at the accept,
the route deadline at the request) and cancelled both at its close: with uvloop ~5k
instructions an arm and cancel (the TimerHandle, libuv's heap, the handle's close on the
next turn), ~14k of the ~238k a connection costs in process (bench/close_cost.py). Timers of
the same duration armed on the same loop fall due in the order they were armed, so they need
no heap: a dict kept in arming order is their queue (an add appends, a cancel pops, both in
C), and one loop timer, armed for the head, serves them all. Its duration is the queue's key:
`queue_for(loop, key, ...)`; a caller whose durations vary slightly (a route deadline
watched a few microseconds after its request began) keys by the duration in milliseconds,
so a timer fires at most about a millisecond late, as libuv's own millisecond clock allows.

Rules of this file:
- A queue calls `fire(owner)` no earlier than the due time it was given (by its `clock`),
  once, unless the owner was cancelled first; the owner's handler checks its own state, as
  it did when it held a loop timer of its own (it may find it was fired a hair early by the
  other clock, and re-arm).
- The owner keeps the queue in one attribute (`slot`) while queued, as it kept its timer
  handle: code that cancels the handle it holds and forgets it (`timer.cancel()` then
  `None`) needs no change: the queue drops an owner whose slot no longer holds it when its
  time comes (the owner is held until then). `discard(owner)` drops it at once.
- A handler that raises is reported as a loop callback's error is, and the others still run.
"""

from __future__ import annotations

__all__ = ["TimerQueue", "queue_for"]

# (loop, key) -> TimerQueue: the queues of every loop in this process (a worker has one).
_QUEUES: dict = {}


def queue_for(loop, key, slot: str, fire, clock=None):
    """The queue of `loop` for durations keyed `key`, whose owners hold it in attribute
    `slot` and are fired by `fire(owner)`; due times are read on `clock` (time.monotonic;
    None: the loop's time). A queue leaves this table when its timer finds it empty."""
    name = (loop, key, slot)
    queue = _QUEUES.get(name)
    if queue is None:
        queue = _QUEUES[name] = TimerQueue(name, loop, clock or loop.time, slot, fire)
    return queue


class TimerQueue:
    """Owners waiting for their due time, in arming order (so in due order), under one loop
    timer armed for the first of them."""

    __slots__ = ("name", "loop", "clock", "slot", "fire", "entries", "handle")

    def __init__(self, name, loop, clock, slot: str, fire):
        self.name = name
        self.loop = loop
        self.clock = clock
        self.slot = slot
        self.fire = fire
        self.entries: dict = {}         # owner -> due time, in arming order
        self.handle = None              # the loop timer, armed for the first due time

    def add(self, owner, due: float) -> None:
        """Queue `owner` (which sets its slot to this queue) to be fired at `due`."""
        entries = self.entries
        entries.pop(owner, None)        # (a stale entry: its place is no longer its order)
        entries[owner] = due
        if self.handle is None:
            self.handle = self.loop.call_later(max(due - self.clock(), 0), self._due)

    def discard(self, owner) -> None:
        self.entries.pop(owner, None)

    def cancel(self) -> None:
        """What `timer.cancel()` does on a slot holding a queue: nothing now; the owner,
        whose slot is then cleared, is dropped when its time comes."""

    def _due(self) -> None:
        self.handle = None
        entries = self.entries
        now = self.clock()
        due_now = []
        for owner, due in entries.items():
            if due > now:
                break
            due_now.append(owner)
        for owner in due_now:
            del entries[owner]
        if entries:
            first = next(iter(entries.values()))
            self.handle = self.loop.call_later(max(first - now, 0), self._due)
        elif _QUEUES.get(self.name) is self:
            del _QUEUES[self.name]      # (an owner queued later makes a new one)
        slot, fire = self.slot, self.fire
        for owner in due_now:
            if getattr(owner, slot, None) is not self:
                continue            # cancelled by code that cleared its slot (see above)
            setattr(owner, slot, None)
            try:
                fire(owner)
            except Exception as exc:        # as a loop callback's error: reported, not fatal
                self.loop.call_exception_handler({
                    "message": f"exception in {getattr(fire, '__qualname__', fire)!r}",
                    "exception": exc})
