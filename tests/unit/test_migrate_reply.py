"""A worker's `migrate` request always gets its reply (worker/main.py handle_migrate): when the
move raises part-way (a bug in one connection kind's move), what is still here drains and the
master hears how it ended, instead of waiting out its drain timeout for a reply that never comes
while the worker's connections neither move nor drain."""

from __future__ import annotations

import asyncio
import logging
import types

from baton.worker import main as worker_main
from baton.worker.main import Worker


class _Channel:
    def __init__(self):
        self.replies = []

    def reply(self, msg, body):
        self.replies.append((msg, body))


class _Conn:
    drained = False

    def drain(self):
        self.drained = True


def _worker(loop, conns):
    worker = types.SimpleNamespace(
        id=3, loop=loop, listeners={}, channel=_Channel(), draining=False, migrating=False,
        connections=dict(enumerate(conns)), http_pools=types.SimpleNamespace(drop_idle=lambda: None),
        finished=[])
    worker._drain_http = lambda: Worker._drain_http(worker)
    worker._finish = worker.finished.append
    return worker


def test_a_move_that_raises_part_way_still_replies_and_drains_what_is_left(monkeypatch, caplog):
    conns = [_Conn(), _Conn(), _Conn()]

    async def raising_move(worker, targets, keep_upstreams=False):
        del worker.connections[0]               # one moved before the bug
        raise RuntimeError("a bug in this kind's hold")
    monkeypatch.setattr(worker_main.migration, "migrate_connections", raising_move)

    async def run():
        worker = _worker(asyncio.get_running_loop(), conns)
        msg = {"type": "migrate", "targets": ["@t"]}
        Worker.handle_migrate(worker, msg)
        for _ in range(10):
            if worker.channel.replies:
                break
            await asyncio.sleep(0)                  # the move task's turns
        return worker, msg

    with caplog.at_level(logging.INFO):
        worker, msg = asyncio.run(run())
    assert worker.channel.replies == [(msg, {"type": "migrated", "moved": 1, "kept": 2})]
    assert not worker.migrating and worker.draining
    assert conns[1].drained and conns[2].drained
    assert worker.finished == []                    # two connections still drain here
    assert "moving connections stopped part-way (RuntimeError: a bug in this kind's hold); " \
           "1 of 3 moved, 2 stay to drain" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_move_that_raises_with_nothing_left_finishes_the_worker(monkeypatch):
    async def raising_move(worker, targets, keep_upstreams=False):
        worker.connections.clear()
        raise RuntimeError("late bug")
    monkeypatch.setattr(worker_main.migration, "migrate_connections", raising_move)

    async def run():
        worker = _worker(asyncio.get_running_loop(), [_Conn()])
        Worker.handle_migrate(worker, {"type": "migrate", "targets": []})
        for _ in range(10):
            if worker.channel.replies:
                break
            await asyncio.sleep(0)
        return worker

    worker = asyncio.run(run())
    assert worker.channel.replies[0][1] == {"type": "migrated", "moved": 1, "kept": 0}
    assert worker.finished == [worker_main.EXIT_OK]
