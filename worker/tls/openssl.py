"""The few OpenSSL calls Python's `ssl` module does not offer, through ctypes on the SSL_CTX
and SSL behind an SSLContext and an SSLObject.

    reason = openssl.unavailable()          # None, or why none of this works here
    openssl.set_ticket_keys(context, [k])   # 80-byte keys, Envoy's layout; first encrypts
    openssl.set_keylog_callback(context, f) # f(line) for every key log line, no file
    openssl.set_session_id_context(context, sid)
    openssl.session_cache_off(context)
    openssl.keep_session(ssl_object)        # handed over: OpenSSL must not drop its session
    openssl.negotiated_group(ssl_object)    # "X25519", "P-256"... (Envoy's ssl.curves.<name>)
    openssl.peer_signature_algorithm(obj)   # "ecdsa_secp256r1_sha256"... (ssl.sigalgs.<name>)

Where the pointers are: CPython keeps the SSL_CTX* right after the object header of an
SSLContext, and the SSL* after the header and the socket reference of an _ssl._SSLSocket
(Modules/_ssl.c, PySSLContext and PySSLSocket). That layout is CPython's private business,
so it is checked once against OpenSSL itself before anything is called (`unavailable()`):
a context's options read through the pointer must be the ones Python reports, and an
SSLObject's SSL must belong to its context. If either check fails, or the symbols are
missing, every setter raises OpenSSLUnavailable with the reason and every getter returns
None: the callers say so (`baton check`, the stats), nothing crashes.

The library called is the one `_ssl` itself links (dlsym through _ssl's own handle), never a
second libssl.
"""

from __future__ import annotations

import ctypes
import ssl
import sys

# OpenSSL 3.0 include/openssl/ssl.h
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
SSL_CTRL_GET_PEER_SIGNATURE_NID = 108
SSL_CTRL_GET_NEGOTIATED_GROUP = 134
SSL_SESS_CACHE_OFF = 0
SSL_SENT_SHUTDOWN, SSL_RECEIVED_SHUTDOWN = 1, 2

TICKET_KEY_LENGTH = 80          # name 16 | HMAC-SHA256 secret 32 | AES-256 key 32 (as Envoy)
TICKET_KEY_NAME_LENGTH = 16
SID_CTX_MAX = 32

_HEAD = sys.getsizeof(object())          # PyObject_HEAD: refcount and type pointer
_PTR = ctypes.sizeof(ctypes.c_void_p)

# OpenSSL NIDs -> the names BoringSSL (and so Envoy's stats) gives groups and sigalgs.
_GROUPS = {1034: "X25519", 1035: "X448", 415: "P-256", 715: "P-384", 716: "P-521"}
_EC, _RSA, _RSA_PSS, _ED25519, _ED448 = 408, 6, 912, 1087, 1088
_HASHES = {672: "sha256", 673: "sha384", 674: "sha512", 64: "sha1"}
_ECDSA_CURVE = {"sha256": "secp256r1", "sha384": "secp384r1", "sha512": "secp521r1"}


class OpenSSLUnavailable(RuntimeError):
    pass


class _Lib:
    """libssl through _ssl's handle, with the signatures declared once."""

    def __init__(self) -> None:
        import _ssl
        lib = ctypes.CDLL(_ssl.__file__)
        vp, c_long, c_int = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
        self.SSL_CTX_ctrl = _fn(lib.SSL_CTX_ctrl, c_long, vp, c_int, c_long, vp)
        self.SSL_CTX_callback_ctrl = _fn(lib.SSL_CTX_callback_ctrl, c_long, vp, c_int, vp)
        self.SSL_CTX_get_options = _fn(lib.SSL_CTX_get_options, ctypes.c_uint64, vp)
        self.SSL_CTX_set_keylog_callback = _fn(lib.SSL_CTX_set_keylog_callback, None, vp, vp)
        self.SSL_CTX_set_session_id_context = _fn(lib.SSL_CTX_set_session_id_context, c_int, vp,
                                                  ctypes.c_char_p, ctypes.c_uint)
        self.SSL_get_SSL_CTX = _fn(lib.SSL_get_SSL_CTX, vp, vp)
        self.SSL_set_shutdown = _fn(lib.SSL_set_shutdown, None, vp, c_int)
        self.SSL_ctrl = _fn(lib.SSL_ctrl, c_long, vp, c_int, c_long, vp)
        self.SSL_get_peer_signature_type_nid = _fn(lib.SSL_get_peer_signature_type_nid, c_int, vp,
                                                   ctypes.POINTER(c_int))
        # The ticket key callback's crypto (libcrypto, a dependency of libssl).
        self.EVP_aes_256_cbc = _fn(lib.EVP_aes_256_cbc, vp)
        self.EVP_sha256 = _fn(lib.EVP_sha256, vp)
        self.EVP_EncryptInit_ex = _fn(lib.EVP_EncryptInit_ex, c_int, vp, vp, vp, vp, vp)
        self.EVP_DecryptInit_ex = _fn(lib.EVP_DecryptInit_ex, c_int, vp, vp, vp, vp, vp)
        self.HMAC_Init_ex = _fn(lib.HMAC_Init_ex, c_int, vp, vp, c_int, vp, vp)
        self.RAND_bytes = _fn(lib.RAND_bytes, c_int, vp, c_int)


def _fn(f, restype, *argtypes):
    f.restype, f.argtypes = restype, list(argtypes)
    return f


_lib: _Lib | None = None
_why_not: str | None = None
_checked = False


def unavailable() -> str | None:
    """None when the calls here work on this Python and OpenSSL, else the reason."""
    global _lib, _why_not, _checked
    if not _checked:
        _checked = True
        try:
            lib = _Lib()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.options |= ssl.OP_NO_TICKET
            if lib.SSL_CTX_get_options(_ctx_pointer(ctx)) != int(ctx.options):
                raise OpenSSLUnavailable("the SSL_CTX pointer of an SSLContext is not where "
                                         "CPython kept it (a different Python build)")
            obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
            if lib.SSL_get_SSL_CTX(_ssl_pointer(obj)) != _ctx_pointer(ctx):
                raise OpenSSLUnavailable("the SSL pointer of an SSLObject is not where CPython "
                                         "kept it (a different Python build)")
            _lib = lib
        except (OSError, AttributeError) as exc:
            _why_not = f"OpenSSL's functions are not reachable from Python's _ssl: {exc}"
        except OpenSSLUnavailable as exc:
            _why_not = str(exc)
    return _why_not


def _ctx_pointer(context: ssl.SSLContext) -> int:
    return ctypes.c_void_p.from_address(id(context) + _HEAD).value


def _ssl_pointer(obj: ssl.SSLObject) -> int:
    return ctypes.c_void_p.from_address(id(obj._sslobj) + _HEAD + _PTR).value


def _need() -> _Lib:
    reason = unavailable()
    if reason is not None:
        raise OpenSSLUnavailable(reason)
    return _lib


# -- context setters ---------------------------------------------------------------------------

def set_session_id_context(context: ssl.SSLContext, sid: bytes) -> None:
    """A session (ticket or cache entry) resumes only on a context with the same id."""
    if not 0 < len(sid) <= SID_CTX_MAX:
        raise ValueError(f"a session id context is 1 to {SID_CTX_MAX} bytes")
    if not _need().SSL_CTX_set_session_id_context(_ctx_pointer(context), sid, len(sid)):
        raise OpenSSLUnavailable("SSL_CTX_set_session_id_context refused")


def session_cache_off(context: ssl.SSLContext) -> None:
    """No stateful (session id) resumption: SSL_CTX_set_session_cache_mode(OFF)."""
    _need().SSL_CTX_ctrl(_ctx_pointer(context), SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, None)


def set_ticket_keys(context: ssl.SSLContext, keys: list[bytes]) -> None:
    """The context's session ticket keys: the first encrypts new tickets, all decrypt.

    One key goes to OpenSSL itself (SSL_CTRL_SET_TLSEXT_TICKET_KEYS, no Python per handshake).
    Several take the ticket key callback, which picks the key by its name, as Envoy does; the
    callback object lives as long as the context (kept on it)."""
    lib = _need()
    if not keys or any(len(k) != TICKET_KEY_LENGTH for k in keys):
        raise ValueError(f"session ticket keys are {TICKET_KEY_LENGTH} bytes each")
    pointer = _ctx_pointer(context)
    if len(keys) == 1:
        buf = ctypes.create_string_buffer(keys[0], TICKET_KEY_LENGTH)
        if lib.SSL_CTX_ctrl(pointer, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEY_LENGTH, buf) != 1:
            raise OpenSSLUnavailable("OpenSSL refused the session ticket key")
        return
    callback = _TicketKeyCallback(lib, keys)
    if lib.SSL_CTX_callback_ctrl(pointer, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB,
                                 ctypes.cast(callback.function, ctypes.c_void_p)) != 1:
        raise OpenSSLUnavailable("OpenSSL refused the session ticket key callback")
    _keep(context, "tickets", callback)


def set_keylog_callback(context: ssl.SSLContext, receive) -> bool:
    """OpenSSL's key log lines go to receive(line: bytes) as they are made, inside the
    handshake call (SSL_CTX_set_keylog_callback): no file, no pipe, no parsing of a stream.
    False (and nothing set) where these calls are unavailable."""
    if unavailable() is not None:
        return False
    callback = _KEYLOG_CB(lambda _ssl, line: receive(line))
    _lib.SSL_CTX_set_keylog_callback(_ctx_pointer(context), ctypes.cast(callback, ctypes.c_void_p))
    _keep(context, "keylog", callback)
    return True


# (id(context), kind) -> a ctypes callback OpenSSL holds a pointer to: kept as long as the
# context (and so its SSL_CTX) lives.
_callbacks: dict[tuple[int, str], object] = {}


def _keep(context: ssl.SSLContext, kind: str, callback) -> None:
    import weakref
    key = (id(context), kind)
    _callbacks[key] = callback
    weakref.finalize(context, _callbacks.pop, key, None)


# void cb(const SSL *ssl, const char *line)          (SSL_CTX_set_keylog_callback(3))
_KEYLOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)

# int cb(SSL *s, unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX *ctx,
#        HMAC_CTX *hctx, int enc)           (SSL_CTX_set_tlsext_ticket_key_cb(3))
_TICKET_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class _TicketKeyCallback:
    """Envoy's ticket scheme (and OpenSSL's own with one key): AES-256-CBC under the key's
    last 32 bytes, HMAC-SHA256 under its middle 32, the key's first 16 bytes as its name."""

    def __init__(self, lib: _Lib, keys: list[bytes]) -> None:
        self.lib = lib
        self.keys = [(k[:16], k[16:48], k[48:80]) for k in keys]
        self.function = _TICKET_CB(self._call)

    def _call(self, _ssl, key_name, iv, cipher_ctx, hmac_ctx, enc) -> int:
        lib = self.lib
        try:
            if enc:
                name, hmac_key, aes_key = self.keys[0]
                if lib.RAND_bytes(iv, 16) != 1:
                    return -1
                ctypes.memmove(key_name, name, TICKET_KEY_NAME_LENGTH)
                if not lib.EVP_EncryptInit_ex(cipher_ctx, lib.EVP_aes_256_cbc(), None, aes_key, iv):
                    return -1
                return 1 if lib.HMAC_Init_ex(hmac_ctx, hmac_key, 32, lib.EVP_sha256(), None) else -1
            wanted = ctypes.string_at(key_name, TICKET_KEY_NAME_LENGTH)
            for index, (name, hmac_key, aes_key) in enumerate(self.keys):
                if name == wanted:
                    if not lib.HMAC_Init_ex(hmac_ctx, hmac_key, 32, lib.EVP_sha256(), None):
                        return -1
                    if not lib.EVP_DecryptInit_ex(cipher_ctx, lib.EVP_aes_256_cbc(), None, aes_key, iv):
                        return -1
                    return 1 if index == 0 else 2       # 2: resume, and issue a fresh ticket
            return 0                                    # unknown key: a full handshake
        except Exception:                               # noqa: BLE001 - never unwind into C
            return -1


def keep_session(obj: ssl.SSLObject) -> None:
    """The session of a handshake Baton's record layer carries on stays in the context's
    cache. OpenSSL takes an SSL freed without a close_notify for a broken session and removes
    it from the cache (ssl_clear_bad_session); the SSLObject of a handed-over session is
    dropped that way, while the session itself goes on and ends with close_notify in the
    layer. Marking it shut down (nothing is sent) keeps stateful resumption working."""
    if unavailable() is None:
        _lib.SSL_set_shutdown(_ssl_pointer(obj), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)


# -- handshake facts ---------------------------------------------------------------------------

def negotiated_group(obj: ssl.SSLObject) -> str | None:
    """The key exchange group of a finished handshake, in BoringSSL's spelling; None if not
    known (no ECDHE, or these calls are unavailable)."""
    if unavailable() is not None:
        return None
    nid = _lib.SSL_ctrl(_ssl_pointer(obj), SSL_CTRL_GET_NEGOTIATED_GROUP, 0, None)
    return _GROUPS.get(nid) if nid > 0 else None


def peer_signature_algorithm(obj: ssl.SSLObject) -> str | None:
    """The signature scheme the peer signed its handshake with (a client certificate's
    CertificateVerify, on a server), named as BoringSSL's SSL_get_signature_algorithm_name
    names it for Envoy's ssl.sigalgs.<name>; None if the peer signed nothing."""
    if unavailable() is not None:
        return None
    pointer = _ssl_pointer(obj)
    kind, digest = ctypes.c_int(0), ctypes.c_int(0)
    if not _lib.SSL_get_peer_signature_type_nid(pointer, ctypes.byref(kind)):
        return None
    _lib.SSL_ctrl(pointer, SSL_CTRL_GET_PEER_SIGNATURE_NID, 0, ctypes.byref(digest))
    hash_name = _HASHES.get(digest.value)
    if kind.value == _ED25519:
        return "ed25519"
    if kind.value == _ED448:
        return "ed448"
    if hash_name is None:
        return None
    if kind.value == _EC:
        return f"ecdsa_{_ECDSA_CURVE.get(hash_name, 'unknown')}_{hash_name}"
    if kind.value == _RSA:
        return f"rsa_pkcs1_{hash_name}"
    if kind.value == _RSA_PSS:
        return f"rsa_pss_rsae_{hash_name}"
    return None
