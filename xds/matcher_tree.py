"""A listener's `filter_chain_matcher` (Envoy's matcher API choosing a filter chain by name, as
an Istio waypoint's `main_internal` does) -> a plain tree the worker walks per connection
(worker/proxy/filter_chain_matcher.py).

The tree, in Envoy's semantics (xds.type.matcher.v3.Matcher, "Matching Filter Chains in
Listeners"):

    matcher  = {"tree": {"input": INPUT, "exact" | "prefix": {key: on_match}
                         | "ip": [[[[network, length], ...], on_match, exclusive], ...]},
                "on_no_match": on_match | None}
             | {"list": [[predicate, on_match], ...], "on_no_match": on_match | None}
    on_match = {"chain": name} | {"matcher": matcher}
    predicate = {"single": [INPUT, string matcher]} | {"or": [...]} | {"and": [...]}
              | {"not": predicate}

INPUT is one of the network inputs below (common_inputs.network.v3). An action must be a
`google.protobuf.StringValue` naming a filter chain; the chains must then be uniquely named.
Refused by path: keep_matching, custom matchers other than xds's IPMatcher (on IP inputs),
any other input or action.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from . import protos
from .parse import join

_NETWORK = "envoy.extensions.matching.common_inputs.network.v3."
INPUTS = {_NETWORK + name: key for name, key in (
    ("DestinationIPInput", "destination_ip"), ("DestinationPortInput", "destination_port"),
    ("SourceIPInput", "source_ip"), ("SourcePortInput", "source_port"),
    ("DirectSourceIPInput", "direct_source_ip"), ("SourceTypeInput", "source_type"),
    ("ServerNameInput", "server_name"), ("TransportProtocolInput", "transport_protocol"),
    ("ApplicationProtocolInput", "application_protocol"))}
_IP_INPUTS = ("destination_ip", "source_ip", "direct_source_ip")
IP_MATCHER = "xds.type.matcher.v3.IPMatcher"
STRING_VALUE = "google.protobuf.StringValue"


def translate_filter_chain_matcher(pb, path, errors) -> dict | None:
    """Listener.filter_chain_matcher -> {"chain_matcher": tree}, {} when unset. The chains it
    names must exist and every chain must have a unique name (Envoy's rule)."""
    if not pb.HasField("filter_chain_matcher"):
        return {}
    here = join(path, "filter_chain_matcher")
    names = [chain.name for chain in pb.filter_chains]
    if pb.HasField("default_filter_chain") and pb.default_filter_chain.name:
        names.append(pb.default_filter_chain.name)
    seen = set()
    for i, name in enumerate(names):
        if not name or name in seen:
            errors.append(f"{join(path, 'filter_chains')}[{i}].name: a filter_chain_matcher "
                          "needs every filter chain uniquely named")
        seen.add(name)
    return {"chain_matcher": _matcher(pb.filter_chain_matcher, here, errors)}


def _matcher(pb, path, errors):
    which = pb.WhichOneof("matcher_type")
    result = {"on_no_match": _on_match(pb.on_no_match, join(path, "on_no_match"), errors)
              if pb.HasField("on_no_match") else None}
    if which == "matcher_tree":
        result["tree"] = _tree(pb.matcher_tree, join(path, "matcher_tree"), errors)
    elif which == "matcher_list":
        here = join(path, "matcher_list.matchers")
        result["list"] = [[_predicate(m.predicate, f"{here}[{i}].predicate", errors),
                           _on_match(m.on_match, f"{here}[{i}].on_match", errors)]
                          for i, m in enumerate(pb.matcher_list.matchers)]
    else:
        result["list"] = []                   # only on_no_match
    return result


def _tree(pb, path, errors):
    kind = pb.WhichOneof("tree_type")
    source = _input(pb.input, join(path, "input"), errors)
    if kind in ("exact_match_map", "prefix_match_map"):
        here = join(path, kind)
        entries = {key: _on_match(value, f"{here}.map[{key!r}]", errors)
                   for key, value in sorted(getattr(pb, kind).map.items())}
        return {"input": source, kind.split("_")[0]: entries}
    if kind == "custom_match":
        here = join(path, "custom_match.typed_config")
        name = protos.type_name(pb.custom_match.typed_config.type_url)
        if name != IP_MATCHER or source not in _IP_INPUTS:
            errors.append(f"{here}: {name!r} not supported (an {IP_MATCHER} on an IP input)")
            return None
        protos.import_type(IP_MATCHER)
        ip = protos.message_class(IP_MATCHER)()
        pb.custom_match.typed_config.Unpack(ip)
        ranges = []
        for i, entry in enumerate(ip.range_matchers):
            where = f"{join(here, 'range_matchers')}[{i}]"
            if not entry.ranges:
                errors.append(f"{join(where, 'ranges')}: at least one range is required")
            cidrs = [[r.address_prefix, r.prefix_len.value] for r in entry.ranges]
            ranges.append([cidrs, _on_match(entry.on_match, join(where, "on_match"), errors),
                           entry.exclusive])
        _check_networks(ranges, here, errors)
        return {"input": source, "ip": ranges}
    errors.append(f"{path}: one of exact_match_map, prefix_match_map or custom_match is required")
    return None


def _check_networks(ranges, path, errors) -> None:
    import ipaddress
    for cidrs, _, _ in ranges:
        for address, length in cidrs:
            try:
                ipaddress.ip_network(f"{address}/{length}", strict=False)
            except ValueError as exc:
                errors.append(f"{path}.range_matchers: {exc}")


def _on_match(pb, path, errors):
    if pb.keep_matching:
        errors.append(f"{join(path, 'keep_matching')}: not supported")
    which = pb.WhichOneof("on_match")
    if which == "matcher":
        return {"matcher": _matcher(pb.matcher, join(path, "matcher"), errors)}
    if which != "action":
        errors.append(f"{path}: one of matcher or action is required")
        return None
    here = join(path, "action.typed_config")
    if protos.type_name(pb.action.typed_config.type_url) != STRING_VALUE:
        errors.append(f"{here}: the action must be a {STRING_VALUE} naming a filter chain")
        return None
    value = wrappers_pb2.StringValue()
    pb.action.typed_config.Unpack(value)
    return {"chain": value.value}


def _input(pb, path, errors):
    name = protos.type_name(pb.typed_config.type_url)
    kind = INPUTS.get(name)
    if kind is None:
        errors.append(f"{join(path, 'typed_config')}: input {name!r} not supported (the "
                      "network inputs: destination/source IP and port, direct source IP, "
                      "source type, server name, transport and application protocol)")
    return kind


def _predicate(pb, path, errors):
    which = pb.WhichOneof("match_type")
    if which in ("or_matcher", "and_matcher"):
        return {which.split("_")[0]: [
            _predicate(p, f"{join(path, which)}.predicate[{i}]", errors)
            for i, p in enumerate(getattr(pb, which).predicate)]}
    if which == "not_matcher":
        return {"not": _predicate(pb.not_matcher, join(path, "not_matcher"), errors)}
    if which != "single_predicate":
        errors.append(f"{path}: one of single_predicate, or_matcher, and_matcher or "
                      "not_matcher is required")
        return None
    single, here = pb.single_predicate, join(path, "single_predicate")
    source = _input(single.input, join(here, "input"), errors)
    if single.WhichOneof("matcher") != "value_match":
        errors.append(f"{join(here, 'custom_match')}: not supported (value_match)")
        return None
    from .http import _Context, _string_matcher
    ctx = _Context(errors, [], None, 0)
    return {"single": [source, _string_matcher(single.value_match, join(here, "value_match"),
                                               ctx)]}

