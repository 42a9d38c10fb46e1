"""A filter chain's `transport_socket` (envoy.transport_sockets.tls + DownstreamTlsContext)
-> the plain `tls` spec a worker builds its ssl.SSLContext from (worker/tls/server.py).

    {"certificates": [{"chain": PEM str, "key": PEM str}],   # at most one per key type
     "min_version": "TLSv1_2", "max_version": "TLSv1_3",     # Envoy's TlsProtocol names
     "cipher_suites": [names] | None,                        # TLS 1.2 only, as in Envoy
     "ecdh_curve": OpenSSL curve name | None,
     "alpn": [protocols],
     "trusted_ca": PEM str | None,
     "san_matchers": [{"type": "URI"|"DNS"|"EMAIL"|"IP_ADDRESS", "matcher": StringMatcher spec}],
     "require_client_certificate": bool,
     "handshake_timeout": seconds,
     "session_ticket_keys": [80-byte keys] | None,           # None: Baton's own (tickets.py)
     "disable_stateless_session_resumption": bool,
     "disable_stateful_session_resumption": bool}

Everything is read and checked here, once, where `baton check` can say which path is wrong:
files are read (the snapshot carries PEM text, never a path a worker would read later), the
certificate must match its key, and only what Baton's record layer can carry on after the
handshake is allowed (worker/tls/suites.py: AEAD suites, TLS 1.2 and 1.3).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from . import protos
from .fields import check_fields
from .parse import join

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
DOWNSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
RAW_BUFFER_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"

# Envoy has no default for FilterChain.transport_socket_connect_timeout (no limit). Baton
# bounds every handshake: a peer that stops mid-handshake holds a buffer and a descriptor.
DEFAULT_HANDSHAKE_TIMEOUT = 15.0
MAX_PEM_BYTES = 1 << 20

# Envoy's server defaults (DownstreamTlsContext): TLS 1.2 to TLS 1.3.
DEFAULT_MIN_VERSION = "TLSv1_2"
DEFAULT_MAX_VERSION = "TLSv1_3"
CARRIED_VERSIONS = ("TLSv1_2", "TLSv1_3")

# Envoy's (BoringSSL's) curve names -> OpenSSL's.
CURVES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
SAN_TYPES = {1: "EMAIL", 2: "DNS", 3: "URI", 4: "IP_ADDRESS"}
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def translate_transport_socket(chain_pb, here, errors, warnings):
    """The chain's transport socket -> tls spec, None for plain TCP (no transport socket, or
    raw_buffer). Errors go to `errors` with their path."""
    if not chain_pb.HasField("transport_socket"):
        if chain_pb.HasField("transport_socket_connect_timeout"):
            errors.append(f"{join(here, 'transport_socket_connect_timeout')}: needs a TLS "
                          "transport_socket")
        return None
    path = join(here, "transport_socket")
    socket_pb = chain_pb.transport_socket
    check_fields(socket_pb, path, errors, warnings)
    type_name = (protos.type_name(socket_pb.typed_config.type_url)
                 if socket_pb.HasField("typed_config") else None)
    if socket_pb.name == RAW_BUFFER_SOCKET or type_name == RAW_BUFFER_TYPE:
        return None
    if socket_pb.name != TLS_SOCKET and type_name != DOWNSTREAM_TLS_CONTEXT:
        errors.append(f"{join(path, 'name')}: {socket_pb.name or type_name!r} not supported "
                      f"(only {TLS_SOCKET} or {RAW_BUFFER_SOCKET})")
        return None
    config_path = join(path, "typed_config")
    if type_name is None:
        errors.append(f"{config_path}: required (a {DOWNSTREAM_TLS_CONTEXT})")
        return None
    if type_name != DOWNSTREAM_TLS_CONTEXT:
        errors.append(f"{config_path}: {type_name} not supported on a listener "
                      f"(only {DOWNSTREAM_TLS_CONTEXT})")
        return None
    protos.import_type(DOWNSTREAM_TLS_CONTEXT)
    context = protos.message_class(DOWNSTREAM_TLS_CONTEXT)()
    socket_pb.typed_config.Unpack(context)
    timeout = DEFAULT_HANDSHAKE_TIMEOUT
    if chain_pb.HasField("transport_socket_connect_timeout"):
        d = chain_pb.transport_socket_connect_timeout
        timeout = d.seconds + d.nanos / 1e9
        if timeout <= 0:
            errors.append(f"{join(here, 'transport_socket_connect_timeout')}: must be greater than 0s")
    return translate_downstream_tls_context(context, config_path, errors, warnings, timeout)


def translate_downstream_tls_context(pb, path, errors, warnings=None,
                                     handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT):
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    common_path = join(path, "common_tls_context")
    common = pb.common_tls_context
    refs = secret_references(common, common_path, errors)
    refs["ticket_keys"] = _ticket_keys_reference(pb, path, errors)
    certificates = _certificates(common, common_path, errors, required=not refs["certificates"])
    min_version, max_version, suites, curve = _tls_params(common, join(common_path, "tls_params"), errors)
    trusted_ca, san_matchers = _validation(common, common_path, errors)
    require = pb.require_client_certificate.value if pb.HasField("require_client_certificate") else False
    # A validation context from a secret brings its trusted_ca when it arrives.
    verifiable = trusted_ca is not None or refs["validation"] is not None
    if require and not verifiable:
        # Envoy refuses it too: a client certificate nothing can verify proves nothing.
        errors.append(f"{join(path, 'require_client_certificate')}: needs "
                      "common_tls_context.validation_context.trusted_ca")
    if san_matchers and not verifiable:
        errors.append(f"{join(common_path, 'validation_context')}: SAN matching without "
                      "trusted_ca is insecure and not allowed (as in Envoy)")
    alpn = list(common.alpn_protocols)
    for i, name in enumerate(alpn):
        if not name or len(name.encode()) > 255:
            errors.append(f"{join(common_path, 'alpn_protocols')}[{i}]: must be 1 to 255 bytes")
    ticket_keys = (translate_ticket_keys(pb.session_ticket_keys, join(path, "session_ticket_keys"), errors)
                   if pb.HasField("session_ticket_keys") else None)
    if len(errors) > start:
        return None
    spec = {"certificates": certificates, "min_version": min_version, "max_version": max_version,
            "cipher_suites": suites, "ecdh_curve": curve, "alpn": alpn, "trusted_ca": trusted_ca,
            "san_matchers": san_matchers, "require_client_certificate": require,
            "handshake_timeout": handshake_timeout, "session_ticket_keys": ticket_keys,
            "disable_stateless_session_resumption": pb.disable_stateless_session_resumption,
            "disable_stateful_session_resumption": pb.disable_stateful_session_resumption}
    return with_secret_references(spec, refs)


def _ticket_keys_reference(pb, path, errors):
    if not pb.HasField("session_ticket_keys_sds_secret_config"):
        return None
    from .secrets import reference
    return reference(pb.session_ticket_keys_sds_secret_config,
                     join(path, "session_ticket_keys_sds_secret_config"), errors)


def translate_ticket_keys(keys_pb, path, errors):
    """A TlsSessionTicketKeys (a context's, or a Secret's) -> [80-byte keys], files read now;
    None with its errors."""
    from ..worker.tls import openssl
    keys_path = join(path, "keys")
    if not keys_pb.keys:
        errors.append(f"{keys_path}: at least one key is required")
        return None
    why_not = openssl.unavailable()
    if why_not is not None:
        errors.append(f"{path}: cannot be set on this Python: {why_not}")
        return None
    keys = []
    for i, source in enumerate(keys_pb.keys):
        key = read_data_source(source, f"{keys_path}[{i}]", errors)
        if key is not None and len(key) != openssl.TICKET_KEY_LENGTH:
            # Envoy's check, in its words (checked against Envoy 1.40).
            errors.append(f"{keys_path}[{i}]: Incorrect TLS session ticket key length. "
                          f"Length {len(key)}, expected length {openssl.TICKET_KEY_LENGTH}.")
        elif key is not None:
            keys.append(key)
    return keys


# -- secrets (SDS and static_resources.secrets: xds/secrets.py) ----------------------------

def secret_references(common, common_path, errors) -> dict:
    """The SdsSecretConfigs of a CommonTlsContext -> {"certificates": [REF], "validation":
    REF | None} (xds/secrets.py). For UpstreamTlsContext too."""
    from .secrets import secret_references as refs_of
    return refs_of(common, common_path, errors)


def with_secret_references(spec: dict, refs: dict) -> dict:
    """A translated context with its secret references: resolved at once where the secret
    is known, else when it arrives (xds/secrets.py resolve_tls). The same for a cluster's
    UpstreamTlsContext: spec needs "certificates", "trusted_ca" and "san_matchers"."""
    from .secrets import attach_references
    return attach_references(spec, refs)


def _validation(common, common_path, errors):
    """validation_context, or combined_validation_context's default_validation_context
    (its SDS half is a reference) -> (trusted_ca, san_matchers)."""
    if common.HasField("validation_context"):
        return _validation_context(common.validation_context,
                                   join(common_path, "validation_context"), errors)
    combined = common.combined_validation_context
    if common.HasField("combined_validation_context") and combined.HasField("default_validation_context"):
        return _validation_context(
            combined.default_validation_context,
            join(common_path, "combined_validation_context.default_validation_context"), errors)
    return None, []


# -- certificates -----------------------------------------------------------------------------

def _certificates(common, path, errors, required=True):
    certs_path = join(path, "tls_certificates")
    if not common.tls_certificates:
        if required:
            errors.append(f"{certs_path}: required (a server needs a certificate and its key)")
        return []
    result, kinds = [], {}
    for i, cert_pb in enumerate(common.tls_certificates):
        here = f"{certs_path}[{i}]"
        translated = translate_tls_certificate(cert_pb, here, errors)
        if translated is None:
            continue
        kind, certificate = translated
        if kind in kinds:
            errors.append(f"{here}: a second {kind} certificate (tls_certificates[{kinds[kind]}]); "
                          "at most one per key type")
        kinds.setdefault(kind, i)
        result.append(certificate)
    return result


def translate_tls_certificate(cert_pb, here, errors):
    """One TlsCertificate (inline in a context, or a Secret's) -> (key type, {"chain",
    "key"}), or None with its errors: files read now, the key must match the certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    chain_pem = _pem(cert_pb, "certificate_chain", here, errors)
    key_pem = _pem(cert_pb, "private_key", here, errors)
    if chain_pem is None or key_pem is None:
        return None
    chain = _load_certificates(chain_pem, join(here, "certificate_chain"), errors)
    key = _load_key(key_pem, join(here, "private_key"), errors)
    if not chain or key is None:
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        kind = "RSA"
        if key.key_size < 2048:
            errors.append(f"{join(here, 'private_key')}: RSA key of {key.key_size} bits "
                          "(at least 2048, as Envoy requires)")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        kind = "ECDSA"
        if key.curve.name not in EC_CURVES:
            errors.append(f"{join(here, 'private_key')}: ECDSA curve {key.curve.name} not "
                          "supported (P-256, P-384 or P-521)")
    else:
        errors.append(f"{join(here, 'private_key')}: {type(key).__name__} keys not supported "
                      "(RSA or ECDSA)")
        return None
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        errors.append(f"{here}: the certificate does not match the private key "
                      f"({_origin(cert_pb.certificate_chain)} vs {_origin(cert_pb.private_key)})")
        return None
    return kind, {"chain": chain_pem, "key": key_pem}


def _pem(pb, field, here, errors):
    """A DataSource field of a message as PEM text, or None (with an error)."""
    path = join(here, field)
    if not pb.HasField(field):
        errors.append(f"{path}: required")
        return None
    data = read_data_source(getattr(pb, field), path, errors)
    if data is None:
        return None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        errors.append(f"{path}: not PEM text")
        return None


def read_data_source(pb, path, errors):
    """A DataSource's bytes (inline or a file read now), or None with an error."""
    which = pb.WhichOneof("specifier")
    if which == "inline_string":
        return pb.inline_string.encode()
    if which == "inline_bytes":
        return pb.inline_bytes
    if which == "filename":
        try:
            with open(pb.filename, "rb") as f:
                data = f.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            errors.append(f"{join(path, 'filename')}: cannot read {pb.filename!r}: "
                          f"{os.strerror(exc.errno) if exc.errno else exc}")
            return None
        if len(data) > MAX_PEM_BYTES:
            errors.append(f"{join(path, 'filename')}: {pb.filename!r} is larger than {MAX_PEM_BYTES} bytes")
            return None
        return data
    errors.append(f"{path}: one of inline_string, inline_bytes or filename is required")
    return None


def _origin(pb):
    which = pb.WhichOneof("specifier")
    return repr(pb.filename) if which == "filename" else which


def _load_certificates(pem, path, errors):
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        certs = []
    if not certs:
        errors.append(f"{path}: no PEM certificate in it")
    return certs


def _load_key(pem, path, errors):
    from cryptography.hazmat.primitives import serialization
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        errors.append(f"{path}: the private key is encrypted (a password is not supported)")
    except (ValueError, Exception) as exc:  # noqa: BLE001 - cryptography's unsupported-key errors
        errors.append(f"{path}: not a PEM private key ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})")
    return None


def _public_der(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


# -- parameters -------------------------------------------------------------------------------

def _tls_params(common, path, errors):
    from ..worker.tls.suites import SUITES

    params = common.tls_params
    names = protos.message_class("envoy.extensions.transport_sockets.tls.v3.TlsParameters").TlsProtocol
    versions = []
    for field, default in (("tls_minimum_protocol_version", DEFAULT_MIN_VERSION),
                           ("tls_maximum_protocol_version", DEFAULT_MAX_VERSION)):
        value = names.Name(getattr(params, field))
        if value == "TLS_AUTO":
            value = default
        elif value not in CARRIED_VERSIONS:
            errors.append(f"{join(path, field)}: {value} not supported (TLSv1_2 or TLSv1_3: "
                          "Baton's record layer carries only AEAD suites)")
        versions.append(value)
    if versions[0] in CARRIED_VERSIONS and versions[1] in CARRIED_VERSIONS and versions[0] > versions[1]:
        errors.append(f"{path}: tls_minimum_protocol_version {versions[0]} is above "
                      f"tls_maximum_protocol_version {versions[1]}")
    suites = None
    if params.cipher_suites:
        tls12 = [name for name, s in SUITES.items() if s.version == "TLSv1.2"]
        suites = []
        for i, entry in enumerate(params.cipher_suites):
            # BoringSSL's equal-preference groups: [A|B]; the preference order is kept.
            for name in entry.strip("[]").split("|"):
                if name in tls12:
                    suites.append(name)
                else:
                    errors.append(f"{join(path, 'cipher_suites')}[{i}]: {name!r} not supported "
                                  f"(Baton's record layer carries the AEAD suites {', '.join(tls12)}; "
                                  "TLS 1.3 suites are not configurable, as in Envoy)")
    curve = None
    if params.ecdh_curves:
        if len(params.ecdh_curves) > 1:
            errors.append(f"{join(path, 'ecdh_curves')}: one curve only (Python's ssl sets a "
                          "single group); leave unset for OpenSSL's default list")
        name = params.ecdh_curves[0]
        curve = CURVES.get(name)
        if curve is None:
            errors.append(f"{join(path, 'ecdh_curves')}[0]: {name!r} not supported "
                          f"({', '.join(CURVES)})")
    return versions[0], versions[1], suites, curve


def _validation_context(pb, path, errors):
    from .http import _string_matcher

    trusted_ca = None
    if pb.HasField("trusted_ca"):
        ca_path = join(path, "trusted_ca")
        data = read_data_source(pb.trusted_ca, ca_path, errors)
        if data is not None:
            try:
                trusted_ca = data.decode("ascii")
            except UnicodeDecodeError:
                errors.append(f"{ca_path}: not PEM text")
            else:
                if not _load_certificates(trusted_ca, ca_path, errors):
                    trusted_ca = None
    ctx = SimpleNamespace(errors=errors)
    matchers = []
    for i, san in enumerate(pb.match_typed_subject_alt_names):
        here = f"{join(path, 'match_typed_subject_alt_names')}[{i}]"
        san_type = SAN_TYPES.get(san.san_type)
        if san_type is None:
            errors.append(f"{join(here, 'san_type')}: must be EMAIL, DNS, URI or IP_ADDRESS")
            continue
        if not san.HasField("matcher"):
            errors.append(f"{join(here, 'matcher')}: required")
            continue
        matcher = _string_matcher(san.matcher, join(here, "matcher"), ctx)
        if matcher is not None:
            matchers.append({"type": san_type, "matcher": matcher})
    for i, matcher_pb in enumerate(pb.match_subject_alt_names):
        # The deprecated untyped form matches a SAN of any type.
        matcher = _string_matcher(matcher_pb, f"{join(path, 'match_subject_alt_names')}[{i}]", ctx)
        if matcher is not None:
            matchers.append({"type": None, "matcher": matcher})
    return trusted_ca, matchers


# -- /config_dump -------------------------------------------------------------------------------

# Envoy's fields marked `sensitive` in the TLS API: /config_dump shows "[redacted]" for every
# string under them, inline secret or file name alike (checked against Envoy 1.40).
SENSITIVE_FIELDS = frozenset(("private_key", "password", "pkcs12", "session_ticket_keys"))
REDACTED = "[redacted]"


def redact(value):
    """A copy of plain config data (a bootstrap, a Listener as JSON) with Envoy's sensitive
    TLS fields redacted; anything else is returned as it was."""
    if isinstance(value, dict):
        return {k: _redact_all(v) if k in SENSITIVE_FIELDS or _camel(k) in SENSITIVE_FIELDS
                else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _redact_all(value):
    if isinstance(value, dict):
        return {k: _redact_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_all(v) for v in value]
    return REDACTED if isinstance(value, (str, bytes)) else value


def _camel(key: str) -> str:
    """privateKey -> private_key (json_format writes proto JSON names)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


# -- x-forwarded-client-cert (HttpConnectionManager fields; worker/proxy/http/xfcc.py) -------

XFCC_DETAILS = ("subject", "uri", "cert", "chain", "dns")


def translate_xfcc(hcm_pb, path, errors):
    """forward_client_cert_details / set_current_client_cert_details -> {"mode": Envoy's
    enum name, "details": [the set_current_client_cert_details set]}, or None when neither
    is set (Envoy's default: SANITIZE). As in Envoy, the details only matter to
    APPEND_FORWARD and SANITIZE_SET."""
    details_set = hcm_pb.HasField("set_current_client_cert_details")
    if not hcm_pb.forward_client_cert_details and not details_set:
        return None
    mode = type(hcm_pb).ForwardClientCertDetails.Name(hcm_pb.forward_client_cert_details)
    details_pb = hcm_pb.set_current_client_cert_details
    details = [name for name in XFCC_DETAILS
               if (details_pb.subject.value if name == "subject" else getattr(details_pb, name))]
    return {"mode": mode, "details": details}
