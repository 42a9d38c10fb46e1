"""The handoff protocol between two generations of Baton (and between two workers).

Every message is a framing.py frame (a msgpack map with "type"; descriptors ride along as
SCM_RIGHTS). Every message type is defined once below (`MESSAGES`: its fields and their
types) and checked on receipt with `check()`. Two conversations use it.

Master to master, on <runtime dir>/handoff.sock, which the OLD master listens on for the
duration of one reload. The NEW master speaks first (it is the one that knows whether it can
take over), and the old one never stops serving before the commit:

    new -> old   hello        {versions, pid, generation}
    old -> new   hello        {version, pid, generation}            (or error: no common version)
    new -> old   failed       {reason}                              config invalid, bind failed...
    new -> old   take         {udp?}                                "give me your sockets"
    old -> new   sockets      {listeners: [{address, port, fd}], admin: {address, port, fd}|nil,
                               control: fd index|nil, udp_listeners?: [{address, port, fd}]}
                              + fds; udp_listeners only to a new master whose take said
                              udp: true (an older one would mistake them for TCP listeners);
                              ticket_seed: bytes, the TLS session ticket seed
                              (worker/tls/tickets.py), so tickets outlive the reload
    new -> old   ready        {workers: [handoff socket paths]}     every new worker serves
    old -> new   committed    {}                                    old stopped accepting
    new -> old   main         {pid}                                 systemd knows the new MAINPID
    (either)     error        {error}                               unknown type, bad message

After the commit the two masters share no connection. A new master that stops on purpose
while the old one still runs leaves <runtime dir>/stopped-<generation>-<pid>.<drain|stop>
first (supervisor/stop_marker.py), so that the old one does not take its exit for a crash.

Worker to worker, on the receiving worker's own handoff socket:

    old -> new   hello        {versions, pid, generation}
    new -> old   hello        {version, pid, generation, records}   records: kind -> [versions]
    old -> new   connections  {conns: [record...], claim?} + each record's descriptors, in
                              order; from version 3 also the batch's claim token (claim: its
                              index among the descriptors, the last one)
    new -> old   adopted      {ids, refused: {id: reason}, new_ids: {old id: new id}}
    either       data/eof/close/pause/resume {id, data?}            write migration (forwarding.py)
    either       done/reset {id}                                    HTTP/1.1 response forwarded
                                                                    (worker/proxy/http/inflight.py)

Connection records. What one connection carries to the next process is a *record* of a
registered kind (`RECORDS`), with its own version, its fields and an explicit number of
descriptors. On the wire (protocol version 2):

    {"kind": "tcp", "v": 1, "nfds": 2, "id": 7, "listener": "l", ...fields}

The receiver takes exactly `nfds` descriptors for each record, so a record it cannot use
(unknown kind, unsupported version, malformed) is refused with a reason, its descriptors
closed, and the connection resumes in the sender: never lost, and never shifting the
descriptors of the records after it.

Version rules (the contract between generations N and N+1, both ways):
- The protocol version is negotiated in hello (the highest both speak). Version 1 is the
  format before records were typed (Baton 0.1.x): records carry "state" ("open",
  "connecting", "split", "http") instead of kind/v/nfds, and the descriptor count is implied
  by the state. A generation that speaks 2 still speaks 1, so it takes over from and rolls
  back to a version-1 generation.
- A record kind's version changes only when a field changes meaning or a required field is
  added; optional fields may be added without a bump (receivers ignore fields they do not
  know). The receiving worker's hello lists the record versions it adopts, and the sender
  encodes each record in the newest version the receiver adopts; a connection the receiver
  cannot adopt in any version stays where it is and drains.
- Version 3 (Baton 0.3.0) adds the claim token to `connections` (supervisor/handoff/claim.py):
  a version-3 receiver takes the token before it adopts a batch and refuses a batch whose
  sender took it back at its deadline; a version-3 sender takes a batch back at the deadline
  only if it gets the token, and otherwise waits for the answer (CLAIMED_ANSWER_TIMEOUT). A
  version-3 receiver refuses a version-3 batch without a token. With a version-2 or -1 peer
  (0.1.x, 0.2.x) nothing changes: no token is sent or expected, and a batch that misses its
  deadline is taken back as before, so a peer of those releases stopped or slow past the
  deadline can still adopt it after (the hazard version 3 removes).
  A version-3 batch whose channel closes before its answer is the receiver's if the receiver
  claimed it and its process (the pid of its hello, held as a pidfd) still runs: neither
  exited nor dying by /proc (unix.doomed), or, where /proc cannot say, not seen exited
  within CLAIMED_EXIT_WAIT; otherwise (not claimed, or the receiver died) it is the sender's
  again and goes to another receiver. Nothing on the wire changed for this.
- Never remove a record version a still-supported release sends (bench/../README "Releases").

Rules of this file: a peer is checked with SO_PEERCRED before it is heard (root or our uid);
the first message must be hello, with a version both sides speak; a message of a type the
receiver does not know, or that arrives out of order, is answered with an error, never
ignored; every wait has a deadline and a peer-exited branch (in the callers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERSIONS = (1, 2, 3)
CLAIM_VERSION = 3              # batches of connections carry a claim token (claim.py)
HANDOFF_SOCKET = "handoff.sock"

HELLO_TIMEOUT = 10.0          # new master: from exec to hello
COMMIT_TIMEOUT = 60.0         # new master: from hello to ready (default of --reload-timeout)
MIGRATE_TIMEOUT = 10.0        # one batch of connections, sent until adopted
CLAIMED_ANSWER_TIMEOUT = 60.0  # a claimed batch: the move's wait for its answer (then let go)
CLAIMED_EXIT_WAIT = 1.0        # a claimed batch whose channel closed, /proc silent: until seen exited

# Descriptors per frame stay under SCM_MAX_FD (253); at most two per connection today.
CONNS_PER_FRAME = 120
BYTES_PER_FRAME = 8 << 20
MAX_FDS_PER_RECORD = 2


class ProtocolError(Exception):
    """The peer broke the protocol; the message says how."""


# -- field types ---------------------------------------------------------------------------
# A field's type is a Python type (or tuple of types), a dict (a nested map with those
# fields, all required), or one of the wrappers below.

@dataclass(frozen=True)
class Maybe:
    """The field may be nil (and may be absent)."""
    inner: object


@dataclass(frozen=True)
class ListOf:
    inner: object


@dataclass(frozen=True)
class Address:
    """[address, port] (IPv6 peers may add flowinfo and scope id, as getpeername gives)"""


def _check_value(value, spec, path: str) -> None:
    if isinstance(spec, Maybe):
        if value is not None:
            _check_value(value, spec.inner, path)
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise ProtocolError(f"{path}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _check_value(item, spec.inner, f"{path}[{i}]")
    elif isinstance(spec, Address):
        if not (isinstance(value, list) and len(value) in (2, 4) and isinstance(value[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:])):
            raise ProtocolError(f"{path}: expected [address, port], got {value!r:.60}")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ProtocolError(f"{path}: expected a map, got {type(value).__name__}")
        _check_fields(value, spec, path)
    else:
        if isinstance(value, bool) and bool not in (spec if isinstance(spec, tuple) else (spec,)):
            raise ProtocolError(f"{path}: expected {_name(spec)}, got bool")
        if not isinstance(value, spec):
            raise ProtocolError(f"{path}: expected {_name(spec)}, got {type(value).__name__}")


def _check_fields(msg: dict, fields: dict, path: str) -> None:
    for name, spec in fields.items():
        if name not in msg:
            if isinstance(spec, Maybe):
                continue
            raise ProtocolError(f"{path}.{name}: missing")
        _check_value(msg[name], spec, f"{path}.{name}")


def _name(spec) -> str:
    if isinstance(spec, tuple):
        return " or ".join(t.__name__ for t in spec)
    return spec.__name__


# -- messages -------------------------------------------------------------------------------

_LISTENER_ENTRY = {"address": str, "port": int, "fd": int}

MESSAGES: dict[str, dict] = {
    # hello is two messages in one type: the opening one lists versions, the answer has one.
    "hello": {"pid": Maybe(int), "generation": Maybe(int), "versions": Maybe(ListOf(int)),
              "version": Maybe(int), "records": Maybe(dict)},
    "failed": {"reason": str},
    "take": {"udp": Maybe(bool)},
    "sockets": {"listeners": ListOf(_LISTENER_ENTRY), "admin": Maybe(_LISTENER_ENTRY),
                "control": Maybe(int), "udp_listeners": Maybe(ListOf(_LISTENER_ENTRY)),
                "ticket_seed": Maybe(bytes)},
    "ready": {"workers": ListOf(str)},
    "committed": {},
    "main": {"pid": int},
    "error": {"error": str},
    "connections": {"conns": ListOf(dict), "claim": Maybe(int)},
    "adopted": {"ids": ListOf(int), "refused": Maybe(dict), "new_ids": Maybe(dict)},
    "data": {"id": int, "data": bytes},
    "eof": {"id": int},
    "close": {"id": int},
    "pause": {"id": int},
    "resume": {"id": int},
    "done": {"id": int},
    "reset": {"id": int},
}


def check(msg: dict) -> None:
    """ProtocolError unless `msg` is a message of a known type with the fields it needs."""
    kind = msg.get("type")
    fields = MESSAGES.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    _check_fields(msg, fields, kind)


def hello(pid: int, generation: int) -> dict:
    return {"type": "hello", "versions": list(VERSIONS), "pid": pid, "generation": generation}


def hello_reply(version: int, pid: int, generation: int) -> dict:
    """The answer to a hello; a worker's lists the records it adopts (version >= 2)."""
    msg = {"type": "hello", "version": version, "pid": pid, "generation": generation}
    if version >= 2:
        msg["records"] = {kind: list(record.versions) for kind, record in RECORDS.items()}
    return msg


def negotiate(msg: dict) -> int:
    """The version to speak with a peer's hello, or ProtocolError."""
    if msg.get("type") != "hello":
        raise ProtocolError(f"expected hello, got {msg.get('type')!r}")
    offered = msg.get("versions")
    if not isinstance(offered, list) or not all(isinstance(v, int) for v in offered):
        raise ProtocolError("hello without a list of versions")
    common = set(offered) & set(VERSIONS)
    if not common:
        raise ProtocolError(f"no common protocol version (peer speaks {offered}, we speak {list(VERSIONS)})")
    return max(common)


def error(text: str) -> dict:
    return {"type": "error", "error": text}


# -- connection records ---------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One kind of movable connection, as it crosses between processes."""
    kind: str
    versions: tuple[int, ...]     # the record versions this code reads and writes
    nfds: int                     # descriptors, in this order: see `fds`
    fds: tuple[str, ...]          # what each descriptor is
    fields: dict                  # field -> type (common fields included)
    legacy_state: str | None = None   # its "state" in protocol version 1, if it existed then
    doc: str = field(default="", compare=False)


_PEER = Maybe(Address())
_COMMON = {"id": int, "listener": str, "chain": Maybe(int), "peer": _PEER, "original": _PEER}
_DIRECTION = {"data": bytes, "eof": bool, "done": bool}

RECORDS: dict[str, Record] = {r.kind: r for r in (
    Record("tcp", (1,), 2, ("client", "upstream"),
           {**_COMMON, "cluster": str, "host": Address(), "up": _DIRECTION, "down": _DIRECTION},
           legacy_state="open",
           doc="an open tcp_proxy connection: both sockets and the unsent bytes each way "
               "(up: client -> upstream, down: upstream -> client)"),
    Record("tcp-connecting", (1,), 1, ("client",),
           {**_COMMON, "initial": Maybe({"data": bytes, "eof": bool})},
           legacy_state="connecting",
           doc="a tcp_proxy connection whose upstream connect was in flight: the adopter "
               "connects afresh; `initial` is what listener filters already read"),
    Record("tcp-split", (1,), 1, ("client",),
           {**_COMMON, "up": {"eof": bool}, "down": _DIRECTION, "limit": int},
           legacy_state="split",
           doc="write migration: the client moves, the upstream stays with the sender and "
               "its bytes are forwarded over the handoff channel (forwarding.py)"),
    Record("tls-tcp", (1,), 2, ("client", "upstream"),
           {**_COMMON, "cluster": str, "host": Address(), "tls": dict, "up": _DIRECTION,
            "down": _DIRECTION},
           doc="a TLS-terminating tcp_proxy connection (worker/proxy/tls_proxy.py): both "
               "sockets, the record layer's state (worker/tls/state.py), the plaintext not "
               "yet written upstream (up) and the records not yet written to the client (down)"),
    Record("udp", (1,), 1, ("upstream",),
           {**_COMMON, "cluster": str, "host": Maybe(Address()), "start": Maybe(float),
            "counts": Maybe(ListOf(int))},
           doc="a udp_proxy session (worker/proxy/udp_proxy.py): `peer` is the downstream "
               "address, the descriptor its upstream UDP socket (connected to `host`; not "
               "connected, host nil or the last one, under per-packet load balancing), so "
               "replies to datagrams sent before the move reach the adopter; `start` and "
               "`counts` (datagrams and bytes from and to the client) for its access log"),
    Record("tls-origin-tcp", (1,), 2, ("client", "upstream"),
           {**_COMMON, "cluster": str, "host": Address(), "tls": Maybe(dict),
            "upstream_tls": Maybe(dict), "up": _DIRECTION, "down": _DIRECTION},
           doc="a tcp_proxy connection whose bytes pass through Baton's record layer because "
               "its cluster originates TLS (worker/proxy/tls_proxy.py): both sockets, the "
               "client side's record layer state (tls, None for a plain client), the "
               "upstream side's (upstream_tls, None for a plain host of a cluster that "
               "uses TLS for others), and the bytes not yet written to each socket"),
    Record("http-tunnel", (1,), 2, ("client", "upstream"),
           {**_COMMON, "cluster": str, "host": Address(), "up": _DIRECTION, "down": _DIRECTION,
            "idle": float},
           doc="an upgraded (websocket) or CONNECT tunnel of an HTTP connection manager, as "
               "an open tcp connection: both sockets, the unsent bytes each way, and the "
               "stream idle timeout that governs it (worker/proxy/http/tunnel_move.py)"),
    Record("http1-idle", (1,), 1, ("client",),
           {**_COMMON, "initial": Maybe(bytes)},
           legacy_state="http",
           doc="an HTTP/1.1 connection between requests: the socket is its whole state"),
    Record("https1-idle", (1,), 1, ("client",),
           {**_COMMON, "tls": dict},
           doc="an HTTPS (HTTP/1.1 over TLS) connection between requests: the socket and the "
               "record layer's state (worker/tls/state.py); nothing is buffered either way"),
    Record("http1-inflight", (1,), 1, ("client",),
           {**_COMMON, "tls": Maybe(dict), "idle_drain": Maybe(float)},
           doc="an HTTP/1.1 (or HTTPS, with `tls` as in https1-idle) connection whose request "
               "has arrived and whose response is still coming: the sender keeps the exchange "
               "and forwards the response (worker/proxy/http/inflight.py); `idle_drain` "
               "(optional, from 0.3.0): the seconds left of the idle timeout's drain window"),
    Record("http2-idle", (1,), 1, ("client",),
           {**_COMMON, "h2": {"local": ListOf(int), "windows": ListOf(int), "peer": ListOf(int),
                              "highest": int, "input": bytes, "guard": Maybe(ListOf(int)),
                              "hpack": {"size": int, "allowed": int,
                                        "entries": ListOf(ListOf(bytes))}},
            "tls": Maybe(dict)},
           doc="an HTTP/2 (or over TLS, with `tls` as in https1-idle) connection with no "
               "stream open: settings, windows, the highest stream id, the HPACK decoder's "
               "table and the bytes not yet read (worker/codecs/h2server.py export_state)"),
    Record("rpc", (1,), 1, ("client",),
           {**_COMMON, "protocol": str, "input": bytes, "inflight": int},
           doc="a Dubbo or SOFA Bolt connection (worker/proxy/rpc/move.py): the socket, the "
               "bytes of a frame not complete yet (input), and how many requests the sender "
               "still serves (inflight > 0: their responses follow over the handoff channel, "
               "then done)"),
)}
_BY_LEGACY_STATE = {r.legacy_state: r for r in RECORDS.values() if r.legacy_state}
# What a version-1 peer adopts: exactly the records that existed then, at version 1.
V1_RECORDS = {kind: [1] for kind, r in RECORDS.items() if r.legacy_state}


def accepted_records(version: int, hello_reply_msg: dict) -> dict[str, list[int]]:
    """Record kind -> versions the peer adopts, from its hello answer."""
    if version < 2:
        return V1_RECORDS
    records = hello_reply_msg.get("records")
    if not isinstance(records, dict):
        return {}
    return {k: [v for v in vs if isinstance(v, int)] for k, vs in records.items()
            if isinstance(k, str) and isinstance(vs, list)}


def encode_record(version: int, accepted: dict[str, list[int]], kind: str, fields: dict,
                  fds: list) -> dict | None:
    """The wire form of one connection for a peer speaking `version` that adopts `accepted`
    record versions; None if that peer cannot adopt it (it then stays here)."""
    record = RECORDS[kind]
    if len(fds) != record.nfds:
        raise ValueError(f"{kind} record with {len(fds)} descriptors, expected {record.nfds}")
    common = set(accepted.get(kind, ())) & set(record.versions)
    if not common:
        return None
    if version < 2:
        return {**fields, "state": record.legacy_state}
    return {"kind": kind, "v": max(common), "nfds": record.nfds, **fields}


@dataclass
class Incoming:
    """One record of a `connections` message, as received: `error` is None when the record
    is well formed and adoptable by kind and version."""
    old_id: object
    kind: str | None
    fields: dict
    fds: list
    error: str | None = None


def decode_records(version: int, msg: dict, fds: list) -> tuple[list[Incoming], list]:
    """Split a `connections` message into its records, each with its own descriptors, and
    check each one. Returns (records, descriptors left over: close them)."""
    out, index = [], 0
    conns = msg.get("conns")
    if not isinstance(conns, list):
        return [], fds
    for raw in conns:
        if not isinstance(raw, dict):
            out.append(Incoming(None, None, {}, [], "record is not a map"))
            continue
        old_id = raw.get("id")
        if version < 2:
            state = raw.get("state")
            record = _BY_LEGACY_STATE.get(state) if isinstance(state, str) else None
            nfds = record.nfds if record else (2 if raw.get("state") == "open" else 1)
            record_version = 1
        else:
            kind = raw.get("kind")
            record = RECORDS.get(kind) if isinstance(kind, str) else None
            nfds = raw.get("nfds")
            record_version = raw.get("v")
            if not isinstance(nfds, int) or isinstance(nfds, bool) or not 0 <= nfds <= MAX_FDS_PER_RECORD:
                # Without a trustworthy count nothing after this record can be placed.
                out.append(Incoming(old_id, None, raw, [], f"bad descriptor count {nfds!r}"))
                break
        own, index = fds[index:index + nfds], index + nfds
        item = Incoming(old_id, record.kind if record else None, raw, own)
        if record is None:
            what = raw.get("state") if version < 2 else raw.get("kind")
            item.error = f"unknown connection kind {what!r}"
        elif record_version not in record.versions:
            item.error = f"{record.kind} record version {record_version!r} not supported (this side reads {list(record.versions)})"
        elif len(own) != nfds or nfds != record.nfds:
            item.error = f"{record.kind} record needs {record.nfds} descriptor(s), got {len(own)}"
        else:
            try:
                _check_fields(raw, record.fields, record.kind)
            except ProtocolError as exc:
                item.error = str(exc)
        out.append(item)
    return out, fds[index:]
