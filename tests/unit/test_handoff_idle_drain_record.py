"""The optional `idle_drain` of record http1-inflight (the seconds left of the idle timeout's
drain window, worker/proxy/http/inflight.py) keeps the handoff contract both ways: a 0.2.0
receiver, whose protocol module is read here from that release's commit (tests/releases.txt),
adopts a record that carries it (fields it does not know are ignored), and this code adopts
a record of 0.2.0, which never carries it. 0.1.0 (protocol version 1) has no such record."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

from baton.supervisor.handoff import protocol
from tests import releases

ROOT = Path(__file__).resolve().parents[2]


def _protocol_of(version: str) -> types.ModuleType:
    [release] = [r for r in releases.releases() if r.version == version]
    source = subprocess.run(["git", "-C", str(ROOT), "show",
                             f"{release.commit}:supervisor/handoff/protocol.py"],
                            capture_output=True, text=True, check=True).stdout
    name = f"baton_release_protocol_{version.replace('.', '_')}"
    module = types.ModuleType(name)
    sys.modules[name] = module          # its dataclasses look their module up
    try:
        exec(compile(source, f"protocol-{version}.py", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[name]
    return module


FIELDS = {"id": 7, "listener": "l", "chain": 0, "peer": ["127.0.0.1", 5000], "original": None,
          "tls": None}


def _decoded(module, record: dict):
    [item], left = module.decode_records(2, {"conns": [record]}, [10])
    assert left == []
    return item


def test_a_0_2_0_receiver_adopts_a_record_that_carries_the_drain_window():
    accepts = {"http1-inflight": [1]}
    record = protocol.encode_record(3, accepts, "http1-inflight",
                                    {**FIELDS, "idle_drain": 4.5}, [10])
    item = _decoded(_protocol_of("0.2.0"), record)
    assert item.error is None and item.kind == "http1-inflight"


def test_this_code_adopts_a_0_2_0_record_without_it_and_checks_it_when_there():
    old = _protocol_of("0.2.0")
    record = old.encode_record(2, {"http1-inflight": [1]}, "http1-inflight", FIELDS, [10])
    item = _decoded(protocol, record)
    assert item.error is None and "idle_drain" not in item.fields
    bad = _decoded(protocol, {**record, "idle_drain": "soon"})
    assert bad.error is not None and "idle_drain" in bad.error
