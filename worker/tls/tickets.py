"""Session resumption on a TLS server context: which sessions resume where, and with which
ticket keys, so that a client resumes on any worker and after `baton reload`.

    resumption(context, spec)       # in TlsServer, on every new SSLContext

Envoy's fields (DownstreamTlsContext, xds/tls.py puts them in the spec):

- `session_ticket_keys`: 80-byte keys (name 16 | HMAC secret 32 | AES key 32); the first
  encrypts new tickets, every one decrypts. Every worker builds its context from the same
  spec, so every worker reads every ticket.
- none configured: Baton's own key, derived from one random seed of the master lineage
  (`seed()`) and the context's identity. Workers are forked from the master and inherit the
  seed; the next generation receives it in the handoff's `sockets` message
  (supervisor/upgrade.py), so tickets issued before a reload still resume after it. Envoy
  gives each context a random key instead: its tickets die with a hot restart.
- `disable_stateless_session_resumption`: no tickets (OP_NO_TICKET; TLS 1.3 then issues
  stateful tickets from the session cache). `disable_stateful_session_resumption`: no
  session cache. Both: no resumption, no ticket at all.

The session id context is a digest of what a session was authenticated against (our
certificates, the CA and SAN rules a client certificate was checked with), as Envoy's is: a
ticket from one filter chain never resumes on a chain that would have judged the client
differently, even where both share ticket keys. The stateful cache is each worker's own
(OpenSSL's cache lives in the process): Envoy's is shared by its threads, so a TLS 1.2
client that resumes by session id alone resumes in Baton only on the worker it first met.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl

from . import openssl

log = logging.getLogger(__name__)

SEED_LENGTH = 32
_seed: bytes | None = None          # the master's, inherited by forked workers


def seed() -> bytes:
    """The master lineage's ticket seed: made once in the first generation."""
    global _seed
    if _seed is None:
        _seed = os.urandom(SEED_LENGTH)
    return _seed


def adopt_seed(value: bytes | None) -> bytes:
    """At start, before any worker is forked: the previous generation's seed (from the
    handoff), or a new one at a first start or from a generation that sent none."""
    global _seed
    _seed = value if isinstance(value, bytes) and len(value) == SEED_LENGTH else os.urandom(SEED_LENGTH)
    return _seed


def session_id_context(spec: dict) -> bytes:
    """What a resumed session must have been authenticated against, as 32 bytes."""
    identity = {k: spec.get(k) for k in ("certificates", "trusted_ca", "san_matchers",
                                         "require_client_certificate")}
    identity["certificates"] = [c["chain"] for c in identity["certificates"] or ()]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).digest()


def auto_key(sid: bytes) -> bytes:
    """Baton's ticket key for a context with this session id context (none configured)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(hashes.SHA256(), openssl.TICKET_KEY_LENGTH, salt=None,
                info=b"baton session ticket key " + sid).derive(seed())


def resumption(context: ssl.SSLContext, spec: dict) -> None:
    """Set up session resumption on a new server context from its spec."""
    tickets = not spec.get("disable_stateless_session_resumption", False)
    cache = not spec.get("disable_stateful_session_resumption", False)
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    if not tickets and not cache:
        context.num_tickets = 0
    why_not = openssl.unavailable()
    if why_not is not None:
        if spec.get("session_ticket_keys"):
            # xds/tls.py refused the config already (`baton check`): never reached in a worker.
            raise openssl.OpenSSLUnavailable(f"session_ticket_keys: {why_not}")
        log.warning("TLS sessions resume only on the worker that issued them: %s", why_not)
        return
    sid = session_id_context(spec)
    openssl.set_session_id_context(context, sid)
    if not cache:
        openssl.session_cache_off(context)
    if tickets:
        openssl.set_ticket_keys(context, spec.get("session_ticket_keys") or [auto_key(sid)])
