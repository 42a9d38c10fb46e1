"""A record layer's whole state as a plain, versioned dict, and back (for the handoff).

    {"v": 1, "suite": "TLS_AES_128_GCM_SHA256", "role": "server",
     "read":  {"secret": b"..", "seq": 0}                  # TLS 1.3: the traffic secret
     "write": {"key": b"..", "iv": b"..", "seq": 1, "nonce_offset": N}    # TLS 1.2
     "pending_in": b"..",    # ciphertext received and not yet a whole record
     "handshake_in": b"..",  # a post-handshake message still arriving in pieces
     "pending_out": b"..",   # records sealed and not yet taken by the caller
     "peer_closed": False, "closed": False,
     "update_owed": False,       # the peer asked for a KeyUpdate we have not sent yet
     "info": {"alpn": "h2", "server_name": "a.example", "peer_certificate": b"DER" | None}}

Plaintext the layer has already returned is not here: like the L4 handoff's unsent bytes, it
belongs to the connection that holds it (MOSN's TransferTLSInfo carries its RawInput and Input
for the same two roles).

Only bytes, ints, strings, booleans, None and maps: msgpack carries it as is. A layer exported
in one process and imported in another carries on the same session; the exporting process
must not use its layer again (the sequence numbers would repeat, reusing nonces).
"""

from __future__ import annotations

from .layer import RecordLayer, protections
from .suites import suite_named

STATE_VERSION = 1


class StateError(ValueError):
    """An exported TLS state that cannot be imported (wrong version, missing or bad field)."""


def export_state(layer: RecordLayer) -> dict:
    if layer.error is not None:
        raise StateError(f"a failed TLS session cannot move: {layer.error}")
    return {
        "v": STATE_VERSION,
        "suite": layer.suite.name,
        "role": layer.role,
        "read": layer.read.export(),
        "write": layer.write.export(),
        "pending_in": layer.pending_in(),
        "handshake_in": layer.handshake_in(),
        "pending_out": layer.pending_out(),
        "peer_closed": layer.peer_closed,
        "closed": layer.closed,
        "update_owed": layer.update_owed(),
        "info": dict(layer.info),
    }


_DIRECTION_FIELDS = {
    "TLSv1.3": {"secret": bytes, "seq": int},
    "TLSv1.2": {"key": bytes, "iv": bytes, "seq": int, "nonce_offset": int},
}
_FIELDS = {"suite": str, "role": str, "pending_in": bytes, "handshake_in": bytes,
           "pending_out": bytes, "peer_closed": bool, "closed": bool, "update_owed": bool,
           "info": dict}


def import_state(state: dict) -> RecordLayer:
    """A layer that continues the exported session; `StateError` naming what is wrong."""
    if not isinstance(state, dict):
        raise StateError("TLS state is not a map")
    if state.get("v") != STATE_VERSION:
        raise StateError(f"TLS state version {state.get('v')!r} (this Baton reads {STATE_VERSION})")
    for name, kind in _FIELDS.items():
        _check(state, name, kind, "")
    try:
        suite = suite_named(state["suite"])
    except ValueError as exc:
        raise StateError(str(exc)) from None
    for direction in ("read", "write"):
        fields = state.get(direction)
        if not isinstance(fields, dict):
            raise StateError(f"TLS state: {direction} is not a map")
        for name, kind in _DIRECTION_FIELDS[suite.version].items():
            _check(fields, name, kind, f"{direction}.")
        if not 0 <= fields["seq"] < 1 << 64:
            raise StateError(f"TLS state: {direction}.seq out of range")
    try:
        read, write = protections(suite, state["read"], state["write"])
        return RecordLayer(suite, state["role"], read, write,
                           pending_in=state["pending_in"], handshake_in=state["handshake_in"],
                           pending_out=state["pending_out"], peer_closed=state["peer_closed"],
                           closed=state["closed"], update_owed=state["update_owed"],
                           info=state["info"])
    except ValueError as exc:           # key or IV of the wrong size, unknown role
        raise StateError(f"TLS state: {exc}") from None


def _check(fields: dict, name: str, kind: type, prefix: str) -> None:
    value = fields.get(name)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise StateError(f"TLS state: {prefix}{name} must be {kind.__name__}, not {type(value).__name__}")
