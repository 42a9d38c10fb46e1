"""The handoff protocol between two generations of Baton (and between two workers).

Every message is a framing.py frame (a msgpack map with "type"; descriptors ride along as
SCM_RIGHTS). Two conversations use it.

Master to master, on <runtime dir>/handoff.sock, which the OLD master listens on for the
duration of one reload. The NEW master speaks first (it is the one that knows whether it can
take over), and the old one never stops serving before the commit:

    new -> old   hello        {versions: [1], pid, generation}
    old -> new   hello        {version: 1, pid, generation}           (or error: no common version)
    new -> old   failed       {reason}                                config invalid, bind failed...
    new -> old   take         {}                                      "give me your sockets"
    old -> new   sockets      {listeners: [{name, address, port}], admin, control} + fds
    new -> old   ready        {workers: [handoff socket paths]}      every new worker serves
    old -> new   committed    {}                                      old stopped accepting
    (either)     error        {error}                                 unknown type, bad message

Worker to worker, on the receiving worker's own socket (<runtime dir>/worker-G-N.sock):

    old -> new   connections  {listeners: {name: spec}, conns: [state...]} + 2 fds per conn
    new -> old   adopted      {ids: [...], refused: {id: reason}}

Rules of this file: a peer is checked with SO_PEERCRED before it is heard (root or our uid);
the first message must be hello, with a version both sides speak; a message of a type the
receiver does not know, or that arrives out of order, is answered with an error, never
ignored; every wait has a deadline and a peer-exited branch (in the callers).
"""

from __future__ import annotations

VERSIONS = (1,)
HANDOFF_SOCKET = "handoff.sock"

HELLO_TIMEOUT = 10.0          # new master: from exec to hello
COMMIT_TIMEOUT = 60.0         # new master: from hello to ready (default of --reload-timeout)
MIGRATE_TIMEOUT = 10.0        # one batch of connections, sent until adopted

# Descriptors per frame stay under SCM_MAX_FD (253); two per connection.
CONNS_PER_FRAME = 120
BYTES_PER_FRAME = 8 << 20


class ProtocolError(Exception):
    """The peer broke the protocol; the message says how."""


def hello(pid: int, generation: int) -> dict:
    return {"type": "hello", "versions": list(VERSIONS), "pid": pid, "generation": generation}


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
