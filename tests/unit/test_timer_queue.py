"""timer_queue.py on a uvloop loop, as in a worker: owners of one duration fired in their
order, never early, under one loop timer; a discarded owner, or one whose slot was cleared
(a timer cancelled and forgotten), is not fired; a handler that raises does not stop the
others; a queue found empty leaves the table."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from baton.worker.proxy.http import timer_queue
from baton.worker.proxy.http.timer_queue import TimerQueue, queue_for

DELAY = 0.05


class Owner:
    def __init__(self, name):
        self.name = name
        self.timer = None


@pytest.fixture
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def _run_until(loop, done, limit: float) -> None:
    async def wait():
        start = loop.time()
        while not done() and loop.time() - start < limit:
            await asyncio.sleep(0.002)
    loop.run_until_complete(wait())


def _arm(loop, owner, fired, delay=DELAY, key="k"):
    queue = queue_for(loop, key, "timer", lambda o: fired.append((o.name, loop.time())))
    due = loop.time() + delay
    queue.add(owner, due)
    owner.timer = queue
    return due


def test_owners_fire_in_order_never_early_under_one_loop_timer(loop):
    fired, dues = [], {}
    owners = [Owner(n) for n in "abcd"]
    for owner in owners:
        dues[owner.name] = _arm(loop, owner, fired, delay=0.5)
        loop.run_until_complete(asyncio.sleep(0.005))       # armed at different times
    queue = owners[0].timer
    assert all(o.timer is queue for o in owners) and queue.handle is not None
    _run_until(loop, lambda: len(fired) == 4, 3)
    assert [name for name, _ in fired] == list("abcd")
    for name, at in fired:
        assert at >= dues[name] - 0.001         # (libuv's millisecond clock)
    assert all(o.timer is None for o in owners)
    assert queue.handle is None and (loop, "k", "timer") not in timer_queue._QUEUES


def test_a_discarded_owner_and_a_cleared_slot_are_not_fired(loop):
    fired = []
    kept, discarded, cleared = Owner("kept"), Owner("discarded"), Owner("cleared")
    for owner in (discarded, cleared, kept):
        _arm(loop, owner, fired)
    discarded.timer.discard(discarded)
    discarded.timer = None
    cleared.timer.cancel()          # what code that holds a timer handle does, then forgets it
    cleared.timer = None
    _run_until(loop, lambda: fired, 3)
    loop.run_until_complete(asyncio.sleep(DELAY))
    assert [name for name, _ in fired] == ["kept"]


def test_an_owner_armed_again_takes_its_new_place(loop):
    fired = []
    first, second = Owner("first"), Owner("second")
    _arm(loop, first, fired)
    _arm(loop, second, fired)
    first.timer.cancel()
    first.timer = None
    loop.run_until_complete(asyncio.sleep(0.01))
    _arm(loop, first, fired)        # after `second` now, not in its old place
    _run_until(loop, lambda: len(fired) == 2, 3)
    assert [name for name, _ in fired] == ["second", "first"]


def test_a_handler_that_raises_does_not_stop_the_others(loop):
    errors, fired = [], []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    def fire(owner):
        if owner.name == "bad":
            raise RuntimeError("boom")
        fired.append(owner.name)

    queue = queue_for(loop, "raising", "timer", fire)
    for name in ("bad", "good"):
        owner = Owner(name)
        queue.add(owner, loop.time() + DELAY)
        owner.timer = queue
    _run_until(loop, lambda: fired, 3)
    assert fired == ["good"] and [str(e) for e in errors] == ["boom"]


def test_queues_are_per_loop_key_and_slot():
    one, two = uvloop.new_event_loop(), uvloop.new_event_loop()
    try:
        def fire(owner):
            pass
        assert queue_for(one, 1.0, "timer", fire) is queue_for(one, 1.0, "timer", fire)
        assert queue_for(one, 1.0, "timer", fire) is not queue_for(two, 1.0, "timer", fire)
        assert queue_for(one, 1.0, "timer", fire) is not queue_for(one, 2.0, "timer", fire)
        assert isinstance(queue_for(one, 1.0, "other", fire), TimerQueue)
    finally:
        for loop in (one, two):
            for name in [n for n in timer_queue._QUEUES if n[0] is loop]:
                del timer_queue._QUEUES[name]
            loop.close()
