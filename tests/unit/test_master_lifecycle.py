"""The master's lifecycle table (supervisor/lifecycle.py), pure: every allowed move goes where
the table says, every other pair is refused and logged, and the Envoy state names are derived
from the phase as /ready and /server_info have always reported them."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.supervisor.lifecycle import (ENVOY_STATE, RESPAWNING, TRANSITIONS, Event, Lifecycle,
                                        Phase)

ALL_PAIRS = list(itertools.product(Phase, Event))
ALLOWED = sorted(TRANSITIONS.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value))
REFUSED = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def at(phase: Phase, successor: bool = False) -> Lifecycle:
    lifecycle = Lifecycle(successor=successor)
    lifecycle.phase = phase         # a test fixture only: the code moves through the table
    return lifecycle


@pytest.mark.parametrize(("pair", "target"), ALLOWED,
                         ids=[f"{p.name}-{e.name}" for (p, e), _ in ALLOWED])
def test_every_allowed_move_goes_where_the_table_says(pair, target, caplog):
    phase, event = pair
    lifecycle = at(phase)
    changed = lifecycle.move(event)
    assert lifecycle.phase is target
    assert changed is (target is not phase)
    assert lifecycle.refused == [] and "BUG" not in caplog.text


@pytest.mark.parametrize("pair", REFUSED, ids=[f"{p.name}-{e.name}" for p, e in REFUSED])
def test_every_other_move_is_refused_loudly_and_changes_nothing(pair, caplog):
    phase, event = pair
    lifecycle = at(phase)
    owned = lifecycle.owns_service
    with caplog.at_level(logging.CRITICAL, logger="baton.master"):
        assert lifecycle.move(event) is False
    assert lifecycle.phase is phase and lifecycle.owns_service is owned
    assert lifecycle.refused == [pair]
    assert f"BUG: lifecycle move {event.value!r} in phase {phase.value!r}" in caplog.text
    assert not lifecycle.allows(event)


def test_the_table_refuses_something():
    # Otherwise the refusal test above would pass vacuously.
    assert len(REFUSED) > 20


@pytest.mark.parametrize("event", [Event.DRAIN, Event.FAST_STOP, Event.FINISH])
def test_every_phase_has_a_row_for_the_ways_to_stop(event):
    """Signals arrive in any phase: each phase says what they do there (even nothing)."""
    assert all((phase, event) in TRANSITIONS for phase in Phase)


def test_every_phase_is_reachable_and_every_phase_can_stop():
    reached, frontier = {Phase.STARTING}, [Phase.STARTING]
    while frontier:
        phase = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is phase and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(Phase)
    for phase in Phase:
        assert TRANSITIONS[(phase, Event.FINISH)] is Phase.STOPPED


def test_envoy_state_names_stay_what_they_were():
    assert ENVOY_STATE == {
        Phase.STARTING: "PRE_INITIALIZING", Phase.TAKING_OVER: "COMMITTING",
        Phase.SERVING: "LIVE", Phase.RELOADING: "LIVE", Phase.HANDED_OVER: "DRAINING",
        Phase.DRAINING: "DRAINING", Phase.STOPPING: "DRAINING", Phase.STOPPED: "DRAINING"}
    assert [at(p).live for p in Phase] == [ENVOY_STATE[p] == "LIVE" for p in Phase]


def test_workers_are_respawned_only_until_the_master_is_on_its_way_out():
    assert RESPAWNING == {Phase.STARTING, Phase.TAKING_OVER, Phase.SERVING, Phase.RELOADING}
    for phase in Phase:
        assert at(phase).respawns_workers is (phase in RESPAWNING)
        assert at(phase).stopping is (phase not in RESPAWNING)


def test_the_service_changes_hands_at_the_commit_and_comes_back_if_the_successor_dies():
    new = Lifecycle(successor=True)
    assert not new.owns_service
    assert new.move(Event.TAKE_OVER) and not new.owns_service
    assert new.move(Event.COMMITTED) and new.owns_service and new.phase is Phase.SERVING

    old = Lifecycle()
    for event in (Event.WORKERS_READY, Event.RELOAD, Event.HAND_OVER):
        assert old.move(event)
    assert old.phase is Phase.HANDED_OVER and not old.owns_service and old.reloading
    assert old.move(Event.DRAIN) is False and old.phase is Phase.HANDED_OVER   # already leaving
    assert old.move(Event.SUCCESSOR_GONE) and old.owns_service and old.phase is Phase.STARTING
    assert old.move(Event.WORKERS_READY) and old.phase is Phase.SERVING


def test_a_stop_during_a_reload_wins_over_its_rollback():
    lifecycle = at(Phase.RELOADING)
    assert lifecycle.move(Event.DRAIN) and lifecycle.phase is Phase.DRAINING
    assert lifecycle.move(Event.ROLLED_BACK) is False and lifecycle.phase is Phase.DRAINING
    assert lifecycle.refused == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=40), st.booleans())
def test_random_event_sequences_never_leave_the_table(events, successor):
    lifecycle = Lifecycle(successor=successor)
    for event in events:
        before = lifecycle.phase
        allowed = (before, event) in TRANSITIONS
        changed = lifecycle.move(event)
        if allowed:
            assert lifecycle.phase is TRANSITIONS[(before, event)]
            assert changed is (lifecycle.phase is not before)
        else:
            assert lifecycle.phase is before and not changed
    # From anywhere, a stop ends in STOPPED.
    lifecycle.move(Event.DRAIN)
    lifecycle.move(Event.FINISH)
    assert lifecycle.phase is Phase.STOPPED
