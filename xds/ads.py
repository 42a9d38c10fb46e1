"""The ADS protocol as Envoy speaks it, sans-IO: what to ask for, and what a response means.

One object per stream lifetime of the agent (it survives reconnects: what was accepted is
what the next stream reports, so a reconnect asks for the same versions and a control
plane that has nothing new sends nothing new).

    protocol = AdsProtocol(node, delta=False)
    protocol.set_interest(CLUSTER, None)           # None: wildcard (LDS, CDS)
    protocol.set_interest(ENDPOINT, {"a", "b"})    # names (EDS, RDS)
    requests = protocol.stream_started()            # first requests of a (re)connected stream
    update = protocol.on_response(response)         # DiscoveryResponse / DeltaDiscoveryResponse
    ... validate update.resources (name -> (version, Any)) and update.removed ...
    request = protocol.ack(update) or protocol.nack(update, "Cluster[a].type: ...")
    requests = protocol.set_interest(ENDPOINT, {...})   # a changed subscription, if connected

State of the world (api_type GRPC): every response for a type carries the type's whole set
(LDS, CDS) or every requested resource (RDS, EDS); an ACK repeats the response's version
and nonce; a NACK sends the previous accepted version with the new nonce and error_detail.
Incremental (DELTA_GRPC): responses carry changed resources and removed names; the client
tracks each resource's version and reports them in initial_resource_versions on reconnect.
"""

from __future__ import annotations

from . import protos

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"    # ECDS
# Envoy's order: clusters before their endpoints, listeners before their routes, and CDS
# before LDS, so that what a resource refers to is asked for first; secrets last (named by
# listeners and clusters). ECDS filters (named by listeners) after the routes.
TYPE_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION, SECRET)
SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINT: "eds", SECRET: "sds",
         EXTENSION: "ecds"}
INVALID_ARGUMENT = 3           # google.rpc.Code of a NACK's error_detail, as Envoy sends


class Update:
    """One response, decoded. resources: name -> (resource version or "", Any); for state
    of the world `complete` says the set replaces every resource of the type."""

    __slots__ = ("type_url", "version", "nonce", "resources", "removed", "complete",
                 "duplicates")

    def __init__(self, type_url, version, nonce, resources, removed, complete, duplicates=()):
        self.type_url = type_url
        self.version = version
        self.nonce = nonce
        self.resources = resources
        self.removed = removed
        self.complete = complete
        # Names given twice in the response (or both updated and removed): a NACK, as Envoy.
        self.duplicates = list(duplicates)


class _TypeState:
    __slots__ = ("interest", "version", "nonce", "held", "sent_interest")

    def __init__(self):
        self.interest = None        # None: no subscription; "*": wildcard; else a frozenset
        self.version = ""           # sotw: the last accepted version_info
        self.nonce = ""             # the last response's nonce (on this stream)
        self.held = {}              # delta: name -> version of every resource we hold
        self.sent_interest = None   # what the stream was last told (None: nothing yet)


class AdsProtocol:
    def __init__(self, node: dict, delta: bool = False, node_once: bool = False):
        self.node = protos.Node(id=node.get("id", ""), cluster=node.get("cluster", ""))
        if node.get("metadata"):
            protos.json_format.ParseDict({"metadata": node["metadata"]}, self.node)
        self.delta = delta
        self.node_once = node_once
        self.types = {t: _TypeState() for t in TYPE_ORDER}
        self.connected = False
        self._node_sent = False

    # -- state carried across streams and agent restarts ---------------------------------

    def restore(self, type_url: str, version: str, held: dict) -> None:
        """What an earlier agent had accepted (its saved state): asked for on reconnect."""
        state = self.types[type_url]
        state.version = version
        state.held = dict(held)

    # -- subscriptions -------------------------------------------------------------------

    def set_interest(self, type_url: str, names) -> list:
        """names: None for wildcard, else a set (possibly empty). -> requests to send now."""
        state = self.types[type_url]
        interest = "*" if names is None else frozenset(names)
        if interest == state.interest:
            return []
        state.interest = interest
        if not self.connected or state.sent_interest is None and interest == frozenset():
            return []
        return [self._subscription_request(type_url)]

    def stream_started(self) -> list:
        """A new stream: one request per type we are interested in, Envoy's order."""
        self.connected = True
        self._node_sent = False
        requests = []
        for type_url in TYPE_ORDER:
            state = self.types[type_url]
            state.nonce = ""
            state.sent_interest = None
            if state.interest is None or state.interest == frozenset():
                continue
            requests.append(self._subscription_request(type_url, initial=True))
        return requests

    def stream_ended(self) -> None:
        self.connected = False

    def _subscription_request(self, type_url: str, initial: bool = False):
        state = self.types[type_url]
        interest = state.interest
        if not self.delta:
            request = self._request(type_url, state.version, state.nonce)
            if interest != "*":
                request.resource_names.extend(sorted(interest))
            state.sent_interest = interest
            return request
        # Unlike state of the world, a delta request that is not an ACK/NACK carries no nonce.
        request = self._delta_request(type_url, "")
        before = state.sent_interest
        if interest == "*":
            if before != "*":
                request.resource_names_subscribe.append("*")
        else:
            before = before if isinstance(before, frozenset) else frozenset()
            request.resource_names_subscribe.extend(sorted(interest - before))
            request.resource_names_unsubscribe.extend(sorted(before - interest))
            for name in before - interest:
                state.held.pop(name, None)        # no longer ours: not reported on reconnect
        if initial:
            held = state.held if interest == "*" else {n: v for n, v in state.held.items()
                                                       if n in interest}
            for name, version in held.items():
                request.initial_resource_versions[name] = version
        state.sent_interest = interest
        return request

    # -- responses -----------------------------------------------------------------------

    def on_response(self, response) -> Update:
        type_url = response.type_url
        if type_url not in self.types:
            raise ValueError(f"a response for type {type_url!r}, which Baton never asked for")
        resources, duplicates = {}, []
        if self.delta:
            for r in response.resources:
                if r.name in resources:
                    duplicates.append(r.name)
                resources[r.name] = (r.version, r.resource)
            removed = list(response.removed_resources)
            duplicates += [name for name in removed if name in resources]
            return Update(type_url, response.system_version_info, response.nonce, resources,
                          removed, complete=False, duplicates=duplicates)
        for any_pb in response.resources:
            name = _sotw_name(type_url, any_pb)
            if name in resources and name:
                duplicates.append(name)
            resources[name] = ("", any_pb)
        return Update(type_url, response.version_info, response.nonce, resources, [],
                      complete=True, duplicates=duplicates)

    def ack(self, update: Update):
        state = self.types[update.type_url]
        state.nonce = update.nonce
        if not self.delta:
            state.version = update.version
            request = self._request(update.type_url, update.version, update.nonce)
            if state.interest not in (None, "*"):
                request.resource_names.extend(sorted(state.interest))
            return request
        state.version = update.version
        for name, (version, _) in update.resources.items():
            state.held[name] = version
        for name in update.removed:
            state.held.pop(name, None)
        return self._delta_request(update.type_url, update.nonce)

    def nack(self, update: Update, message: str):
        state = self.types[update.type_url]
        state.nonce = update.nonce
        if not self.delta:
            request = self._request(update.type_url, state.version, update.nonce)
            if state.interest not in (None, "*"):
                request.resource_names.extend(sorted(state.interest))
        else:
            request = self._delta_request(update.type_url, update.nonce)
        request.error_detail.code = INVALID_ARGUMENT
        request.error_detail.message = message
        return request

    # -- building requests ---------------------------------------------------------------

    def _with_node(self, request):
        if not (self.node_once and self._node_sent):
            request.node.CopyFrom(self.node)
            self._node_sent = True
        return request

    def _request(self, type_url, version, nonce):
        return self._with_node(protos.DiscoveryRequest(type_url=type_url, version_info=version,
                                                       response_nonce=nonce))

    def _delta_request(self, type_url, nonce):
        return self._with_node(protos.DeltaDiscoveryRequest(type_url=type_url,
                                                            response_nonce=nonce))


def _sotw_name(type_url, any_pb):
    """A state-of-the-world resource's name, read from its bytes without a full parse where
    that is cheap: the name is field 1 of Listener, Cluster, RouteConfiguration, Secret and
    ClusterLoadAssignment (cluster_name) alike."""
    data = any_pb.value
    if len(data) >= 2 and data[0] == 0x0A:          # field 1, length-delimited
        length, pos = _varint(data, 1)
        if pos + length <= len(data):
            try:
                return data[pos:pos + length].decode("utf-8")
            except UnicodeDecodeError:
                pass
    return ""


def _varint(data, pos):
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    return 0, len(data) + 1
