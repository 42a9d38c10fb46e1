"""ext_authz's translation (xds/ext_authz.py): what Istio's CUSTOM action sends is accepted
whole, what Baton does not do is refused by path; the per-route settings; the gRPC framing
and the header options of an OK answer (worker/proxy/http/ext_authz.py, grpc_call.py)."""

from __future__ import annotations

from baton.worker.codecs.message import Headers
from baton.worker.proxy.http import grpc_call
from baton.xds import protos
from baton.xds.http import translate_route_config
from baton.xds.parse import parse_dict

from .test_istio_http_filters import ROUTER, T, translate_filters

EXT_AUTHZ = T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
# As istiod writes it for a CUSTOM AuthorizationPolicy (the authz-testdata dump).
ISTIO = {"name": "envoy.filters.http.ext_authz", "typed_config": {
    "@type": EXT_AUTHZ, "transport_api_version": "V3",
    "grpc_service": {"envoy_grpc": {"cluster_name": "outbound|9191||sample-ext-authz-grpc",
                                    "authority": "sample-ext-authz-grpc.local"},
                     "timeout": "600s"},
    "with_request_body": {"max_request_bytes": 8000},
    "filter_enabled_metadata": {
        "filter": "envoy.filters.http.rbac",
        "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": "istio-ext-authz"}}}}}


def test_istios_custom_action_config_is_accepted_whole():
    result, errors, _ = translate_filters([ISTIO, ROUTER])
    assert errors == []
    config = result[0]["config"]
    assert result[0]["name"] == "envoy.filters.http.ext_authz"
    assert config["grpc"] == {"cluster": "outbound|9191||sample-ext-authz-grpc",
                              "authority": "sample-ext-authz-grpc.local", "timeout": 600.0,
                              "metadata": []}
    assert config["body"] == {"max_bytes": 8000, "allow_partial": False, "pack_as_bytes": False}
    assert config["enabled_metadata"]["path"] == ["istio_ext_authz_shadow_effective_policy_id"]
    assert config["status_on_error"] == 403 and config["filter_name"] == "envoy.filters.http.ext_authz"


def test_what_baton_does_not_do_is_refused_by_path():
    def refused(**fields):
        item = {"name": "x", "typed_config": {"@type": EXT_AUTHZ, **fields}}
        result, errors, _ = translate_filters([item, ROUTER])
        assert result is None
        return errors
    grpc = {"envoy_grpc": {"cluster_name": "authz"}}
    assert refused(http_service={"server_uri": {"uri": "http://a", "cluster": "a", "timeout": "1s"},
                                 "retry_policy": {"num_retries": 2}}) == [
        "hcm.http_filters[0].typed_config.http_service.retry_policy: not supported"]
    assert refused(http_service={"server_uri": {"uri": "http://a"}}) == [
        "hcm.http_filters[0].typed_config.http_service.server_uri.cluster: required",
        "hcm.http_filters[0].typed_config.http_service.server_uri.timeout: required"]
    assert refused(grpc_service={"google_grpc": {"target_uri": "a:1", "stat_prefix": "a"}}) == [
        "hcm.http_filters[0].typed_config.grpc_service.envoy_grpc: required (google_grpc not supported)"]
    assert refused(grpc_service=grpc, clear_route_cache=True) == [
        "hcm.http_filters[0].typed_config.clear_route_cache: not supported"]
    assert refused(grpc_service=grpc, metadata_context_namespaces=["a"]) == [
        "hcm.http_filters[0].typed_config.metadata_context_namespaces: not supported"]
    assert refused() == ["hcm.http_filters[0].typed_config.grpc_service: required (or http_service)"]


def test_the_http_service_variant_translates_its_header_lists():
    item = {"name": "x", "typed_config": {"@type": EXT_AUTHZ, "http_service": {
        "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.25s"},
        "path_prefix": "/check",
        "authorization_request": {"allowed_headers": {"patterns": [{"prefix": "x-"}]},
                                  "headers_to_add": [{"key": "X-From", "value": "1"}]},
        "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-u"}]}}}}}
    result, errors, _ = translate_filters([item, ROUTER])
    assert errors == []
    http = result[0]["config"]["http"]
    assert (http["cluster"], http["timeout"], http["path_prefix"], http["headers_to_add"]) == (
        "authz", 0.25, "/check", [("x-from", "1")])
    assert http["request"] == [{"kind": "prefix", "value": "x-", "ignore_case": False}]
    assert http["upstream"] == [{"kind": "exact", "value": "x-u", "ignore_case": False}]
    assert http["upstream_append"] is None and http["client"] is None


def test_per_route_disabled_and_check_settings():
    per_route = T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    data = {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/off"}, "direct_response": {"status": 200},
         "typed_per_filter_config": {"authz": {"@type": per_route, "disabled": True}}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200},
         "typed_per_filter_config": {"authz": {"@type": per_route, "check_settings": {
             "context_extensions": {"k": "v"}, "disable_request_body_buffering": True}}}}]}]}
    protos.import_types_in(data)
    pb = protos.RouteConfiguration()
    errors = []
    assert parse_dict(data, pb, "rc", errors) == [], errors
    config = translate_route_config(pb, "rc", errors, [])
    assert errors == []
    routes = config["virtual_hosts"][0]["routes"]
    assert routes[0]["per_filter"] == {"authz": {"disabled": True}}
    assert routes[1]["per_filter"] == {"authz": {"disabled": False, "context_extensions": {"k": "v"},
                                                 "body": False, "grpc": None}}


def test_grpc_framing_round_trips_and_a_cut_message_is_none():
    framed = grpc_call.frame(b"hello")
    assert framed == b"\x00\x00\x00\x00\x05hello"
    assert grpc_call.unframe(framed) == b"hello"
    assert grpc_call.unframe(framed[:-1]) is None
    assert grpc_call.grpc_timeout(0.2) == "200m"


def test_ok_header_options_as_envoy_applies_them():
    from envoy.config.core.v3 import base_pb2

    from baton.worker.proxy.http.ext_authz import _apply

    def option(key, value, append=None, action=None):
        pb = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
        if append is not None:
            pb.append.value = append
        if action is not None:
            pb.append_action = action
        return pb
    headers = Headers([("x-old", "1"), ("x-keep", "k")])
    _apply(headers, "x-old", "2", option("x-old", "2", append=True))        # appended
    _apply(headers, "x-new", "n", option("x-new", "n", append=True))        # not added
    _apply(headers, "x-keep", "s", option("x-keep", "s", append=False))     # replaced
    _apply(headers, "x-default", "d", option("x-default", "d"))             # added
    _apply(headers, "x-absent", "a", option("x-absent", "a", action=1))     # ADD_IF_ABSENT
    assert list(headers) == [("x-old", "1,2"), ("x-keep", "s"), ("x-default", "d"),
                             ("x-absent", "a")]


class _WaitingStream:
    """What the filter touches of a stream whose body it waited for: the body is complete."""

    def __init__(self):
        self.resumed = []
        self.body_watcher = None
        self.request_complete = True
        self.held_bytes = 5

    def resume_filters(self, outcome):
        self.resumed.append(outcome)


def test_a_check_answered_within_its_start_after_the_body_resumes_the_stream_once():
    """with_request_body, the body after the headers, and a call that finishes inside
    start() (the authorization cluster has no healthy host): the answer must resume the
    stream once, not from _resume and again from _on_body (with failure_mode_allow the
    request was routed twice)."""
    from types import SimpleNamespace

    from baton.worker.proxy.http.ext_authz import ExtAuthzFilter

    class AnsweredAtOnce(ExtAuthzFilter):
        def _check(self):
            self.call = SimpleNamespace(finished=True)
            self._resume("the outcome")
            self.call = None
            return self.outcome

    stream = _WaitingStream()
    factory = SimpleNamespace(config={"body": {"max_bytes": 16, "allow_partial": False}})
    f = AnsweredAtOnce(stream, factory, {})
    f.waiting_body, f.paused = True, True      # as on_request_headers leaves it
    f._on_body()
    assert stream.resumed == ["the outcome"]
