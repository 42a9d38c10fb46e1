"""The agent's accepted dynamic config: validating updates, warming, and what the master gets.

Every response goes through `apply`: each resource is decoded and translated by the same
code as a bootstrap file (translate.py, http.py), so a resource is accepted only if it would
load from a file. One bad resource rejects the whole response (Envoy's rule for state of the
world, and what delta clients do too), and nothing of it is applied.

Warming, as Envoy does it: a new or changed EDS cluster is used only once its endpoints are
known, and a new or changed listener only once the routes it names (rds) are known, or when
their initial_fetch_timeout has passed (then with no endpoints / no routes). Until then the
previous version of the resource keeps serving. Endpoints and routes are cached by name, so
a cluster that changes but keeps its service name is warm at once. A listener (or cluster)
that names SDS secrets waits for them too, wherever they come from: the ADS stream here, or a
gRPC stream or file of their own (xds/sds.py, which sets them with set_source_secrets).

    config = DynamicConfig(bootstrap_snapshot)
    errors = config.apply(update, now)          # [] -> ACK; else "path: message" -> NACK
    config.interest(ENDPOINT)                   # names to subscribe to (None: wildcard)
    config.published(now)                       # what the master applies (below)
    config.next_deadline()                      # when warming may time out (monotonic)

published(now) -> {"listeners": [LISTENER ...],       # warm dynamic listeners, LDS order
                   "clusters": {name: CLUSTER},       # warm dynamic clusters (no endpoints)
                   "endpoints": {service: [ENDPOINT]},# every known ClusterLoadAssignment
                   "routes": {name: ROUTE_CONFIG},    # every known RouteConfiguration
                   "secrets": {source key: {name: SECRET}},  # xds/secrets.py
                   "versions": {"lds": v, ...}, "missing": ["..."], "initialized": bool}
"""

from __future__ import annotations

import datetime
import ipaddress
from collections import ChainMap

from google.protobuf.message import DecodeError

from . import protos
from .parse import is_repeated
from . import ecds
from .ads import CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE, SECRET, SHORT
from .http import translate_route_config
from .secrets import check_references, secret_class, spec_references, translate_secret
from .translate import translate_cluster, translate_listener, translate_load_assignment
from ..worker.wasm.remote import use_clusters

_CLASSES = {LISTENER: protos.Listener, ROUTE: protos.RouteConfiguration,
            CLUSTER: protos.Cluster, ENDPOINT: protos.ClusterLoadAssignment,
            SECRET: secret_class(),
            EXTENSION: protos.message_class("envoy.config.core.v3.TypedExtensionConfig")}
_KINDS = {LISTENER: "Listener", ROUTE: "RouteConfiguration", CLUSTER: "Cluster",
          ENDPOINT: "ClusterLoadAssignment", SECRET: "Secret",
          EXTENSION: "TypedExtensionConfig"}
MAX_ERROR = 4096              # bytes of error_detail: enough to name every path, bounded


class Accepted:
    """One accepted resource: its translation, the bytes it came as (for /config_dump and
    the saved state) and when it was accepted."""

    __slots__ = ("name", "version", "value", "raw", "updated")

    def __init__(self, name, version, value, raw, updated):
        self.name, self.version, self.value, self.raw, self.updated = (
            name, version, value, raw, updated)


class _Warming:
    __slots__ = ("value", "since", "timeout")

    def __init__(self, value, since, timeout):
        self.value, self.since, self.timeout = value, since, timeout


def now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class DynamicConfig:
    def __init__(self, bootstrap: dict, started: float = 0.0):
        self.xds = bootstrap.get("xds") or {}
        self.static_clusters = bootstrap.get("clusters", {})
        self.static_listeners = bootstrap.get("listeners", [])
        self.static_secrets = bootstrap.get("secrets") or {}
        # Secrets from SDS sources other than ADS (xds/sds.py): source key -> name -> SECRET.
        self.source_secrets: dict[str, dict] = {}
        self.static_addresses = {_address_key(l): l["name"] for l in self.static_listeners
                                 if not l.get("internal")}
        self.started = started
        self.accepted = {t: {} for t in _CLASSES}           # type -> name -> Accepted
        self.versions = {t: "" for t in _CLASSES}           # the type's last accepted version
        self.responded = set()                               # types that answered at least once
        self.active_clusters: dict[str, dict] = {}           # warm, in use
        self.warming_clusters: dict[str, _Warming] = {}
        self.active_listeners: dict[str, dict] = {}
        self.warming_listeners: dict[str, _Warming] = {}
        self.listener_order: list[str] = []

    # -- subscriptions -------------------------------------------------------------------

    def interest(self, type_url):
        """Names to subscribe to for `type_url`; None for a wildcard subscription."""
        if type_url == CLUSTER:
            return None if self.xds.get("cds") else frozenset()
        if type_url == LISTENER:
            return None if self.xds.get("lds") else frozenset()
        if type_url == ENDPOINT:
            specs = [*self.static_clusters.values(), *self.active_clusters.values(),
                     *(w.value for w in self.warming_clusters.values())]
            return frozenset(c["eds"]["service_name"] for c in specs
                             if c and c.get("type") == "EDS")
        if type_url == SECRET:
            return frozenset(ref["name"] for ref in self.secret_references()
                             if ref["source"]["kind"] == "ads")
        specs = [*self.static_listeners, *self.active_listeners.values(),
                 *(w.value for w in self.warming_listeners.values())]
        if type_url == EXTENSION:   # the dynamic listeners' ECDS filters (xds/ecds.py)
            return frozenset(n for spec in specs[len(self.static_listeners):]
                             for n in ecds.names(spec))
        return frozenset(name for spec in specs for name, _ in _rds_names(spec))

    def secret_references(self) -> list[dict]:
        """Every secret reference of every listener and cluster, static, active or warming."""
        specs = [*self.static_listeners, *self.active_listeners.values(),
                 *(w.value for w in self.warming_listeners.values()),
                 *self.static_clusters.values(), *self.active_clusters.values(),
                 *(w.value for w in self.warming_clusters.values())]
        return [ref for spec in specs if spec for ref in spec_references(spec)]

    def secret(self, ref) -> dict | None:
        kind = ref["source"]["kind"]
        if kind == "static":
            return self.static_secrets.get(ref["name"])
        if kind == "ads":
            held = self.accepted[SECRET].get(ref["name"])
            return held.value if held is not None else None
        return (self.source_secrets.get(ref["source"]["key"]) or {}).get(ref["name"])

    def _secrets_known(self, spec) -> bool:
        return all(self.secret(ref) is not None for ref in spec_references(spec))

    def set_source_secrets(self, key: str, secrets: dict, now: float) -> None:
        """The secrets a gRPC or file source holds now (xds/sds.py)."""
        self.source_secrets[key] = dict(secrets)
        self.promote(now)

    def replace_secret(self, name: str, value: dict) -> None:
        """An ADS secret read again from its files (a rotation on disk, xds/sds.py)."""
        held = self.accepted[SECRET].get(name)
        if held is not None:
            held.value = value
            held.updated = now_text()

    def forget_unwanted(self, type_url) -> list[str]:
        """Drop accepted endpoints / routes / secrets that nothing refers to any more (their
        cluster or listener is gone), as Envoy drops an unsubscribed resource. -> the names
        dropped."""
        if type_url not in (ENDPOINT, ROUTE, SECRET, EXTENSION):
            return []
        wanted = self.interest(type_url)
        accepted = self.accepted[type_url]
        gone = [name for name in accepted if name not in wanted]
        for name in gone:
            del accepted[name]
        return gone

    # -- updates -------------------------------------------------------------------------

    def apply(self, update, now: float) -> list[str]:
        """Validate every resource of `update`; apply all of them, or none. -> errors."""
        type_url = update.type_url
        kind = _KINDS[type_url]
        errors, translated = [], {}
        # A Wasm filter's remote code is fetched through a cluster in use (warm) or static.
        use_clusters(ChainMap(self.active_clusters, self.static_clusters), self._endpoints_of)
        for name in sorted(set(update.duplicates)):
            errors.append(f"{kind}[{name}]: the name appears more than once in the response "
                          "(updated twice, or updated and removed)")
        for name, (version, any_pb) in update.resources.items():
            path = f"{kind}[{name}]" if name else kind
            if any_pb.type_url and any_pb.type_url != type_url:
                errors.append(f"{path}: a {protos.type_name(any_pb.type_url)} in a "
                              f"{kind} response")
                continue
            try:
                value = self._translate(type_url, name, any_pb.value, path, errors)
            except Exception as exc:  # noqa: BLE001 - a resource must never break the stream
                errors.append(_why_untranslatable(type_url, any_pb.value, path, exc))
                continue
            if value is not None:
                translated[name] = (version or update.version, value, any_pb.value)
        if not errors:
            self._check_whole(type_url, update, translated, errors)
        if errors:
            return errors
        self._commit(update, translated, now)
        return []

    def _endpoints_of(self, service_name):
        held = self.accepted[ENDPOINT].get(service_name)
        return held.value["endpoints"] if held is not None else None

    def _translate(self, type_url, name, data, path, errors):
        held = self.accepted[type_url].get(name)
        if held is not None and held.raw == data and type_url != ROUTE:
            # State of the world resends every cluster and listener on any change: the same
            # bytes mean the same translation. (Routes are checked again: validate_clusters
            # depends on which clusters exist now.)
            return held.value
        pb = _CLASSES[type_url]()
        try:
            pb.ParseFromString(data)
        except DecodeError as exc:
            errors.append(f"{path}: cannot decode the resource: {exc}")
            return None
        real = pb.cluster_name if type_url == ENDPOINT else pb.name
        if name and real != name:
            errors.append(f"{path}: the resource is named '{real}', not '{name}'")
            return None
        start = len(errors)
        if type_url == CLUSTER:
            value = translate_cluster(pb, path, errors)
            check_references(value, self.static_secrets, errors, self.static_clusters)
            if real in self.static_clusters:
                errors.append(f"{path}: a static cluster has that name (static clusters cannot "
                              "be changed by CDS)")
            elif value is not None and value["type"] == "STRICT_DNS":
                errors.append(f"{path}.type: STRICT_DNS is not supported from CDS yet "
                              "(STATIC, EDS or ORIGINAL_DST)")
        elif type_url == ENDPOINT:
            value = translate_load_assignment(pb, path, errors)
        elif type_url == LISTENER:
            value = translate_listener(pb, path, errors)
            if real in {l["name"] for l in self.static_listeners}:
                errors.append(f"{path}: a static listener has that name")
            check_references(value, self.static_secrets, errors, self.static_clusters)
        elif type_url == SECRET:
            value = translate_secret(pb, path, errors)
        elif type_url == EXTENSION:
            value = ecds.translate_extension_config(pb, path, errors)
            if value is not None:
                ecds.check_types(real, value, [*self.active_listeners.values(), *(
                    w.value for w in self.warming_listeners.values())], path, errors)
        else:
            known = None
            if pb.HasField("validate_clusters") and pb.validate_clusters.value:
                known = {*self.static_clusters, *self.active_clusters, *self.warming_clusters}
            value = translate_route_config(pb, path, errors, None, known)
        return value if len(errors) == start else None

    def _check_whole(self, type_url, update, translated, errors):
        """Checks across resources: listener addresses must stay unique."""
        if type_url != LISTENER:
            return
        listeners = {} if update.complete else {
            n: a.value for n, a in self.accepted[LISTENER].items() if n not in update.removed}
        listeners.update({n: value for n, (_, value, _) in translated.items()})
        taken = dict(self.static_addresses)
        for name, spec in sorted(listeners.items()):
            if spec.get("internal"):
                continue                # an internal listener has no address (xds/internal.py)
            key = _address_key(spec)
            if key in taken:
                errors.append(f"Listener[{name}].address: {spec['address']}:{spec['port']} is "
                              f"already used by listener '{taken[key]}'")
            taken[key] = name

    def _commit(self, update, translated, now):
        type_url = update.type_url
        accepted = self.accepted[type_url]
        stamp = now_text()
        if update.complete and type_url in (LISTENER, CLUSTER):
            gone = [n for n in accepted if n not in translated]
        else:
            gone = [n for n in update.removed if n in accepted]
        for name in gone:
            del accepted[name]
        for name, (version, value, raw) in translated.items():
            old = accepted.get(name)
            if old is not None and old.raw == raw:
                old.version = version              # same content: keep its timestamp
                continue
            accepted[name] = Accepted(name, version, value, raw, stamp)
        self.versions[type_url] = update.version
        self.responded.add(type_url)
        if type_url == CLUSTER:
            self._stage(self.active_clusters, self.warming_clusters, accepted, gone, now,
                        self._cluster_timeout)
        elif type_url == LISTENER:
            self._stage(self.active_listeners, self.warming_listeners, accepted, gone, now,
                        self._listener_timeout)
            self.listener_order = list(accepted)
        self.promote(now)

    def _stage(self, active, warming, accepted, gone, now, timeout_of):
        for name in gone:
            active.pop(name, None)
            warming.pop(name, None)
        for name, item in accepted.items():
            value = item.value
            if active.get(name) == value:
                warming.pop(name, None)
                continue
            held = warming.get(name)
            if held is not None and held.value == value:
                continue
            warming[name] = _Warming(value, now, timeout_of(value))

    def _cluster_timeout(self, spec):
        eds = spec["eds"]["initial_fetch_timeout"] if spec.get("type") == "EDS" else 0.0
        return max([eds, *_secret_timeouts(spec)])

    def _listener_timeout(self, spec):
        return max([t for _, t in _rds_names(spec)] + _secret_timeouts(spec), default=0.0)

    def promote(self, now: float) -> bool:
        """Move what is warm (or timed out) from warming to active. -> whether anything moved."""
        moved = False
        endpoints = self.accepted[ENDPOINT]
        for name, held in list(self.warming_clusters.items()):
            spec = held.value
            if ((spec.get("type") != "EDS" or spec["eds"]["service_name"] in endpoints)
                    and self._secrets_known(spec) or _expired(held, now)):
                self.active_clusters[name] = spec
                del self.warming_clusters[name]
                moved = True
        routes = self.accepted[ROUTE]
        for name, held in list(self.warming_listeners.items()):
            if ((all(r in routes for r, _ in _rds_names(held.value))
                    and self._secrets_known(held.value) or _expired(held, now))
                    and not ecds.waiting(held.value, self.accepted[EXTENSION],
                                         now - held.since)):
                self.active_listeners[name] = held.value
                del self.warming_listeners[name]
                moved = True
        return moved

    def next_deadline(self):
        """The monotonic time when a warming resource times out, or None."""
        times = [h.since + h.timeout for h in (*self.warming_clusters.values(),
                                               *self.warming_listeners.values()) if h.timeout]
        return min(times, default=None)

    # -- what the master applies -----------------------------------------------------------

    def missing(self, now: float) -> list[str]:
        """What initialization still waits for, in words (for /ready)."""
        lines = []
        for type_url, key in ((CLUSTER, "cds"), (LISTENER, "lds")):
            if self.xds.get(key) and type_url not in self.responded:
                lines.append(f"{key}: no response from the control plane yet")
        endpoints, routes = self.accepted[ENDPOINT], self.accepted[ROUTE]
        for name, spec in sorted(self.static_clusters.items()):
            if spec and spec.get("type") == "EDS" and spec["eds"]["service_name"] not in endpoints:
                lines.append(f"eds: cluster '{name}' waits for its endpoints "
                             f"'{spec['eds']['service_name']}'")
        for name in sorted(self.warming_clusters):
            lines.append(f"eds: cluster '{name}' is warming (waits for its endpoints)")
        for spec in self.static_listeners:
            for route, _ in _rds_names(spec):
                if route not in routes:
                    lines.append(f"rds: listener '{spec['name']}' waits for routes '{route}'")
        for name, held in sorted(self.warming_listeners.items()):
            filters = sorted(ecds.names(held.value) - set(self.accepted[EXTENSION]))
            if filters:
                lines.append(f"ecds: listener '{name}' is warming (waits for its filter "
                             f"configs {', '.join(filters)})")
            elif all(r in routes for r, _ in _rds_names(held.value)):
                lines.append(f"sds: listener '{name}' is warming (waits for its secrets)")
            else:
                lines.append(f"rds: listener '{name}' is warming (waits for its routes)")
        for ref in self.secret_references():
            if self.secret(ref) is None:
                line = (f"sds: secret '{ref['name']}' from {ref['source']['key']} not received "
                        "yet")
                if line not in lines:
                    lines.append(line)
        return lines

    def initialized(self, now: float) -> bool:
        """Envoy's init manager: every first fetch (CDS, LDS, each static EDS cluster's
        endpoints, each static listener's routes) has answered or passed its own
        initial_fetch_timeout (0: no timeout), and nothing dynamic is warming."""
        waited = now - self.started
        endpoints, routes = self.accepted[ENDPOINT], self.accepted[ROUTE]
        for type_url, key in ((CLUSTER, "cds"), (LISTENER, "lds")):
            if self.xds.get(key) and type_url not in self.responded and \
                    not _timed_out(waited, self.xds.get(f"{key}_initial_fetch_timeout")):
                return False
        for spec in self.static_clusters.values():
            if spec and spec.get("type") == "EDS" and spec["eds"]["service_name"] not in \
                    endpoints and not _timed_out(waited, spec["eds"]["initial_fetch_timeout"]):
                return False
        for spec in self.static_listeners:
            for route, timeout in _rds_names(spec):
                if route not in routes and not _timed_out(waited, timeout):
                    return False
        # Envoy: a listener is not ready until its secrets are warm (or their
        # initial_fetch_timeout passed).
        for spec in [*self.static_listeners, *self.static_clusters.values()]:
            for ref in spec_references(spec or {}):
                if self.secret(ref) is None and not _timed_out(
                        waited, ref["source"]["initial_fetch_timeout"]):
                    return False
        return not self.warming_clusters and not self.warming_listeners

    def published(self, now: float) -> dict:
        order = [n for n in self.listener_order if n in self.active_listeners]
        order += sorted(n for n in self.active_listeners if n not in order)
        return {
            "listeners": [ecds.resolve(self.active_listeners[n], {
                k: a.value for k, a in self.accepted[EXTENSION].items()}) for n in order],
            "clusters": dict(self.active_clusters),
            "endpoints": {n: a.value["endpoints"] for n, a in self.accepted[ENDPOINT].items()},
            "routes": {n: a.value for n, a in self.accepted[ROUTE].items()},
            "secrets": {"ads": {n: a.value for n, a in self.accepted[SECRET].items()},
                        **self.source_secrets},
            "versions": {SHORT[t]: v for t, v in self.versions.items()},
            "missing": self.missing(now),
            "initialized": self.initialized(now),
        }


def _why_untranslatable(type_url, data, path, exc) -> str:
    """The translator raised: say where. Binary resources can carry what a file cannot, such
    as an enum number that has no name (proto3 enums are open)."""
    pb = _CLASSES[type_url]()
    pb.ParseFromString(data)
    found = _unknown_enum(pb, path)
    return found or f"{path}: cannot be translated: {exc}"


def _unknown_enum(msg, path):
    for field, value in msg.ListFields():
        here = f"{path}.{field.name}"
        if field.enum_type is not None:
            for i, number in enumerate(value if is_repeated(field) else [value]):
                if number not in field.enum_type.values_by_number:
                    where = f"{here}[{i}]" if is_repeated(field) else here
                    return (f"{where}: {number} is not a value of enum "
                            f"{field.enum_type.full_name}")
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            items = value if is_repeated(field) else [value]
            if field.message_type.full_name == "google.protobuf.Any":
                items = [_unpacked(item) for item in items]
            for i, item in enumerate(items):
                found = _unknown_enum(item, f"{here}[{i}]" if is_repeated(field) else here)
                if found:
                    return found
    return None


def _unpacked(any_pb):
    """An Any's message, when its type is known (else the Any itself: nothing to look in)."""
    try:
        inner = protos.message_class(protos.type_name(any_pb.type_url))()
    except Exception:  # noqa: BLE001 - an unknown type is reported by the translator
        return any_pb
    return inner if any_pb.Unpack(inner) else any_pb


def _timed_out(waited, timeout):
    return bool(timeout) and waited >= timeout


def _expired(held, now):
    return held.timeout > 0 and now - held.since >= held.timeout


def _rds_names(listener):
    """(route_config_name, initial_fetch_timeout) of every HCM in the listener using rds."""
    for chain in listener.get("filter_chains") or ():
        http = chain.get("http")
        if http and http.get("rds"):
            yield http["rds"]["route_config_name"], http["rds"]["initial_fetch_timeout"]


def _secret_timeouts(spec) -> list[float]:
    return [ref["source"]["initial_fetch_timeout"] for ref in spec_references(spec)
            if ref["source"]["kind"] != "static"]


def _address_key(spec):
    """Unique per listener: a UDP and a TCP listener may share an address and port."""
    return ipaddress.ip_address(spec["address"]), spec["port"], spec.get("protocol", "tcp")


def error_detail(errors) -> str:
    """One message for a NACK's error_detail: every path, cut at MAX_ERROR bytes."""
    text = "; ".join(errors)
    data = text.encode()
    if len(data) > MAX_ERROR:
        tail = f" ... ({len(errors)} errors)"
        text = data[:MAX_ERROR - len(tail)].decode("utf-8", "ignore") + tail
    return text
