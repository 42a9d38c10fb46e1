"""envoy.filters.http.ext_authz: ask an authorization service before the request goes on.

Config: xds/ext_authz.py. Per request, in Envoy's order:

1. Skipped when the route's ExtAuthzPerRoute says `disabled`; counted `disabled` (and, with
   deny_at_disable, answered status_on_error) when `filter_enabled` or `filter_enabled_metadata` say no.
   Istio's CUSTOM action enables it by the RBAC filter's shadow result: the dynamic metadata
   `envoy.filters.http.rbac` / `<prefix>shadow_effective_policy_id` (worker/proxy/http/rbac.py).
2. With `with_request_body`, the body is awaited (up to max_request_bytes; beyond it, 413
   unless allow_partial_message) and sent in the check.
3. The Check call (envoy.service.auth.v3.Authorization/Check, grpc_call.py) carries the
   request's attributes: source and destination addresses and SPIFFE principals, the
   headers (allowed_headers / disallowed_headers), method, path, host, scheme, protocol,
   size, body, the route's context_extensions. With `http_service` the check is an HTTP
   request instead (upstream_call.py): the request's method, path_prefix + its path, its
   Host, Content-Length, Authorization and the allowed headers, headers_to_add, the body;
   200 allows (allowed_upstream_headers set, ..._to_append added, allowed_client_headers_
   on_success to the client), a 5xx or no answer is an error, any other status is denied
   with the service's status, body and allowed_client_headers (all but Host when unset).
4. OK: the server's headers go upstream (append / set as each asks), headers_to_remove are
   removed, query parameters set or removed, response_headers_to_add reach the client.
   Denied: the server's HTTP status (403 when it names none), body and headers, details
   `ext_authz_denied`, flag UAEX. The call failed (unreachable, timeout, a gRPC error):
   `status_on_error` (403), details `ext_authz_error`, flag UAEX, unless failure_mode_allow
   (the request goes on, `x-envoy-auth-failure-mode-allowed: true` with
   failure_mode_allow_header_add).

Stats: http.<hcm prefix>.ext_authz.[<stat_prefix>.]{ok,denied,error,disabled,
failure_mode_allowed}, and cluster.<the route's cluster>.ext_authz.{ok,denied,error,
failure_mode_allowed}.
"""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, quote, urlencode

from google.protobuf import timestamp_pb2

from . import grpc_call
from .upstream_call import UpstreamCall
from .filter import PAUSE, FilterFactory, LocalReply, StreamFilter, register
from ..rbac_engine import metadata_test
from .route_match import _string_matcher

NAME = "envoy.filters.http.ext_authz"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
FAILURE_MODE_HEADER = "x-envoy-auth-failure-mode-allowed"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
DENIED, ERROR = "ext_authz_denied", "ext_authz_error"
RBAC_METADATA = "envoy.filters.http.rbac"
MAX_PER_ROUTE = 4096


def _messages():
    """The envoy.service.auth.v3 messages (imported on first use: xds-protos' modules are
    heavy and a worker without this filter never needs them)."""
    from envoy.service.auth.v3 import external_auth_pb2
    return external_auth_pb2


class _Stats:
    __slots__ = ("ok", "denied", "error", "disabled", "failure_mode_allowed")

    def __init__(self, prefix: str, counters):
        for name in self.__slots__:
            setattr(self, name, prefix + name)
            counters[prefix + name] += 0


@register(NAME)
class ExtAuthzFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.worker = context.worker
        self.counters = context.stats.counters
        # ext_authz.[<stat_prefix>.]<name>, under the HCM's prefix and the route's cluster's
        self.scope = "ext_authz." + (config["stat_prefix"] + "." if config.get("stat_prefix")
                                     else "")
        self.stats = _Stats(f"http.{context.stat_prefix}.{self.scope}", self.counters)
        self.filter_name = config.get("filter_name") or NAME
        self.allowed = _matchers(config.get("allowed_headers"))
        self.disallowed = _matchers(config.get("disallowed_headers"))
        http = config.get("http")
        # The HTTP service's header lists, compiled (None: the list is not set).
        self.http = {**http, **{key: _matchers(http[key]) for key in _HTTP_LISTS}} \
            if http else None
        metadata = config.get("enabled_metadata")
        self.enabled_metadata = _metadata_test(metadata) if metadata else None

    def per_route(self, route) -> dict | None:
        per_filter = getattr(route, "per_filter", None) if route is not None else None
        for level in per_filter or ():       # (the route's, its virtual host's)
            found = level.get(self.filter_name)
            if found is not None:
                return found
        return None

    def create(self, stream):
        per_route = self.per_route(stream.route)
        if per_route is not None and per_route.get("disabled"):
            return None
        return ExtAuthzFilter(stream, self, per_route or {})

    def enabled(self, info) -> bool:
        """filter_enabled and filter_enabled_metadata, read when the request reaches the
        filter (the metadata comes from the filters before it)."""
        fraction = self.config["enabled"]
        if fraction < 1.0 and random.random() >= fraction:
            return False
        return self.enabled_metadata is None or self.enabled_metadata(info)


class ExtAuthzFilter(StreamFilter):
    __slots__ = ("factory", "per_route", "call", "body_settings", "waiting_body", "outcome",
                 "paused", "response_headers")

    def __init__(self, stream, factory: ExtAuthzFactory, per_route: dict):
        super().__init__(stream)
        self.factory = factory
        self.per_route = per_route
        self.call = None
        body = per_route.get("body")
        self.body_settings = factory.config["body"] if body is None else (body or None)
        self.waiting_body = False
        self.outcome = _UNSET
        self.paused = False
        self.response_headers = ()

    def on_request_headers(self, request, end_stream: bool):
        factory = self.factory
        if not factory.enabled(self.stream.info):
            factory.counters[factory.stats.disabled] += 1
            if factory.config["deny_at_disable"]:
                return LocalReply(factory.config["status_on_error"], details=ERROR,
                                  flags="UAEX")
            return None
        settings = self.body_settings
        if settings is not None and not end_stream and not self._body_ready(settings):
            self.waiting_body = True
            self.stream.body_watcher = self._on_body
            self.paused = True
            return PAUSE
        result = self._check()
        self.paused = result is PAUSE
        return result

    def _body_ready(self, settings) -> bool:
        stream = self.stream
        return stream.request_complete or stream.held_bytes >= settings["max_bytes"]

    def _on_body(self) -> None:
        """More body arrived while the filter waits for it (stream.on_request_body)."""
        stream = self.stream
        settings = self.body_settings
        if not self.waiting_body or not self._body_ready(settings):
            return
        self.waiting_body = False
        stream.body_watcher = None
        if not stream.request_complete and not settings["allow_partial"] \
                and stream.held_bytes > settings["max_bytes"]:
            stream.resume_filters(LocalReply(413, "Payload Too Large",
                                             details="request_payload_too_large"))
            return
        # Not paused while the check starts: an answer within _check() (no healthy host) is
        # only kept by _resume, and resumed here, once.
        self.paused = False
        result = self._check()
        self.paused = result is PAUSE
        if result is not PAUSE:
            stream.resume_filters(result)

    def _check(self):
        """Send the check -> PAUSE (the answer resumes the stream), or the outcome at once
        when the call could not start (no such cluster, no healthy host)."""
        stream = self.stream
        config = self.factory.config
        grpc = self.per_route.get("grpc") or config["grpc"]
        http = self.factory.http if grpc is None else None
        cluster = stream.worker.clusters.get((grpc or http)["cluster"])
        if cluster is None:
            return self._failed()
        if http is not None:
            call = self.call = UpstreamCall(stream.worker, cluster, self._answered_http)
            request, body = self._http_check_request(http)
            call.start(request, body, http["timeout"], stream.request.version == "2")
        else:
            call = self.call = grpc_call.UnaryCall(stream.worker, cluster, self._answered)
            call.start(CHECK, grpc["authority"], self._check_request().SerializeToString(),
                       grpc["timeout"], grpc["metadata"])
        if call.finished:               # answered within start(): _answered kept the outcome
            self.call = None
            return self.outcome
        return PAUSE

    def _answered(self, code: int, message: bytes | None, text: str) -> None:
        if code != grpc_call.OK:
            outcome = self._failed()
        else:
            response = _messages().CheckResponse()
            try:
                response.ParseFromString(message)
            except Exception:           # a reply that does not parse is a failed call
                outcome = self._failed()
            else:
                outcome = self._decided(response)
        self._resume(outcome)

    def _answered_http(self, response, body: bytes, trailers, failure: str) -> None:
        """The HTTP service's answer: 200 allows, a 5xx or no answer is an error, any other
        status is the answer the client gets (Envoy 1.40's reading)."""
        if response is None or response.status >= 500:
            outcome = self._failed()
        elif response.status == 200:
            outcome = self._http_allowed(response)
        else:
            outcome = self._http_denied(response, body)
        self._resume(outcome)

    def _resume(self, outcome) -> None:
        if self.call is None or not self.call.finished or self.outcome is not _UNSET:
            return
        self.outcome = outcome
        if self.paused:
            self.call = None
            self.stream.resume_filters(outcome)

    # -- outcomes ---------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        counters = self.factory.counters
        counters[getattr(self.factory.stats, name)] += 1
        cluster = self.stream.cluster_name
        if cluster and name != "disabled":
            counters[f"cluster.{cluster}.{self.factory.scope}{name}"] += 1

    def _failed(self):
        self._count("error")
        config = self.factory.config
        if config["failure_mode_allow"]:
            self._count("failure_mode_allowed")
            if config["failure_mode_allow_header_add"]:
                self.stream.request.headers.set(FAILURE_MODE_HEADER, "true")
            return None
        return LocalReply(config["status_on_error"], details=ERROR, flags="UAEX")

    def _decided(self, response):
        if response.status.code != 0:
            self._count("denied")
            denied = response.denied_response
            headers = [(h.header.key.lower(), h.header.value) for h in denied.headers]
            return LocalReply(denied.status.code or 403, denied.body, headers,
                              details=DENIED, flags="UAEX")
        self._count("ok")
        ok = response.ok_response
        request = self.stream.request
        headers = request.headers
        for option in ok.headers:
            name, value = option.header.key.lower(), option.header.value
            if name == ":authority" or name == "host":
                request.authority = value
                continue
            _apply(headers, name, value, option)
        for name in ok.headers_to_remove:
            name = name.lower()
            if not name.startswith(":") and name != "host":
                headers.remove(name)
        if ok.query_parameters_to_set or ok.query_parameters_to_remove:
            request.path = _query(request.path, ok.query_parameters_to_set,
                                  ok.query_parameters_to_remove)
        self.response_headers = list(ok.response_headers_to_add)
        return None

    def on_response_headers(self, response, end_stream: bool):
        for option in self.response_headers:
            if isinstance(option, tuple):       # the HTTP service's allowed client headers
                response.headers.set(*option)
            else:
                _apply(response.headers, option.header.key.lower(), option.header.value,
                       option)
        return None

    def _http_allowed(self, response):
        self._count("ok")
        http = self.factory.http
        headers = self.stream.request.headers
        for name, value in response.headers:
            if _matches(http["upstream"], name):
                headers.set(name, value)
            elif _matches(http["upstream_append"], name):
                headers.add(name, value)
        self.response_headers = [(name, value) for name, value in response.headers
                                 if _matches(http["client_on_success"], name)]
        return None

    def _http_denied(self, response, body: bytes):
        self._count("denied")
        allowed = self.factory.http["client"]
        headers = [(name, value) for name, value in response.headers
                   if name not in _NOT_TO_CLIENT and (
                       allowed is None or name in _ALWAYS_TO_CLIENT or _matches(allowed, name))]
        return LocalReply(response.status, body, headers, details=DENIED, flags="UAEX")

    def _http_check_request(self, http):
        """The check as Envoy's HTTP client sends it: the request's method, path_prefix +
        its path, its Host, the allowed headers, headers_to_add, the body (with_request_body)
        and Envoy's internal-request headers."""
        from ...codecs.message import Headers, Request
        request = self.stream.request
        body = b""
        if self.body_settings is not None:
            body = b"".join(self.stream.held_body)[:self.body_settings["max_bytes"]]
        headers = Headers([("content-length", str(len(body)))])
        factory = self.factory
        for name, value in request.headers:
            if name in _ALWAYS or _matches(http["request"], name) or (
                    factory.allowed is not None and _matches(factory.allowed, name)):
                if name != "content-length":
                    headers.add(name, value)
        for name, value in http["headers_to_add"]:
            headers.set(name, value)
        headers.set("x-envoy-internal", "true")
        headers.set("x-envoy-expected-rq-timeout-ms", str(int(http["timeout"] * 1000)))
        path = http["path_prefix"] + request.path
        return Request(request.method, path, request.authority, headers, "http",
                       request.version), body

    # -- the Check request ------------------------------------------------------------------

    def _check_request(self):
        messages = _messages()
        stream = self.stream
        info = stream.info
        request = stream.request
        check = messages.CheckRequest()
        attributes = check.attributes
        _address(attributes.source.address, info.downstream_remote)
        _address(attributes.destination.address, info.downstream_local)
        tls = stream.conn.tls
        if tls is not None:
            from ..rbac_engine import peer_principal
            attributes.source.principal = peer_principal(tls) or ""
            local = getattr(tls, "local_uris", None)
            if local:
                attributes.destination.principal = local[0]
            if self.factory.config["include_peer_certificate"] and tls.peer_der is not None:
                import ssl
                attributes.source.certificate = quote(ssl.DER_cert_to_PEM_cert(tls.peer_der),
                                                      safe="")
        start = timestamp_pb2.Timestamp()
        start.FromNanoseconds(int(info.start_time * 1e9))
        attributes.request.time.CopyFrom(start)
        http = attributes.request.http
        http.id = str(stream.id or info.connection_id)
        http.method = request.method
        http.path = request.path
        http.host = request.authority
        http.scheme = request.scheme
        http.protocol = info.protocol
        length = request.headers.get("content-length")
        http.size = int(length) if length is not None and length.isdigit() else 0
        factory = self.factory
        for name, value in _request_headers(request):
            if factory.allowed is not None and not any(t(name) for t in factory.allowed):
                if name not in _ALWAYS and not name.startswith(":"):
                    continue
            if factory.disallowed is not None and any(t(name) for t in factory.disallowed):
                continue
            if factory.config["encode_raw_headers"]:
                http.header_map.headers.add(key=name, raw_value=value.encode())
            elif name in http.headers:
                http.headers[name] += "," + value
            else:
                http.headers[name] = value
        if self.body_settings is not None:
            # Envoy tells the service whether it sees the whole body.
            body = b"".join(stream.held_body)
            partial = not stream.request_complete or len(body) > self.body_settings["max_bytes"]
            http.headers[PARTIAL_BODY_HEADER] = "true" if partial else "false"
            body = body[:self.body_settings["max_bytes"]]
            if self.body_settings["pack_as_bytes"]:
                http.raw_body = body
            else:
                http.body = body.decode("utf-8", "replace")
        for key, value in self.per_route.get("context_extensions", {}).items():
            attributes.context_extensions[key] = value
        return check

    def on_log(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
        if self.waiting_body:
            self.stream.body_watcher = None


# Envoy sends these whatever allowed_headers says (the request's identity and routing).
_ALWAYS = frozenset({"host", "content-length", "authorization"})
# A denial's headers the client gets whatever allowed_client_headers says, and never.
_ALWAYS_TO_CLIENT = frozenset({":path", ":status", "content-length", "www-authenticate",
                               "location"})
_NOT_TO_CLIENT = frozenset({"host", ":authority", "content-length", "connection",
                            "transfer-encoding", "keep-alive"})


_HTTP_LISTS = ("request", "upstream", "upstream_append", "client", "client_on_success")


def _matches(matchers, name: str) -> bool:
    return matchers is not None and any(test(name) for test in matchers)


def _request_headers(request):
    yield ":authority", request.authority
    yield ":method", request.method
    yield ":path", request.path
    yield ":scheme", request.scheme
    yield from request.headers


def _apply(headers, name: str, value: str, option) -> None:
    """A HeaderValueOption of an OK response onto the request, as Envoy 1.40 does it:
    `append` true appends to a header the request has (and adds none), false replaces;
    without `append`, its append_action (default: append, or add)."""
    if option.HasField("append"):
        action = "APPEND_IF_EXISTS" if option.append.value else "SET"
    else:
        action = _APPEND_ACTIONS.get(option.append_action, "APPEND")
    present = name in headers
    if present and action.startswith("APPEND"):
        headers.set(name, f"{headers.get(name)},{value}")
    elif not present and action in ("APPEND", "ADD_IF_ABSENT"):
        headers.add(name, value)
    elif action == "SET" or (present and action == "OVERWRITE_IF_EXISTS"):
        headers.set(name, value)


# HeaderValueOption.append_action -> what _apply does (APPEND: to the header, else add it)
_APPEND_ACTIONS = {0: "APPEND", 1: "ADD_IF_ABSENT", 2: "SET", 3: "OVERWRITE_IF_EXISTS"}


def _query(path: str, to_set, to_remove) -> str:
    base, _, query = path.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    removed = set(to_remove) | {p.key for p in to_set}
    pairs = [(k, v) for k, v in pairs if k not in removed]
    pairs += [(p.key, p.value) for p in to_set]
    return f"{base}?{urlencode(pairs)}" if pairs else base


def _address(address_pb, address) -> None:
    if address:
        address_pb.socket_address.address = str(address[0])
        address_pb.socket_address.port_value = int(address[1])


def _matchers(specs):
    if specs is None:
        return None
    return [_string_matcher(spec) for spec in specs if spec is not None]


def _metadata_test(matcher: dict):
    """xds/rbac.py's metadata matcher -> f(info) -> bool, over the stream's dynamic metadata
    (RBAC's own MetadataMatcher: rbac_engine.metadata_test)."""
    test = metadata_test(matcher)
    return lambda info: test(info.dynamic_metadata)


_UNSET = object()
