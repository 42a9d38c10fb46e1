#!/usr/bin/env python3
"""How much of what istiod sends does Baton accept? A measuring stick for issue 14.

    .venv/bin/python scripts/istio_acceptance.py [DUMP_DIR] [--top N] [--json]
    make istio-acceptance

For every Envoy /config_dump in DUMP_DIR (default ../shared/istio-dumps, or $ISTIO_DUMPS),
the dump's own `extract.py --dynamic-only` pulls out what istiod sent, and every resource goes
through xds/dynamic.py's DynamicConfig.apply, one resource per update: the very code that
ACKs or NACKs a resource arriving over ADS, run in a fresh process that, like the xDS agent,
has imported no Envoy module the translators do not import themselves. Prints, per resource
type, how many are accepted, how many of the refused ones wait for mTLS alone (transport
sockets, SDS, the metadata exchange that only runs over mTLS), and the refusal reasons
ranked by the number of resources each one blocks (a reason's path is
generalised: indices and names in brackets become [], so "Listener[x].filter_chains[3]..." of
every listener counts as one reason).

The resources are judged against what an Istio sidecar's bootstrap gives them: the node and
the static `sds-grpc` cluster (every SDS reference istiod sends names it).

Order within a dump: clusters, endpoints, listeners, routes, each applied as a delta update
on top of what was accepted before, so that a route's validate_clusters and the listener
address check see what a real stream would have delivered.

The dumps' Istio-only messages (stats.PluginConfig, istio.* filter configs...) have no
descriptor in xds-protos, so their contents cannot be encoded; such an Any is sent with its
type URL and an empty value. A translator that does not know the type refuses it by its URL,
so the verdict is the same as with the real bytes. The count of such Anys is printed.

The dumps are reference data outside the repository (never committed); this script only
reads them.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile

from google.protobuf import any_pb2

from baton.xds import protos
from baton.xds.ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, Update
from baton.xds.dynamic import DynamicConfig
from baton.xds.parse import is_repeated

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_DUMPS = os.environ.get("ISTIO_DUMPS") or os.path.join(
    os.path.dirname(_ROOT), "shared", "istio-dumps")
# extract.py's list name -> (type URL, message class, name field); the order of application.
KINDS = (("clusters", CLUSTER, protos.Cluster, "name"),
         ("endpoints", ENDPOINT, protos.ClusterLoadAssignment, "cluster_name"),
         ("listeners", LISTENER, protos.Listener, "name"),
         ("routes", ROUTE, protos.RouteConfiguration, "name"))
# What every Istio sidecar's bootstrap gives the resources to refer to: the node (SDS needs
# its id and cluster) and the static `sds-grpc` cluster on pilot-agent's Unix socket, which
# every SDS reference istiod sends names.
_ISTIO_BOOTSTRAP = {
    "node": {"id": "sidecar~10.0.0.1~app-0.default~default.svc.cluster.local",
             "cluster": "app.default"},
    "static_resources": {"clusters": [{
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"pipe": {
                "path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}]}]}}]}}


def istio_bootstrap():
    """_ISTIO_BOOTSTRAP as DynamicConfig's static part (the translator's snapshot form)."""
    from baton.xds.translate import translate_bootstrap
    protos.import_types_in(_ISTIO_BOOTSTRAP)
    pb = protos.json_format.ParseDict(
        _ISTIO_BOOTSTRAP, protos.message_class("envoy.config.bootstrap.v3.Bootstrap")())
    snap, errors = translate_bootstrap(pb)
    assert not errors, errors
    return {"xds": {"lds": True, "cds": True}, "clusters": snap["clusters"], "listeners": [],
            "node": snap["node"]}
_MARK = "baton-istio-acceptance-unknown:"
_BRACKETS = re.compile(r"\[[^\[\]]*\]")


def dumps_in(folder):
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(".json") and not name.endswith(".resources.json"))


def extract(dump):
    """What istiod sent, by the dump folder's own extract.py."""
    script = os.path.join(os.path.dirname(dump), "extract.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        subprocess.run([sys.executable, script, dump, "--dynamic-only", "-o", out],
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def _blank_unknown_types(data, unknown):
    """Replace every Any whose type has no descriptor by a marked StringValue (see above)."""
    if isinstance(data, list):
        return [_blank_unknown_types(item, unknown) for item in data]
    if not isinstance(data, dict):
        return data
    url = data.get("@type")
    if isinstance(url, str) and not protos.import_type(protos.type_name(url)):
        unknown[protos.type_name(url)] += 1
        return {"@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": _MARK + url}
    return {key: _blank_unknown_types(value, unknown) for key, value in data.items()}


def _restore_unknown_types(msg):
    for field, value in msg.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            if field.message_type is not None:          # a map of messages (Struct fields...)
                for item in value.values():
                    if hasattr(item, "ListFields"):
                        _restore_unknown_types(item)
            continue
        for item in (value if is_repeated(field) else [value]):
            if field.message_type.full_name == "google.protobuf.Any":
                inner = protos.message_class("google.protobuf.StringValue")()
                if item.type_url.endswith("StringValue") and item.Unpack(inner) \
                        and inner.value.startswith(_MARK):
                    item.type_url, item.value = inner.value[len(_MARK):], b""
                    continue
                unpacked = protos.message_class(protos.type_name(item.type_url))
                if unpacked is not None:
                    inner = unpacked()
                    if item.Unpack(inner):
                        _restore_unknown_types(inner)
                        item.Pack(inner, type_url_prefix=item.type_url.rsplit("/", 1)[0])
            else:
                _restore_unknown_types(item)


def encode(resource, cls, unknown):
    body = {k: v for k, v in resource.items() if k != "@type"}
    msg = protos.json_format.ParseDict(_blank_unknown_types(body, unknown), cls())
    _restore_unknown_types(msg)
    return msg


def reason(error):
    """'Listener[a].filter_chains[3].x: not supported' -> 'Listener[].filter_chains[].x: ...'"""
    where, _, message = error.partition(": ")
    return f"{_BRACKETS.sub('[]', where)}: {_BRACKETS.sub('[]', message)}"


def encode_dumps(dumps):
    """-> [(dump label, kind, name, serialized resource)], and the Counter of Any types
    sent blank."""
    encoded, unknown = [], collections.Counter()
    for dump in dumps:
        label = os.path.basename(dump).removesuffix(".json")
        resources = extract(dump)
        for kind, _, cls, name_field in KINDS:
            for i, resource in enumerate(resources.get(kind) or ()):
                try:
                    msg = encode(resource, cls, unknown)
                except protos.ParseError as exc:
                    encoded.append((label, kind, f"#{i}", None, str(exc)))
                    continue
                encoded.append((label, kind, getattr(msg, name_field) or f"#{i}",
                                msg.SerializeToString(), None))
    return encoded, unknown


# Refusals that wait for mTLS (transport sockets, SDS secrets, and Istio's metadata exchange,
# which only runs over mTLS): counted apart, so that what is left for the rest shows.
_TLS_MARKS = ("transport_socket", "over a TLS chain", "over an upstream transport socket")


def needs_tls(error):
    return any(mark in error for mark in _TLS_MARKS) and "internal_upstream" not in error


def judge(encoded):
    """Every resource through DynamicConfig.apply. Run in a fresh process (see main): the
    agent decodes binary resources without importing every Envoy module first, and a
    translator that relies on a type being imported must be judged that way.
    -> {kind: {"total", "accepted", "tls_only", "reasons": Counter,
               "per_dump": {dump: [acc, tot]}}}; tls_only: refused for mTLS reasons alone."""
    urls = {kind: type_url for kind, type_url, *_ in KINDS}
    result = {kind: {"total": 0, "accepted": 0, "tls_only": 0, "reasons": collections.Counter(),
                     "per_dump": {}} for kind, *_ in KINDS}
    configs = {}
    static = istio_bootstrap()
    for label, kind, name, data, failure in encoded:
        tally = result[kind]
        counts = tally["per_dump"].setdefault(label, [0, 0])
        tally["total"] += 1
        counts[1] += 1
        if failure is not None:
            tally["reasons"][f"(not decodable by xds-protos) {failure}"[:160]] += 1
            continue
        config = configs.get(label)
        if config is None:
            config = configs[label] = DynamicConfig(json.loads(json.dumps(static)))
        any_pb = any_pb2.Any(type_url=urls[kind], value=data)
        update = Update(urls[kind], "1", "n", {name: ("1", any_pb)}, [], complete=False)
        errors = config.apply(update, 0.0)
        if not errors:
            tally["accepted"] += 1
            counts[0] += 1
        elif all(needs_tls(e) for e in errors):
            tally["tls_only"] += 1
        for why in sorted({reason(e) for e in errors}):
            tally["reasons"][why] += 1
    return result


def report(result, unknown, top):
    lines = ["| type | accepted | of | refused | of which for mTLS alone |",
             "|---|---:|---:|---:|---:|"]
    for kind, tally in result.items():
        lines.append(f"| {kind} | {tally['accepted']} | {tally['total']} | "
                     f"{tally['total'] - tally['accepted']} | {tally['tls_only']} |")
    for kind, tally in result.items():
        if not tally["total"]:
            continue
        lines += ["", f"{kind}: accepted per dump: " + ", ".join(
            f"{label} {a}/{t}" for label, (a, t) in tally["per_dump"].items() if t)]
        if tally["reasons"]:
            lines.append(f"{kind}: refusal reasons (resources blocked):")
            for why, count in tally["reasons"].most_common(top):
                lines.append(f"  {count:5d}  {why[:220]}")
            rest = len(tally["reasons"]) - top
            if rest > 0:
                lines.append(f"  ... {rest} more reasons")
    if unknown:
        lines += ["", "Anys sent with an empty value (no descriptor in xds-protos): " + ", ".join(
            f"{name} {count}" for name, count in unknown.most_common())]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=DEFAULT_DUMPS)
    parser.add_argument("--top", type=int, default=25, help="reasons shown per type")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--judge", metavar="PICKLE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.judge:                  # the fresh process: judge, and hand the result back
        with open(args.judge, "rb") as f:
            encoded = pickle.load(f)
        with open(args.judge, "wb") as f:
            pickle.dump(judge(encoded), f)
        return
    if not os.path.isdir(args.folder):
        parser.error(f"{args.folder}: no such folder (the Istio dumps; see --help)")
    dumps = dumps_in(args.folder)
    if not dumps:
        parser.error(f"{args.folder}: no config dumps (*.json) in it")
    encoded, unknown = encode_dumps(dumps)
    with tempfile.TemporaryDirectory() as tmp:
        exchange = os.path.join(tmp, "resources.pickle")
        with open(exchange, "wb") as f:
            pickle.dump(encoded, f)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--judge", exchange],
                       check=True)
        with open(exchange, "rb") as f:
            result = pickle.load(f)
    if args.json:
        print(json.dumps({"types": {k: {**t, "reasons": t["reasons"].most_common()}
                                    for k, t in result.items()},
                          "blank_anys": dict(unknown)}, indent=1))
    else:
        print(report(result, unknown, args.top))


if __name__ == "__main__":
    main()
