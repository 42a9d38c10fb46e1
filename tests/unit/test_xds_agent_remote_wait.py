"""The xDS agent while an update waits for remote Wasm code (xds/agent.py): the ADS stream
reads on, other types are applied and answered at once, the waiting update's other resources
are applied at once (each on its own), and an update of the same type waits behind it, applied
and answered in order once the module is fetched (delta needs the order)."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest

from baton.worker.wasm import remote
from baton.xds.ads import CLUSTER, LISTENER, Update
from baton.xds.agent import Agent, Stats

from ..wasm_module_server import ModuleServer

CODE = b"\0asm\1\0\0\0"
SHA = hashlib.sha256(CODE).hexdigest()


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "_fetched", {})
    monkeypatch.setattr(remote, "_failed", {})


class Config:
    """Applies resources named "wasm" as a Wasm filter's remote code would (deferred when not
    held), any other at once; records what it applied."""

    def __init__(self, port):
        self.port = port
        self.applied = []

    def apply(self, update, now):
        errors = []
        for name in update.resources:
            if name == "wasm":
                module = remote.Remote("http://m/m.wasm", SHA, 5, retries=0, upstream=remote.Upstream(
                    "modules", [("127.0.0.1", self.port)], None))
                if module.defer():
                    errors.append("wasm: its remote code is being fetched")
                elif module.get()[0] != CODE:
                    errors.append("wasm: not fetched")
        if not errors:
            self.applied.append((update.type_url, update.version, sorted(update.resources),
                                 update.complete))
        return errors


class Protocol:
    def on_response(self, update):
        return update

    def ack(self, update):
        return ("ack", update.type_url, update.version)


def agent(loop, config, answers) -> Agent:
    a = Agent.__new__(Agent)
    a.loop, a.config, a.stats = loop, config, Stats()
    a.protocol = Protocol()
    a.waiting, a.restoring, a.waits = {}, {}, 0
    a.dirty = asyncio.Event()

    async def answer(call, update, scopes, errors):
        answers.append(("nack" if errors else "ack", update.type_url, update.version))
    a._answer = answer
    return a


def update(type_url, version, *names) -> Update:
    return Update(type_url, version, version, {n: ("", None) for n in names}, [], complete=True)


def test_an_update_waiting_for_its_module_holds_up_nothing_else():
    gate = threading.Event()
    server = ModuleServer({"/m.wasm": CODE}, hold=gate)

    async def run():
        answers = []
        config = Config(server.port)
        a = agent(asyncio.get_running_loop(), config, answers)
        await a._handle(None, update(LISTENER, "1", "main", "wasm"))
        assert config.applied == [(LISTENER, "1", ["main"], False)]     # its other listener
        await a._handle(None, update(CLUSTER, "1", "c"))
        await a._handle(None, update(LISTENER, "2", "main"))            # behind version 1
        assert answers == [("ack", CLUSTER, "1")]
        assert await asyncio.to_thread(server.asked.wait, 5)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*a.waiting.values()), 10)
        assert answers == [("ack", CLUSTER, "1"), ("ack", LISTENER, "1"), ("ack", LISTENER, "2")]
        assert config.applied[1:] == [(CLUSTER, "1", ["c"], True),
                                      (LISTENER, "1", ["main", "wasm"], True),
                                      (LISTENER, "2", ["main"], True)]
        assert a.waiting == {}
    try:
        asyncio.run(run())
    finally:
        gate.set()
        server.close()
