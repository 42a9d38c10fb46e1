"""HBONE's pieces of the Envoy API (Istio ambient: TCP carried in HTTP CONNECT over mTLS):
tcp_proxy's `tunneling_config` (worker/proxy/tunneling.py), the connection manager's
`http2_protocol_options.allow_connect` and a route's `upgrade_configs[].connect_config`
(CONNECT terminated here: worker/proxy/http/connect_tunnel.py).

ALLOWED_HBONE joins fields.py's whitelist; the translators below check their subtrees.
"""

from __future__ import annotations

from .fields import SKIP, WALK, check_fields
from .parse import join

ALLOWED_HBONE = {
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {"tunneling_config": SKIP},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig": {
        "hostname": WALK, "headers_to_add": SKIP},
    # Classic HTTP/2 CONNECT (what HBONE and tunneling_config send) is served with or without
    # it, as in Envoy; RFC 8441's extended CONNECT (:protocol, websockets over HTTP/2), what
    # the flag adds, is not offered.
    "envoy.config.core.v3.Http2ProtocolOptions": {"allow_connect": (
        "accepted; CONNECT is served without it, but extended CONNECT (RFC 8441 :protocol, "
        "websockets over HTTP/2) is not offered")},
    # The route terminates CONNECT: its cluster gets the stream's bytes over TCP (checked by
    # connect_terminate below).
    "envoy.config.route.v3.RouteAction.UpgradeConfig": {"connect_config": SKIP},
}


def translate_tunneling_config(pb, path, errors, warnings=None) -> dict | None:
    """TcpProxy.tunneling_config -> {"tunneling": {"hostname", "headers"}}, {} when unset."""
    if not pb.HasField("tunneling_config"):
        return {}
    config = pb.tunneling_config
    here = join(path, "tunneling_config")
    check_fields(config, here, errors, warnings)
    if not config.hostname:
        errors.append(f"{join(here, 'hostname')}: required")     # Envoy: min_len 1
    _check_template(config.hostname, join(here, "hostname"), errors)
    headers = []
    for i, option in enumerate(config.headers_to_add):
        where = f"{join(here, 'headers_to_add')}[{i}]"
        key = option.header.key.lower()
        if not key or key.startswith(":") or key == "host":
            errors.append(f"{where}.header.key: {key!r} may not be added (pseudo-headers "
                          "and host are the tunnel's)")
            continue
        for field, _ in option.ListFields():
            if field.name not in ("header", "append", "append_action"):
                errors.append(f"{where}.{field.name}: not supported")
        value = option.header.value or option.header.raw_value.decode("latin-1")
        if any(c in value for c in "\r\n\x00"):
            errors.append(f"{where}.header.value: must not contain CR, LF or NUL")
            continue
        _check_template(value, f"{where}.header.value", errors)
        headers.append([key, value])
    return {"tunneling": {"hostname": config.hostname, "headers": headers}}


def _check_template(value, path, errors) -> None:
    if "%" not in value:
        return
    from ..worker.proxy.http import formatter
    try:
        formatter.compile_header_value(value)
    except formatter.FormatError as exc:
        errors.append(f"{path}: {exc}")


def connect_terminate(pb, path, errors) -> dict:
    """RouteAction.upgrade_configs[].connect_config -> {"connect_terminate": True}: the route
    terminates CONNECT (Envoy: only for the CONNECT upgrade; POST tunnels and PROXY protocol
    toward the upstream are not done here)."""
    terminate = {}
    for i, upgrade in enumerate(pb.upgrade_configs):
        if not upgrade.HasField("connect_config"):
            continue
        here = f"{join(path, 'upgrade_configs')}[{i}].connect_config"
        if upgrade.upgrade_type.lower() != "connect":
            errors.append(f"{here}: only for upgrade_type CONNECT")
        for field, _ in upgrade.connect_config.ListFields():
            errors.append(f"{join(here, field.name)}: not supported")
        terminate = {"connect_terminate": True}
    return terminate
