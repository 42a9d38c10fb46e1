"""The handoff contract on values: messages and connection records (supervisor/handoff/protocol.py)
and their adoption through the registry (worker/connection.py, worker/migration.py).

Pinned here: the version-1 wire form that 0.1.0 sends and reads (so 0.2.0 takes over from it and
rolls back to it), the version-2 form with explicit descriptor counts, and that a record the
receiver cannot use is refused without disturbing the descriptors of the records after it.
"""

from __future__ import annotations

import asyncio
import errno

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.supervisor.handoff import protocol
from baton.supervisor.handoff.protocol import Address, ListOf, Maybe, RECORDS
from baton.worker import connection, migration
from baton.worker.connection import Connection, Export, Lifecycle, Move

# -- strategies built from the record definitions themselves ------------------------------------


def strategy(spec):
    if isinstance(spec, Maybe):
        return st.one_of(st.none(), strategy(spec.inner))
    if isinstance(spec, ListOf):
        return st.lists(strategy(spec.inner), max_size=3)
    if isinstance(spec, Address):
        return st.one_of(st.tuples(st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
                                   st.integers(0, 65535)).map(list),
                         st.tuples(st.just("fe80::1"), st.integers(0, 65535), st.integers(0, 9),
                                   st.integers(0, 9)).map(list))
    if isinstance(spec, dict):
        return st.fixed_dictionaries({k: strategy(v) for k, v in spec.items()})
    if spec is bytes:
        return st.binary(max_size=64)
    if spec is bool:
        return st.booleans()
    if spec is int:
        return st.integers(0, 2**31)
    if spec is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if spec is str:
        return st.text(min_size=1, max_size=12)
    if spec is dict:        # an opaque map, e.g. a TLS record layer's state (worker/tls/state.py)
        return st.dictionaries(st.text(max_size=8), st.one_of(st.binary(max_size=16), st.integers(0, 2**31)),
                               max_size=4)
    raise AssertionError(f"no strategy for {spec!r}")


def records_of(kind):
    return strategy(RECORDS[kind].fields)


def wire(msg: dict) -> dict:
    """Through msgpack as framing.py sends it (lists stay lists, bytes stay bytes)."""
    return msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False, strict_map_key=False)


ALL_V2 = {kind: list(r.versions) for kind, r in RECORDS.items()}

# -- records ----------------------------------------------------------------------------------


# The protocol versions whose records differ: version 3 changed the batch (its claim token),
# not the records, and sends version 2's (test_version_3_records_are_version_2s).
RECORD_FORMATS = (1, 2)


@pytest.mark.parametrize("kind", sorted(RECORDS))
@pytest.mark.parametrize("version", RECORD_FORMATS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_record_round_trips_in_every_protocol_version(kind, version, data):
    fields = data.draw(records_of(kind))
    record = RECORDS[kind]
    fds = list(range(100, 100 + record.nfds))
    accepts = protocol.V1_RECORDS if version == 1 else ALL_V2
    encoded = protocol.encode_record(version, accepts, kind, fields, fds)
    if version == 1 and kind not in protocol.V1_RECORDS:
        assert encoded is None      # a kind newer than 0.1.0: it stays with the sender
        return
    assert encoded is not None
    msg = wire({"type": "connections", "conns": [encoded]})
    [incoming], leftover = protocol.decode_records(version, msg, fds)
    assert incoming.error is None, incoming.error
    assert (incoming.kind, incoming.fds, leftover) == (kind, fds, [])
    assert {k: incoming.fields[k] for k in fields} == fields


@pytest.mark.parametrize("kind", sorted(RECORDS))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_version_3_records_are_version_2s(kind, data):
    fields = data.draw(records_of(kind))
    fds = list(range(100, 100 + RECORDS[kind].nfds))
    encoded = protocol.encode_record(3, ALL_V2, kind, fields, fds)
    assert encoded == protocol.encode_record(2, ALL_V2, kind, fields, fds)
    msg = wire({"type": "connections", "conns": [encoded]})
    assert protocol.decode_records(3, msg, fds) == protocol.decode_records(2, msg, fds)


def test_version_1_is_what_0_1_0_sends():
    """Records exactly as 0.1.0 (af08ec3) wrote them: "state" instead of kind/v/nfds."""
    v1 = [
        {"id": 1, "listener": "main", "peer": ["127.0.0.1", 5000], "original": None, "chain": 0,
         "state": "open", "cluster": "backend", "host": ["127.0.0.1", 9000],
         "up": {"data": b"abc", "eof": False, "done": False}, "down": {"data": b"", "eof": True, "done": False}},
        {"id": 2, "listener": "main", "peer": None, "original": ["10.0.0.1", 80], "chain": 0,
         "state": "connecting", "initial": {"data": b"GET", "eof": False}},
        {"id": 3, "listener": "main", "peer": None, "original": None, "chain": 0, "state": "split",
         "up": {"eof": False}, "down": {"data": b"x", "eof": False, "done": False}, "limit": 1 << 20},
        {"id": 4, "listener": "http", "state": "http", "chain": 0, "peer": ["::1", 7, 0, 0],
         "original": None, "initial": None},
    ]
    fds = [10, 11, 12, 13, 14]
    records, leftover = protocol.decode_records(1, wire({"type": "connections", "conns": v1}), fds)
    assert [(r.kind, r.fds, r.error) for r in records] == [
        ("tcp", [10, 11], None), ("tcp-connecting", [12], None), ("tcp-split", [13], None),
        ("http1-idle", [14], None)]
    assert leftover == []
    # ...and what we send a version-1 peer is that same shape.
    for record in records:
        kind, fields = record.kind, {k: v for k, v in record.fields.items() if k != "state"}
        again = protocol.encode_record(1, protocol.V1_RECORDS, kind, fields, record.fds)
        assert again == record.fields


def test_an_unknown_kind_is_refused_without_shifting_the_next_records_descriptors():
    conns = [
        {"kind": "tcp-connecting", "v": 1, "nfds": 1, "id": 1, "listener": "l"},
        {"kind": "udp-session", "v": 1, "nfds": 2, "id": 2, "listener": "l"},     # from the future
        {"kind": "tcp-connecting", "v": 7, "nfds": 1, "id": 3, "listener": "l"},  # unknown version
        {"kind": "http1-idle", "v": 1, "nfds": 1, "id": 4, "listener": "l"},
    ]
    records, leftover = protocol.decode_records(2, {"conns": conns}, [20, 21, 22, 23, 24])
    assert [(r.old_id, r.fds) for r in records] == [(1, [20]), (2, [21, 22]), (3, [23]), (4, [24])]
    assert records[0].error is None and records[3].error is None
    assert "unknown connection kind 'udp-session'" in records[1].error
    assert "record version 7 not supported" in records[2].error
    assert leftover == []


def test_a_record_with_the_wrong_descriptor_count_or_fields_is_refused():
    conns = [{"kind": "tcp", "v": 1, "nfds": 1, "id": 1, "listener": "l"},
             {"kind": "tcp-split", "v": 1, "nfds": 1, "id": 2, "listener": "l", "limit": "big",
              "up": {"eof": False}, "down": {"data": b"", "eof": False, "done": False}}]
    records, _ = protocol.decode_records(2, {"conns": conns}, [1, 2])
    assert "tcp record needs 2 descriptor(s), got 1" in records[0].error
    assert records[1].error == "tcp-split.limit: expected int, got str"


def test_an_untrustworthy_descriptor_count_stops_the_batch():
    conns = [{"kind": "tcp", "v": 1, "nfds": 99, "id": 1, "listener": "l"},
             {"kind": "http1-idle", "v": 1, "nfds": 1, "id": 2, "listener": "l"}]
    records, leftover = protocol.decode_records(2, {"conns": conns}, [5, 6, 7])
    assert [r.old_id for r in records] == [1]
    assert "bad descriptor count" in records[0].error
    assert leftover == [5, 6, 7]                  # all closed by the caller, none misplaced


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from(protocol.VERSIONS),
       conns=st.lists(st.dictionaries(st.sampled_from(["kind", "v", "nfds", "id", "listener", "state",
                                                       "chain", "peer", "up", "down", "cluster", "host"]),
                                      st.one_of(st.none(), st.integers(-3, 5), st.text(max_size=5),
                                                st.binary(max_size=4), st.booleans(),
                                                st.lists(st.integers(0, 3), max_size=3))),
                      max_size=6),
       nfds=st.integers(0, 12))
def test_garbage_records_never_raise_and_every_descriptor_is_accounted_for(version, conns, nfds):
    fds = list(range(nfds))
    records, leftover = protocol.decode_records(version, {"conns": conns}, fds)
    placed = [fd for r in records for fd in r.fds]
    assert placed + leftover == fds               # each descriptor exactly once, in order
    for r in records:
        assert r.error is not None or r.kind in RECORDS


def test_a_receiver_that_does_not_adopt_a_kind_gets_none():
    fields = {"id": 1, "listener": "l", "chain": 0, "peer": None, "original": None, "initial": None}
    assert protocol.encode_record(2, {"tcp": [1]}, "http1-idle", fields, [3]) is None
    with pytest.raises(ValueError):
        protocol.encode_record(2, ALL_V2, "http1-idle", fields, [3, 4])


def test_hello_answer_lists_the_records_a_worker_adopts():
    reply = wire(protocol.hello_reply(2, 10, 3))
    protocol.check(reply)
    assert protocol.accepted_records(2, reply) == ALL_V2
    # A version-1 peer (0.1.0) lists nothing: it adopts exactly the version-1 records.
    old_reply = {"type": "hello", "version": 1, "pid": 10, "generation": 3}
    assert protocol.accepted_records(1, old_reply) == protocol.V1_RECORDS
    assert set(protocol.V1_RECORDS) == {"tcp", "tcp-connecting", "tcp-split", "http1-idle"}


# -- messages ---------------------------------------------------------------------------------

VALID = [
    protocol.hello(1, 2), protocol.hello_reply(1, 1, 2), {"type": "failed", "reason": "bad config"},
    {"type": "take"},
    {"type": "sockets", "listeners": [{"address": "127.0.0.1", "port": 80, "fd": 0}],
     "admin": None, "control": 1},
    {"type": "ready", "workers": ["\0baton-worker-2-0"]}, {"type": "committed"},
    {"type": "main", "pid": 7}, protocol.error("no"),
    {"type": "connections", "conns": []}, {"type": "adopted", "ids": [1], "refused": {2: "why"},
                                           "new_ids": {1: 9}},
    {"type": "data", "id": 1, "data": b"x"}, {"type": "eof", "id": 1}, {"type": "close", "id": 1},
    {"type": "pause", "id": 1}, {"type": "resume", "id": 1},
    {"type": "done", "id": 1}, {"type": "reset", "id": 1},
]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m["type"])
def test_every_message_type_is_defined_and_checked(msg):
    protocol.check(wire(msg))
    assert set(protocol.MESSAGES) == {m["type"] for m in VALID}


@pytest.mark.parametrize("msg, error", [
    ({"type": "nonsense"}, "unknown message type 'nonsense'"),
    ({"versions": [1]}, "unknown message type None"),
    ({"type": "failed"}, "failed.reason: missing"),
    ({"type": "ready", "workers": ["a", 3]}, "ready.workers[1]: expected str, got int"),
    ({"type": "sockets", "listeners": [{"address": "x", "port": True, "fd": 0}]},
     "sockets.listeners[0].port: expected int, got bool"),
    ({"type": "data", "id": 1, "data": "text"}, "data.data: expected bytes, got str"),
])
def test_a_malformed_message_is_named(msg, error):
    with pytest.raises(protocol.ProtocolError, match=None) as info:
        protocol.check(msg)
    assert str(info.value) == error


# -- the registry: adding a kind is one class, one record, one registration ------------------


class _Listener:
    name = "l"
    chains = ()


class _Worker:
    id = 0

    def __init__(self):
        self.listeners = {"l": _Listener()}
        self.connections = {}
        self.ids = iter(range(100, 200))

    def next_connection_id(self):
        return next(self.ids)


class Datagram(Connection):
    """A pretend kind, as a new issue would add one (UDP sessions, say)."""

    kind = "datagram"

    def __init__(self, conn_id, listener, fields, fds):
        self.id, self.listener, self.chain = conn_id, listener, None
        self.state = Lifecycle.OPEN
        self.fields, self.fds, self.started = fields, fds, False

    def readiness(self):
        return Move.NOW

    def export(self, client_only=False):
        return Export("datagram", {"id": self.id, "listener": "l", "sessions": 3}, list(self.fds))

    def after_adoption(self):
        self.started = True

    @classmethod
    def adopt(cls, worker, listener, fields, fds, conn_id, channel):
        return cls(conn_id, listener, fields, fds)


@pytest.fixture
def datagram_kind(monkeypatch):
    record = protocol.Record("datagram", (1,), 1, ("socket",), {"id": int, "listener": str, "sessions": int})
    monkeypatch.setitem(protocol.RECORDS, "datagram", record)
    monkeypatch.setitem(connection._ADOPTERS, "datagram", Datagram.adopt)
    yield


def test_a_new_kind_moves_through_the_registry_alone(datagram_kind):
    sender = Datagram(5, _Listener(), {}, [42])
    export = sender.export()
    accepts = {**ALL_V2, "datagram": [1]}
    msg = wire({"type": "connections",
                "conns": [protocol.encode_record(2, accepts, export.kind, export.fields, export.fds)]})
    worker = _Worker()
    adopted, refused, new_ids, conns = migration.adopt_connections(worker, 2, msg, export.fds)
    assert (adopted, refused, new_ids) == ([5], {}, {5: 100})
    [conn] = conns
    assert worker.connections == {100: conn} and conn.fields["sessions"] == 3 and conn.fds == [42]
    # A version-1 peer (0.1.0) cannot adopt it: the sender keeps the connection.
    assert protocol.encode_record(1, protocol.V1_RECORDS, "datagram", export.fields, export.fds) is None


def test_a_record_for_a_listener_this_worker_lacks_is_refused(datagram_kind):
    msg = {"conns": [{"kind": "datagram", "v": 1, "nfds": 1, "id": 5, "listener": "gone", "sessions": 1}]}
    closed = []
    import baton.worker.migration as m
    original = m.close_fds
    m.close_fds = lambda fds: closed.extend(fds)
    try:
        adopted, refused, _, conns = migration.adopt_connections(_Worker(), 2, msg, [77])
    finally:
        m.close_fds = original
    assert (adopted, conns, closed) == ([], [], [77])
    assert refused == {5: "no listener 'gone' here"}


class SentAtOnce:
    """A fake channel's frames leave as soon as they are requested: none is ever queued,
    so none can be withdrawn (Channel.request_frame, Channel.withdraw)."""

    def request_frame(self, msg, fds, timeout=None, dup=False):
        return self.request(msg, fds, timeout, dup), None

    def withdraw(self, frame):
        return False


class _CountingChannel(SentAtOnce):
    """A receiver that adopts everything on the next loop turn, counting the batches it
    holds unanswered."""

    def __init__(self):
        self.closed = False
        self.unanswered = self.most_unanswered = 0

    def close(self, reason="closed"):
        self.closed = True

    def request(self, msg, fds, timeout=None, dup=True):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.unanswered += 1
        self.most_unanswered = max(self.most_unanswered, self.unanswered)
        ids = [record["id"] for record in msg["conns"]]

        def answer():
            self.unanswered -= 1
            future.set_result({"type": "adopted", "ids": ids, "new_ids": {i: i for i in ids}})
        loop.call_soon(answer)
        return future


class _Moving(Datagram):
    moved_to = None

    def migrated(self, channel, new_id):
        self.moved_to = new_id


class _NoDescriptors(Datagram):
    def export(self, client_only=False):
        raise OSError(errno.EMFILE, "Too many open files")

    def resume(self):
        self.resumed = True


def test_a_move_holds_a_bounded_number_of_batches_and_survives_emfile(datagram_kind):
    """Exported connections may hold a second descriptor until their batch is answered:
    the move keeps at most MAX_BATCHES_IN_FLIGHT unanswered, and a connection that cannot
    be exported (EMFILE) stays here, resumed, while the rest move."""
    conns = [_Moving(i, _Listener(), {}, [1000 + i]) for i in range(2000)]
    stuck = _NoDescriptors(5000, _Listener(), {}, [7])
    channel = _CountingChannel()
    peer = migration.Peer(channel, 2, {**ALL_V2, "datagram": [1]})
    moved, kept = asyncio.run(migration._move(_Worker(), conns[:1000] + [stuck] + conns[1000:],
                                              [peer], False))
    assert moved == 2000 and kept == {stuck} and stuck.resumed
    assert all(c.moved_to == c.id for c in conns)
    assert 1 < channel.most_unanswered <= migration.MAX_BATCHES_IN_FLIGHT


class _DyingChannel(SentAtOnce):
    """A receiver killed with batches unanswered: each request fails as its channel closes,
    as Channel does when the peer goes away."""

    def __init__(self):
        self.closed = False
        self.batches = 0

    def request(self, msg, fds, timeout=None, dup=True):
        from baton.supervisor.handoff.channel import ChannelClosed
        if self.closed:
            raise ChannelClosed("handoff to the dead worker: closed")
        self.batches += 1
        future = asyncio.get_running_loop().create_future()

        def die():
            self.closed = True
            future.set_exception(ChannelClosed("handoff to the dead worker: peer closed"))
        asyncio.get_running_loop().call_soon(die)
        return future

    def close(self, reason="closed"):
        self.closed = True


class _Leaving(_Moving):
    """Leaves its worker's table once adopted, as a real connection does."""

    worker = None
    resumed = 0

    def migrated(self, channel, new_id):
        super().migrated(channel, new_id)
        del self.worker.connections[self.id]

    def resume(self):
        self.resumed += 1


def test_a_receiver_killed_mid_move_leaves_its_batches_to_the_others(datagram_kind, monkeypatch):
    """A new worker killed while connections are being moved to it: the batches it never
    answered resume here, then go to the receivers still there, instead of draining here
    until the drain deadline cuts them (1200 connections, 2 receivers: 466 stayed to drain)."""
    worker = _Worker()
    worker.generation = 1
    for i in range(600):
        conn = worker.connections[i] = _Leaving(i, _Listener(), {}, [1000 + i])
        conn.worker = worker
    dying, alive = _DyingChannel(), _CountingChannel()
    peers = [migration.Peer(dying, 2, {**ALL_V2, "datagram": [1]}),
             migration.Peer(alive, 2, {**ALL_V2, "datagram": [1]})]

    async def open_handoff(path, generation, worker=None):
        return peers[int(path)]
    monkeypatch.setattr(migration, "open_handoff", open_handoff)
    conns = list(worker.connections.values())
    moved, kept, count = asyncio.run(migration.migrate_connections(worker, ["0", "1"], idle_wait=1.0))
    assert (moved, kept, count) == (600, 0, 600) and worker.connections == {}
    assert all(c.moved_to == c.id for c in conns)
    # Sent to the dead receiver first (round-robin), resumed when it died, then moved.
    assert dying.batches >= 1 and sum(1 for c in conns if c.resumed) == dying.batches * 120
