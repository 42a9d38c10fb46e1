"""ECDS: HTTP filters whose config comes over ADS as TypedExtensionConfig resources.

    placeholder(pb, path, errors, warnings)      HttpFilter with config_discovery -> entry
    translate_extension_config(pb, path, errors) TypedExtensionConfig -> accepted value
    names(listener) / waiting(listener, accepted, waited)     for warming
    resolve(listener, accepted) -> the listener with each placeholder's config filled in
    check_types(name, value, listeners, path, errors)   Envoy's type_urls check

A filter given by config_discovery is a placeholder in the HCM's filter list:

    {"name": "ecds", "ecds": {"name": the filter's name (the ECDS resource name),
        "type_urls": [type names], "default": {"name", "config"} or None,
        "without_warming": bool, "initial_fetch_timeout": seconds,
        "resolved": {"name", "config"} or None}}

As in Envoy (DynamicFilterConfigProvider): the xDS agent subscribes to the names of every
placeholder of its listeners (xds/dynamic.py interest), and a listener warms until each of
its ECDS filters has its resource, unless it has a default_config and
apply_default_config_without_warming, or its initial_fetch_timeout passes (0: no timeout).
A resource is checked like any typed_config (a Wasm module that is not one of Istio's null-VM
built-ins is refused) and its type must be one of the type_urls of every listener naming it
("filter config has type URL ... but expect ...", Envoy's words), else the ECDS response is
NACKed. What the worker runs (worker/proxy/http/ecds.py): the resource when it came, else
the default_config, else Envoy's missing-config filter (500, flag NFCF). A new resource
version republishes the listeners that use it. Listeners of the bootstrap (static) run their
default_config (or the missing-config filter): Baton subscribes for dynamic listeners only.
"""

from __future__ import annotations

import copy

from . import protos
from .config_source import translate_config_source
from .parse import join

ECDS = "ecds"
FIELDS = ("config_source", "default_config", "apply_default_config_without_warming",
          "type_urls")


def placeholder(pb, path, errors, warnings=None):
    """HttpFilter with config_discovery -> the placeholder entry (None on error)."""
    from .http_filters import translate_filter_config
    here = join(path, "config_discovery")
    source = pb.config_discovery
    start = len(errors)
    for field, _ in source.ListFields():
        if field.name not in FIELDS:
            errors.append(f"{join(here, field.name)}: not supported")
    if not source.type_urls:
        errors.append(f"{join(here, 'type_urls')}: must have at least 1 item")
    timeout = 0.0
    if not source.HasField("config_source"):
        errors.append(f"{join(here, 'config_source')}: required")
    else:
        timeout = translate_config_source(source.config_source, join(here, "config_source"),
                                          errors)
    if source.apply_default_config_without_warming and not source.HasField("default_config"):
        errors.append(f"{join(here, 'apply_default_config_without_warming')}: requires a "
                      "default_config")
    wanted = [protos.type_name(url) for url in source.type_urls]
    default = None
    if source.HasField("default_config"):
        default_path = join(here, "default_config")
        got = protos.type_name(source.default_config.type_url)
        if wanted and got not in wanted:
            errors.append(f"{default_path}: filter config has type URL {got} but expect "
                          f"{', '.join(wanted)}")
        else:
            default = translate_filter_config(source.default_config, pb.name, default_path,
                                              errors, warnings)
    if len(errors) > start:
        return None
    return {"name": ECDS, "ecds": {
        "name": pb.name, "type_urls": wanted, "default": default,
        "without_warming": source.apply_default_config_without_warming,
        "initial_fetch_timeout": timeout, "resolved": None}}


def translate_extension_config(pb, path, errors, warnings=None):
    """TypedExtensionConfig -> {"type": type name, "filter": {"name", "config"} or None}."""
    from .http_filters import translate_filter_config
    if not pb.name:
        errors.append(f"{join(path, 'name')}: required")
    if not pb.HasField("typed_config"):
        errors.append(f"{join(path, 'typed_config')}: required")
        return None
    return {"type": protos.type_name(pb.typed_config.type_url),
            "filter": translate_filter_config(pb.typed_config, pb.name,
                                              join(path, "typed_config"), errors, warnings)}


def _placeholders(listener):
    for chain in listener.get("filter_chains") or ():
        http = chain.get("http")
        for entry in (http or {}).get("http_filters") or ():
            if entry.get("name") == ECDS:
                yield entry["ecds"]


def names(listener) -> set:
    return {p["name"] for p in _placeholders(listener)}


def waiting(listener, accepted, waited: float) -> bool:
    """Whether the listener, warming for `waited` seconds, still waits for an ECDS resource.
    Each filter's own initial_fetch_timeout applies (0: none), whatever the listener's other
    waits (routes, secrets) allow."""
    return any(p["name"] not in accepted and not (p["default"] and p["without_warming"])
               and not 0 < p["initial_fetch_timeout"] <= waited
               for p in _placeholders(listener))


def resolve(listener, accepted):
    """The listener with each placeholder's "resolved" set from `accepted` (name -> value of
    translate_extension_config); the same object when it has no placeholder."""
    if not any(True for _ in _placeholders(listener)):
        return listener
    out = copy.deepcopy(listener)
    for p in _placeholders(out):
        value = accepted.get(p["name"])
        p["resolved"] = value["filter"] if value is not None and \
            value["type"] in p["type_urls"] else None
    return out


def check_types(name, value, listeners, path, errors) -> None:
    for listener in listeners:
        for p in _placeholders(listener):
            if p["name"] == name and value["type"] not in p["type_urls"]:
                errors.append(f"{path}: filter config has type URL {value['type']} but "
                              f"expect {', '.join(p['type_urls'])} (listener "
                              f"'{listener.get('name')}')")
                return
