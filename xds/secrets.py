"""Secrets, as Envoy names them: static_resources.secrets and SDS (Secret resources), and the
references a TLS context makes to them (SdsSecretConfig), resolved into the plain `tls` spec
a worker builds its SSLContext from (xds/tls.py).

    SECRET = {"name": str,
              "tls_certificate": {"chain": PEM, "key": PEM} | None,
              "validation_context": {"trusted_ca": PEM | None, "san_matchers": [...]} | None,
              "session_ticket_keys": [80-byte keys] | None,      (worker/tls/tickets.py)
              "watch": {"dirs": [dir], "names": [file name] | None} | None}
    REF    = {"name": secret name, "source": SOURCE, "path": where the config names it}
    SOURCE = {"key": "static" | "ads" | "grpc:<cluster>" | "path:<file>", "kind": ...,
              "initial_fetch_timeout": seconds, ...}       (xds/config_source.py)

A context that names secrets carries them in tls["sds"]: the references and the context's
own (inline) material, so resolving is a pure function of the spec and the secrets known
now, and can run again whenever a secret changes:

    tls = resolve_tls(tls, {"static": {...}, "ads": {...}, "grpc:sds-grpc": {...}})

Until every secret a context names is known, the resolved context has no certificate at all
(tls["missing_secrets"] says which): it fails closed, so a server whose validation context has
not arrived never accepts a client certificate it could not check.

Who resolves: translate_bootstrap the static references (resolve_static); the master every
other one, when it merges what the xDS agent publishes (xds/merge.py); the agent keeps a
listener warming until its SDS secrets are known (xds/dynamic.py), as Envoy does.
"""

from __future__ import annotations

import os

from . import protos
from .fields import check_fields
from .parse import join

SECRET_TYPE = "envoy.extensions.transport_sockets.tls.v3.Secret"
STATIC = {"key": "static", "kind": "static", "initial_fetch_timeout": 0.0}


def secret_class():
    protos.import_type(SECRET_TYPE)
    return protos.message_class(SECRET_TYPE)


# -- references ---------------------------------------------------------------------------

def secret_references(common, path, errors) -> dict:
    """A CommonTlsContext's SdsSecretConfigs -> {"certificates": [REF], "validation": REF|None}."""
    certificates = []
    for i, config in enumerate(common.tls_certificate_sds_secret_configs):
        ref = reference(config, f"{join(path, 'tls_certificate_sds_secret_configs')}[{i}]", errors)
        if ref is not None:
            certificates.append(ref)
    validation = None
    if common.HasField("validation_context_sds_secret_config"):
        validation = reference(common.validation_context_sds_secret_config,
                                join(path, "validation_context_sds_secret_config"), errors)
    combined = common.combined_validation_context
    if common.HasField("combined_validation_context"):
        here = join(path, "combined_validation_context")
        if common.HasField("validation_context") or validation is not None:
            errors.append(f"{here}: only one of validation_context, "
                          "validation_context_sds_secret_config and combined_validation_context")
        if not combined.HasField("validation_context_sds_secret_config"):
            errors.append(f"{join(here, 'validation_context_sds_secret_config')}: required")
        else:
            validation = reference(combined.validation_context_sds_secret_config,
                                    join(here, "validation_context_sds_secret_config"), errors)
    elif common.HasField("validation_context") and validation is not None:
        errors.append(f"{join(path, 'validation_context_sds_secret_config')}: only one of "
                      "validation_context and validation_context_sds_secret_config")
    return {"certificates": certificates, "validation": validation}


def reference(config, path, errors):
    """An SdsSecretConfig -> REF, or None with its errors."""
    from .config_source import translate_sds_config_source
    if not config.name:
        errors.append(f"{join(path, 'name')}: required")
        return None
    if not config.HasField("sds_config"):
        # Envoy: without sds_config the secret is a static one, looked up by name.
        return {"name": config.name, "source": dict(STATIC), "path": path}
    source = translate_sds_config_source(config.sds_config, join(path, "sds_config"), errors)
    if source is None:
        return None
    return {"name": config.name, "source": source, "path": path}


def attach_references(spec: dict, refs: dict) -> dict:
    """A translated context + its references -> the spec with tls["sds"] (unresolved: it has
    no certificate until resolve_tls finds every secret)."""
    ticket_keys = refs.get("ticket_keys")
    if not refs["certificates"] and refs["validation"] is None and ticket_keys is None:
        return spec
    base = {"certificates": spec["certificates"], "trusted_ca": spec["trusted_ca"],
            "san_matchers": spec["san_matchers"]}
    sds = {"certificates": refs["certificates"], "validation": refs["validation"], "base": base}
    if ticket_keys is not None:         # a DownstreamTlsContext's session_ticket_keys secret
        sds["ticket_keys"] = ticket_keys
    spec = {**spec, "sds": sds}
    return resolve_tls(spec, {})


def references(tls: dict | None) -> list[dict]:
    sds = (tls or {}).get("sds")
    if not sds:
        return []
    return [*sds["certificates"], *([sds["validation"]] if sds["validation"] else []),
            *([sds["ticket_keys"]] if sds.get("ticket_keys") else [])]


# Where no TLS context sits, and which are big: not walked (an EDS update of 10,000 hosts).
_NO_SECRETS = frozenset(("route_config", "endpoints"))


def spec_references(spec: dict) -> list[dict]:
    """Every REF in a listener or cluster spec (any dict with an "sds" record in it: a
    filter chain's tls, a cluster's UpstreamTlsContext, wherever it sits)."""
    found = []
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            sds = item.get("sds")
            if isinstance(sds, dict) and "base" in sds:
                found.extend(references(item))
                continue
            stack.extend(v for k, v in item.items() if k not in _NO_SECRETS)
        elif isinstance(item, list):
            stack.extend(item)
    return found


# -- resolving ------------------------------------------------------------------------------

def resolve_tls(tls: dict, secrets: dict) -> dict:
    """tls with the material of the secrets it names (secrets: {source key: {name: SECRET}});
    fails closed (no certificate) while any of them is unknown."""
    sds = tls.get("sds")
    if not sds:
        return tls
    base = sds["base"]
    certificates, missing = list(base["certificates"]), []
    for ref in sds["certificates"]:
        secret = _find(secrets, ref)
        if secret is None or secret.get("tls_certificate") is None:
            missing.append(ref["name"])
        else:
            certificates.append(secret["tls_certificate"])
    trusted_ca, matchers = base["trusted_ca"], list(base["san_matchers"])
    ref = sds["validation"]
    if ref is not None:
        secret = _find(secrets, ref)
        context = secret.get("validation_context") if secret else None
        if context is None:
            missing.append(ref["name"])
        else:
            # Envoy's combined_validation_context: the secret's fields merged over the
            # default context's (its trusted_ca, both lists of SAN matchers).
            trusted_ca = context["trusted_ca"] or trusted_ca
            matchers += context["san_matchers"]
    keys = {}
    ref = sds.get("ticket_keys")
    if ref is not None:
        secret = _find(secrets, ref)
        if secret is None or not secret.get("session_ticket_keys"):
            missing.append(ref["name"])
        else:
            keys["session_ticket_keys"] = secret["session_ticket_keys"]
    if missing:
        certificates = []
    return {**tls, "certificates": certificates, "trusted_ca": trusted_ca,
            "san_matchers": matchers, "missing_secrets": missing, **keys}


def _find(secrets, ref):
    return (secrets.get(ref["source"]["key"]) or {}).get(ref["name"])


def resolve_specs(value, secrets: dict):
    """A listener or cluster spec (or a list of them) with every secret reference in it
    resolved; the same objects where nothing refers to a secret."""
    if isinstance(value, dict):
        sds = value.get("sds")
        if isinstance(sds, dict) and "base" in sds:
            return resolve_tls(value, secrets)
        out = None
        for key, item in value.items():
            if key in _NO_SECRETS or not isinstance(item, (dict, list)):
                continue
            new = resolve_specs(item, secrets)
            if new is not item:
                out = out if out is not None else dict(value)
                out[key] = new
        return out if out is not None else value
    if isinstance(value, list):
        items = [resolve_specs(item, secrets) for item in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    return value


def resolve_static(snapshot: dict, errors: list) -> None:
    """After translate_bootstrap: static references resolved in the static listeners and
    clusters, an unknown static secret and an SDS cluster that cannot be dialled reported
    where they are named."""
    secrets = snapshot.get("secrets") or {}
    clusters = snapshot.get("clusters") or {}
    has_ads = bool((snapshot.get("xds") or {}).get("cluster"))
    for spec in [*snapshot["listeners"], *clusters.values()]:
        check_references(spec, secrets, errors, clusters, has_ads)
    node = snapshot.get("node") or {}
    dynamic = [ref for spec in [*snapshot["listeners"], *clusters.values()]
               for ref in spec_references(spec or {}) if ref["source"]["kind"] != "static"]
    if dynamic and not (node.get("id") and node.get("cluster")):
        # Envoy refuses it at startup too (TlsCertificateSdsApi): an SDS server tells
        # workloads apart by the node.
        errors.append(f"node: id and cluster are required by SDS ({dynamic[0]['path']} "
                      f"names secret '{dynamic[0]['name']}' from {dynamic[0]['source']['key']})")
    resolved = {"static": secrets}
    snapshot["listeners"] = resolve_specs(snapshot["listeners"], resolved)
    snapshot["clusters"] = resolve_specs(clusters, resolved)


def check_references(spec, static_secrets: dict, errors: list, clusters=None,
                     has_ads=True) -> None:
    """Errors for references that can never resolve: a static secret that is not there, an
    SDS cluster that is not a static cluster with an endpoint (clusters: the static ones),
    `ads: {}` without an ADS stream."""
    for ref in spec_references(spec or {}):
        source = ref["source"]
        if source["kind"] == "ads" and not has_ads:
            errors.append(f"{join(ref['path'], 'sds_config')}: an 'ads: {{}}' config source "
                          "needs dynamic_resources.ads_config")
        elif source["kind"] == "static" and ref["name"] not in static_secrets:
            errors.append(f"{join(ref['path'], 'name')}: unknown static secret "
                          f"'{ref['name']}' (not in static_resources.secrets)")
        elif source["kind"] == "grpc" and clusters is not None:
            cluster = clusters.get(source["cluster"])
            where = join(ref["path"], "sds_config.api_config_source.grpc_services[0]"
                         ".envoy_grpc.cluster_name")
            if cluster is None:
                errors.append(f"{where}: unknown cluster '{source['cluster']}' (it must be a "
                              "static cluster)")
            elif not cluster.get("endpoints") and not cluster.get("pipe_endpoints"):
                errors.append(f"{where}: cluster '{source['cluster']}' has no endpoint to dial")


def write_private(path: str, data: bytes) -> None:
    """A file only its owner may read: the agent's state and the master's applied config
    hold SDS secrets' private keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


# -- Secret resources ----------------------------------------------------------------------

def translate_static_secrets(pbs, path, errors, warnings=None) -> dict:
    """static_resources.secrets -> {name: SECRET}; a secret with errors maps to None, so a
    reference to it is not also reported as unknown (the same mistake twice)."""
    result, seen = {}, {}
    for i, pb in enumerate(pbs):
        here = f"{path}[{i}]"
        if not pb.name:
            errors.append(f"{join(here, 'name')}: required (references find a secret by name)")
            continue
        if pb.name in seen:
            errors.append(f"{join(here, 'name')}: duplicate secret name '{pb.name}' "
                          f"(first defined at {seen[pb.name]})")
            continue
        seen[pb.name] = here
        result[pb.name] = translate_secret(pb, here, errors, warnings)
    return result


def translate_secret(pb, path, errors, warnings=None) -> dict | None:
    """A Secret -> SECRET, or None with its errors (files are read now: a certificate that
    does not match its key, or a file that is missing, is an error naming the path)."""
    from .tls import _validation_context, translate_ticket_keys, translate_tls_certificate
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    which = pb.WhichOneof("type")
    certificate = validation = watch = ticket_keys = None
    if which == "tls_certificate":
        here = join(path, "tls_certificate")
        translated = translate_tls_certificate(pb.tls_certificate, here, errors)
        certificate = translated[1] if translated else None
        watch = _watch(pb.tls_certificate, (pb.tls_certificate.certificate_chain,
                                            pb.tls_certificate.private_key))
    elif which == "validation_context":
        here = join(path, "validation_context")
        context = pb.validation_context
        trusted_ca, matchers = _validation_context(context, here, errors)
        if trusted_ca is None and not context.HasField("trusted_ca"):
            errors.append(f"{join(here, 'trusted_ca')}: required (Baton verifies peers "
                          "against a trusted CA)")
        validation = {"trusted_ca": trusted_ca, "san_matchers": matchers}
        watch = _watch(context, (context.trusted_ca,))
    elif which == "session_ticket_keys":
        ticket_keys = translate_ticket_keys(pb.session_ticket_keys, join(path, "session_ticket_keys"), errors)
        watch = _watch(None, pb.session_ticket_keys.keys)
    elif which is None:
        errors.append(f"{path}: one of tls_certificate, validation_context or "
                      "session_ticket_keys is required")
    if len(errors) > start:
        return None
    return {"name": pb.name, "tls_certificate": certificate, "validation_context": validation,
            "session_ticket_keys": ticket_keys, "watch": watch}


def _watch(pb, sources) -> dict | None:
    """What to watch for a secret read from files: its watched_directory (any file moved
    into it: the symlink swap of Kubernetes and cert-manager), else the files' directories
    (the files themselves replaced or rewritten)."""
    files = [s.filename for s in sources if s.WhichOneof("specifier") == "filename"]
    if not files:
        return None
    if pb is not None and pb.HasField("watched_directory") and pb.watched_directory.path:
        return {"dirs": [pb.watched_directory.path], "names": None}
    dirs = sorted({os.path.dirname(os.path.abspath(f)) for f in files})
    return {"dirs": dirs, "names": sorted({os.path.basename(f) for f in files})}
