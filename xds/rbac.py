"""Envoy's RBAC filters (what Istio's AuthorizationPolicy becomes) -> plain config.

    translate_http_rbac(pb, path, errors, warnings)        envoy.filters.http.rbac
    translate_rbac_per_route(pb, path, errors, warnings)   RBACPerRoute (typed_per_filter_config)
    translate_network_rbac(value, path, errors, ...)       envoy.filters.network.rbac

Each set of rules becomes {"action": "ALLOW" | "DENY" | "LOG", "policies": [[name, policy]]},
policies sorted by name (Envoy keeps them in an ordered map: the first match by name is the
matched policy). A policy is {"permissions": [permission], "principals": [principal]}, and
each permission or principal a one-key dict the worker's matcher reads
(worker/proxy/rbac_engine.py documents the keys). What Baton cannot evaluate is refused by
path: CEL conditions, the matcher-tree form (`matcher`), uri_template, sourced_metadata,
custom principals. A metadata matcher reads the stream's dynamic metadata (Istio's HTTP
authn writes `istio_authn` source.principal, without "spiffe://"); what no filter wrote, or
any filter-state key but io.istio.peer_principal, is absent and matches nothing, as in an
Envoy where no filter set it (JWT claims need jwt_authn, which Baton refuses).
"""

from __future__ import annotations

from types import SimpleNamespace

from . import protos
from .parse import join

ACTIONS = ("ALLOW", "DENY", "LOG")
_REFUSED = {"condition": "CEL conditions", "checked_condition": "CEL conditions",
            "cel_config": "CEL conditions", "matcher": "the matcher tree",
            "uri_template": "uri_template", "sourced_metadata": "sourced_metadata",
            "custom": "custom principals", "audit_logging_options": "RBAC audit loggers",
            "shadow_matcher": "the matcher tree"}
HTTP_FIELDS = ("rules", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix",
               "track_per_rule_stats")
NETWORK_FIELDS = ("rules", "shadow_rules", "stat_prefix", "shadow_rules_stat_prefix",
                  "enforcement_type", "delay_deny")


def _only(pb, allowed, path, errors) -> bool:
    ok = True
    for field, _ in pb.ListFields():
        if field.name not in allowed:
            why = _REFUSED.get(field.name)
            errors.append(f"{join(path, field.name)}: not supported"
                          + (f" ({why} are not evaluated by Baton)" if why else ""))
            ok = False
    return ok


def _rules(pb, path, errors):
    if not _only(pb, ("action", "policies"), path, errors):
        return None
    action = type(pb).Action.Name(pb.action)
    if action not in ACTIONS:
        errors.append(f"{join(path, 'action')}: {action} not supported")
        return None
    policies = []
    for name in sorted(pb.policies):
        here = f"{join(path, 'policies')}[{name}]"
        policy = pb.policies[name]
        if not _only(policy, ("permissions", "principals"), here, errors):
            continue
        if not policy.permissions:
            errors.append(f"{join(here, 'permissions')}: must have at least 1 item")
        if not policy.principals:
            errors.append(f"{join(here, 'principals')}: must have at least 1 item")
        policies.append([name, {
            "permissions": [_permission(p, f"{join(here, 'permissions')}[{i}]", errors)
                            for i, p in enumerate(policy.permissions)],
            "principals": [_principal(p, f"{join(here, 'principals')}[{i}]", errors)
                           for i, p in enumerate(policy.principals)]}])
    return {"action": action, "policies": policies}


def _string(pb, path, errors):
    from .http import _string_matcher
    return _string_matcher(pb, path, SimpleNamespace(errors=errors))


def _header(pb, path, errors):
    from .http_filters import translate_header_matcher
    return translate_header_matcher(pb, path, errors)


def _cidr(pb, path, errors):
    import ipaddress
    length = pb.prefix_len.value if pb.HasField("prefix_len") else None
    try:
        ip = ipaddress.ip_address(pb.address_prefix)
    except ValueError:
        errors.append(f"{join(path, 'address_prefix')}: malformed IP address: "
                      f"{pb.address_prefix!r}")
        return None
    if length is None:
        length = ip.max_prefixlen
    if length > ip.max_prefixlen:
        errors.append(f"{join(path, 'prefix_len')}: {length} is too long for {ip}")
        return None
    return [str(ipaddress.ip_network(f"{ip}/{length}", strict=False)), length]


def _metadata(pb, path, errors):
    """MetadataMatcher -> {"filter", "path": [keys], "value": value matcher or None,
    "invert"}, read on the stream's dynamic metadata (worker/proxy/rbac_engine.py)."""
    keys = []
    for i, segment in enumerate(pb.path):
        if segment.WhichOneof("segment") != "key":
            errors.append(f"{join(path, 'path')}[{i}]: a key is required")
        keys.append(segment.key)
    return {"filter": pb.filter, "path": keys,
            "value": _value_matcher(pb.value, join(path, "value"), errors), "invert": pb.invert}


def _value_matcher(pb, path, errors):
    """Envoy's ValueMatcher -> a one-key dict, each kind matching only its own value type
    (source/common/common/matchers.cc): {"string": string matcher} a string, {"list":
    value matcher} a list with one element it matches, {"bool": b} that boolean, {"double":
    [start, end]} a number in [start, end) or {"double": [x]} exactly x, {"present": b} any
    value when b, {"null": True} a null, {"or": [value matchers]}; None (and an error)
    when unset."""
    kind = pb.WhichOneof("match_pattern")
    here = join(path, kind or "match_pattern")
    if kind == "string_match":
        return {"string": _string(pb.string_match, here, errors)}
    if kind == "list_match":
        if not pb.list_match.HasField("one_of"):
            errors.append(f"{join(here, 'one_of')}: required")
            return None
        return {"list": _value_matcher(pb.list_match.one_of, join(here, "one_of"), errors)}
    if kind == "bool_match":
        return {"bool": pb.bool_match}
    if kind == "present_match":
        return {"present": pb.present_match}
    if kind == "null_match":
        return {"null": True}
    if kind == "double_match":
        double = pb.double_match
        if double.WhichOneof("match_pattern") == "range":
            return {"double": [double.range.start, double.range.end]}
        if double.WhichOneof("match_pattern") == "exact":
            return {"double": [double.exact]}
        errors.append(f"{join(here, 'match_pattern')}: required")
        return None
    if kind == "or_match":
        matchers = pb.or_match.value_matchers
        if len(matchers) < 2:
            errors.append(f"{join(here, 'value_matchers')}: must have at least 2 items")
        return {"or": [_value_matcher(m, f"{join(here, 'value_matchers')}[{i}]", errors)
                       for i, m in enumerate(matchers)]}
    errors.append(f"{here}: " + ("required" if kind is None else "not supported"))
    return None


def _set(kind, items, item_path, translate, errors):
    return {kind: [translate(x, f"{item_path}[{i}]", errors) for i, x in enumerate(items)]}


def _permission(pb, path, errors):
    which = pb.WhichOneof("rule")
    here = join(path, which or "rule")
    if which == "any":
        return {"any": True}
    if which in ("and_rules", "or_rules"):
        return _set(which[:-len("_rules")], getattr(pb, which).rules, join(here, "rules"),
                    _permission, errors)
    if which == "not_rule":
        return {"not": _permission(pb.not_rule, here, errors)}
    if which == "header":
        return {"header": _header(pb.header, here, errors)}
    if which == "url_path":
        if pb.url_path.WhichOneof("rule") != "path":
            errors.append(f"{join(here, 'path')}: required")
            return {"never": True}
        return {"url_path": _string(pb.url_path.path, join(here, "path"), errors)}
    if which == "destination_ip":
        return {"destination_ip": _cidr(pb.destination_ip, here, errors)}
    if which == "destination_port":
        return {"destination_port": pb.destination_port}
    if which == "destination_port_range":
        return {"destination_port_range": [pb.destination_port_range.start,
                                           pb.destination_port_range.end]}
    if which == "requested_server_name":
        return {"server_name": _string(pb.requested_server_name, here, errors)}
    if which == "metadata":
        return {"metadata": _metadata(pb.metadata, here, errors)}
    return _refused(which, here, errors)


def _refused(which, here, errors):
    why = _REFUSED.get(which or "")
    errors.append(f"{here}: " + (f"not supported ({why} are not evaluated by Baton)" if why
                                 else "required" if which is None else "not supported"))
    return {"never": True}


def _principal(pb, path, errors):
    which = pb.WhichOneof("identifier")
    here = join(path, which or "identifier")
    if which == "any":
        return {"any": True}
    if which in ("and_ids", "or_ids"):
        return _set(which[:-len("_ids")], getattr(pb, which).ids, join(here, "ids"),
                    _principal, errors)
    if which == "not_id":
        return {"not": _principal(pb.not_id, here, errors)}
    if which == "authenticated":
        name = pb.authenticated
        return {"authenticated": _string(name.principal_name, join(here, "principal_name"),
                                         errors) if name.HasField("principal_name") else None}
    if which in ("source_ip", "direct_remote_ip", "remote_ip"):
        return {which: _cidr(getattr(pb, which), here, errors)}
    if which == "header":
        return {"header": _header(pb.header, here, errors)}
    if which == "url_path":
        return _permission(protos.message_class("envoy.config.rbac.v3.Permission")(
            url_path=pb.url_path), path, errors)
    if which == "metadata":
        return {"metadata": _metadata(pb.metadata, here, errors)}
    if which == "filter_state":
        state = pb.filter_state
        if state.WhichOneof("matcher") != "string_match":
            errors.append(f"{here}: string_match required")
            return {"never": True}
        return {"filter_state": [state.key, _string(state.string_match,
                                                    join(here, "string_match"), errors)]}
    return _refused(which, here, errors)


def _engines(pb, path, errors):
    """-> {"rules": rules or None, "shadow_rules": rules or None}."""
    return {key: _rules(getattr(pb, key), join(path, key), errors) if pb.HasField(key)
            else None for key in ("rules", "shadow_rules")}


def translate_http_rbac(pb, path, errors, warnings=None):
    """http RBAC -> {"rules", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix"}.
    No rules: nothing is enforced (Envoy's rule), shadow rules are still counted."""
    if not _only(pb, HTTP_FIELDS, path, errors):
        return None
    if pb.track_per_rule_stats and warnings is not None:
        warnings.append(f"{join(path, 'track_per_rule_stats')}: per-policy counters are not "
                        "kept (the totals are)")
    return {**_engines(pb, path, errors), "rules_stat_prefix": pb.rules_stat_prefix,
            "shadow_rules_stat_prefix": pb.shadow_rules_stat_prefix}


def translate_rbac_per_route(pb, path, errors, warnings=None):
    """RBACPerRoute -> the http config above; no `rbac` (or an RBAC without rules): the route
    is not enforced."""
    if not _only(pb, ("rbac",), path, errors):
        return None
    return translate_http_rbac(pb.rbac, join(path, "rbac"), errors, warnings)


def translate_network_rbac(pb, path, errors):
    """network RBAC -> the engines plus {"stat_prefix", "shadow_rules_stat_prefix",
    "continuous": bool, "delay_deny": seconds}."""
    if not _only(pb, NETWORK_FIELDS, path, errors):
        return None
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: value length must be at least 1 characters")
    return {**_engines(pb, path, errors), "stat_prefix": pb.stat_prefix,
            "shadow_rules_stat_prefix": pb.shadow_rules_stat_prefix,
            "continuous": pb.enforcement_type == 1,
            "delay_deny": pb.delay_deny.seconds + pb.delay_deny.nanos / 1e9}
