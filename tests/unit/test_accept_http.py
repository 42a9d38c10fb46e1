"""The HTTP accept path without a Task (worker/main.py `_accepting_http`): the coroutine that
makes the connection's transport is stepped by hand, so what a Task would do on its failure is
done there: an OSError or a cancellation (shutdown) cleans up quietly, anything else is logged
with its traceback, and a connection whose transport was already made is left to its own
connection_lost (no double count)."""

from __future__ import annotations

import asyncio
import logging
import types

import pytest

from baton.worker.main import Worker
from baton.worker.stats import Stats


class Client:
    closed = False

    def close(self):
        self.closed = True


def _worker():
    worker = types.SimpleNamespace(id=0, connections={}, stats=Stats())
    worker._http_not_started = lambda conn, client: Worker._http_not_started(worker, conn, client)
    return worker


def _conn(transport=None):
    listener = types.SimpleNamespace(stat_cx_active="listener.l.downstream_cx_active")
    return types.SimpleNamespace(id=7, listener=listener, transport=transport)


def _failing(exc):
    async def run():
        raise exc
    return run()


@pytest.mark.parametrize("exc", [OSError(9, "bad descriptor"), asyncio.CancelledError()],
                         ids=["oserror", "cancelled"])
def test_a_failed_or_cancelled_accept_is_counted_out_once(exc, caplog):
    worker, conn, client = _worker(), _conn(), Client()
    worker.connections[7] = conn
    worker.stats.gauges["listener.l.downstream_cx_active"] = 1
    with caplog.at_level(logging.DEBUG):
        Worker._accepting_http(worker, _failing(exc), conn, client)
    assert client.closed and 7 not in worker.connections
    assert worker.stats.gauges["listener.l.downstream_cx_active"] == 0
    assert "Traceback" not in caplog.text


def test_a_bug_is_logged_with_its_traceback_and_a_made_transport_left_to_close_itself(caplog):
    worker, conn, client = _worker(), _conn(transport=object()), Client()
    worker.connections[7] = conn
    worker.stats.gauges["listener.l.downstream_cx_active"] = 1
    with caplog.at_level(logging.ERROR):
        Worker._accepting_http(worker, _failing(KeyError("a bug")), conn, client)
    assert "could not start" in caplog.text and "KeyError" in caplog.text
    # connection_made ran: its transport's close counts it out, not this path.
    assert 7 in worker.connections and worker.stats.gauges["listener.l.downstream_cx_active"] == 1
