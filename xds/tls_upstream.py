"""A cluster's upstream transport sockets (envoy.transport_sockets.tls + UpstreamTlsContext,
`transport_socket` and `transport_socket_matches`) -> the plain values a worker builds its
TLS clients from (worker/tls/client.py).

    translate_cluster_tls(pb, path, errors, warnings) -> {} for a plain cluster, else
    {"transport_socket": SPEC | None,                  # the default (None: plain TCP)
     "transport_socket_matches": [{"name", "match": {key: value}, "tls": SPEC | None}]}

    SPEC = {"sni": str | None, "alpn": [protocols],    # [] : chosen by the HTTP protocol
            "certificates": [{"chain", "key"}],        # at most one: the client certificate
            "min_version", "max_version", "cipher_suites", "ecdh_curve",
            "trusted_ca": PEM | None,                  # None: the server is not verified
            "san_matchers": [...], "max_session_keys": int,
            "sds": ..., "missing_secrets": [names]}   # only with secret references

Envoy's client semantics, checked against Envoy 1.40: a client offers TLS 1.2 only unless
tls_maximum_protocol_version says otherwise (its server side goes to 1.3); without a
trusted_ca the server's certificate is not verified at all; SAN matchers need a trusted_ca;
max_session_keys defaults to 1. A match's `match` is a subset test on the endpoint's (else
its locality's) `envoy.transport_socket_match` filter metadata, first match wins, the
cluster's transport_socket is the default. Values are checked by xds/tls.py's helpers, the
same ones a listener's DownstreamTlsContext goes through.
"""

from __future__ import annotations

from google.protobuf import json_format

from . import protos
from .fields import check_fields
from .parse import join

UPSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
MATCH_FILTER = "envoy.transport_socket_match"
DEFAULT_CLIENT_MAX_VERSION = "TLSv1_2"
DEFAULT_MAX_SESSION_KEYS = 1


def translate_cluster_tls(pb, path, errors, warnings=None) -> dict:
    """Only when the cluster has a transport socket or matches: a plain cluster's snapshot
    dict keeps the shape it had."""
    if not pb.HasField("transport_socket") and not pb.transport_socket_matches:
        return {}
    default = None
    if pb.HasField("transport_socket"):
        default = translate_upstream_socket(pb.transport_socket, join(path, "transport_socket"),
                                            errors, warnings)
    matches, names = [], set()
    for i, match_pb in enumerate(pb.transport_socket_matches):
        here = f"{join(path, 'transport_socket_matches')}[{i}]"
        if not match_pb.name:
            errors.append(f"{here}.name: required")
        elif match_pb.name in names:
            errors.append(f"{here}.name: {match_pb.name!r} is used twice")
        names.add(match_pb.name)
        match = json_format.MessageToDict(match_pb.match) if match_pb.HasField("match") else {}
        tls = None
        if match_pb.HasField("transport_socket"):
            tls = translate_upstream_socket(match_pb.transport_socket, f"{here}.transport_socket",
                                            errors, warnings)
        else:
            errors.append(f"{here}.transport_socket: required")
        matches.append({"name": match_pb.name, "match": match, "tls": tls})
    return {"transport_socket": default, "transport_socket_matches": matches}


def translate_upstream_socket(socket_pb, path, errors, warnings=None):
    """One TransportSocket on the upstream side -> SPEC, or None for raw_buffer (or an error)."""
    from .tls import RAW_BUFFER_SOCKET, RAW_BUFFER_TYPE, TLS_SOCKET

    check_fields(socket_pb, path, errors, warnings)
    type_name = (protos.type_name(socket_pb.typed_config.type_url)
                 if socket_pb.HasField("typed_config") else None)
    if socket_pb.name == RAW_BUFFER_SOCKET or type_name == RAW_BUFFER_TYPE:
        return None
    config_path = join(path, "typed_config")
    if socket_pb.name != TLS_SOCKET and type_name != UPSTREAM_TLS_CONTEXT:
        errors.append(f"{join(path, 'name')}: {socket_pb.name or type_name!r} not supported "
                      f"(only {TLS_SOCKET} or {RAW_BUFFER_SOCKET})")
        return None
    if type_name != UPSTREAM_TLS_CONTEXT:
        errors.append(f"{config_path}: {type_name or 'nothing'} not supported on a cluster "
                      f"(an {UPSTREAM_TLS_CONTEXT} is required)")
        return None
    protos.import_type(UPSTREAM_TLS_CONTEXT)
    context = protos.message_class(UPSTREAM_TLS_CONTEXT)()
    socket_pb.typed_config.Unpack(context)
    return translate_upstream_tls_context(context, config_path, errors, warnings)


def translate_upstream_tls_context(pb, path, errors, warnings=None):
    from .tls import (_certificates, _tls_params, _validation, secret_references,
                      with_secret_references)

    start = len(errors)
    check_fields(pb, path, errors, warnings)
    common_path = join(path, "common_tls_context")
    common = pb.common_tls_context
    # SDS / static secrets: the same references as a listener's (xds/secrets.py); until
    # each is known the spec has "missing_secrets" and the client refuses to connect.
    refs = secret_references(common, common_path, errors)
    if len(common.tls_certificates) + len(refs["certificates"]) > 1:
        errors.append(f"{join(common_path, 'tls_certificates')}: at most one certificate "
                      "in a client context (as in Envoy)")
    certificates = _certificates(common, common_path, errors, required=False)
    params_path = join(common_path, "tls_params")
    min_version, max_version, suites, curve = _tls_params(common, params_path, errors)
    if not common.tls_params.tls_maximum_protocol_version:
        max_version = DEFAULT_CLIENT_MAX_VERSION        # Envoy's client default
        if min_version > max_version:
            errors.append(f"{join(params_path, 'tls_minimum_protocol_version')}: {min_version} "
                          f"is above a client's default maximum {max_version}")
    trusted_ca, san_matchers = _validation(common, common_path, errors)
    if san_matchers and trusted_ca is None and refs["validation"] is None:
        errors.append(f"{join(common_path, 'validation_context')}: SAN matching without "
                      "trusted_ca is insecure and not allowed (as in Envoy)")
    alpn = list(common.alpn_protocols)
    for i, name in enumerate(alpn):
        if not name or len(name.encode()) > 255:
            errors.append(f"{join(common_path, 'alpn_protocols')}[{i}]: must be 1 to 255 bytes")
    sni = pb.sni or None
    if sni is not None and (len(sni) > 255 or not sni.isascii()):
        errors.append(f"{join(path, 'sni')}: {sni!r} is not a host name of at most 255 ASCII bytes")
    keys = pb.max_session_keys.value if pb.HasField("max_session_keys") else DEFAULT_MAX_SESSION_KEYS
    if len(errors) > start:
        return None
    spec = {"sni": sni, "alpn": alpn, "certificates": certificates, "min_version": min_version,
            "max_version": max_version, "cipher_suites": suites, "ecdh_curve": curve,
            "trusted_ca": trusted_ca, "san_matchers": san_matchers, "max_session_keys": keys}
    return with_secret_references(spec, refs)


def match_metadata(metadata_pb) -> dict | None:
    """A Metadata message's `envoy.transport_socket_match` entries as plain values, or None."""
    if MATCH_FILTER not in metadata_pb.filter_metadata:
        return None
    return json_format.MessageToDict(metadata_pb.filter_metadata[MATCH_FILTER])
