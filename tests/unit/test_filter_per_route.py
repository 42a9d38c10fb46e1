"""A filter turned on or off per route (Envoy 1.40's route based filter chain): an HttpFilter
with `disabled: true` is made only for the routes whose typed_per_filter_config names it (the
filter's own per-route config, or a FilterConfig that is not disabled: with a config, or an
empty one for the filter's own), and a FilterConfig with `disabled: true` turns an enabled
filter off; the route's entry decides, then its virtual host's, then the route
configuration's. Each expected status below is what Envoy 1.40 answered on the same
bootstrap (two fault filters and direct responses, 2026-12-07)."""

from __future__ import annotations

import asyncio

import pytest

import tests.unit.test_http_express as express_tests
from baton.xds import protos
from baton.xds.http import translate_route_config
from baton.xds.parse import parse_dict
from tests.unit.test_http_express import Rig

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def _route(path, per_filter=""):
    return f"""
              - match: {{path: "/{path}"}}
                direct_response: {{status: 200, body: {{inline_string: "{path}"}}}}""" + (
        f"""
                typed_per_filter_config:{per_filter}""" if per_filter else "")


def _entry(name, body):
    return f"""
                  {name}:
                    {body}"""


ENABLE = f'{{"@type": {FILTER_CONFIG}, config: {{}}}}'
DISABLE = f'{{"@type": {FILTER_CONFIG}, disabled: true}}'


FILTERS = f"""
          - name: f1
            disabled: true
            typed_config:
              "@type": {FAULT}
              abort: {{http_status: 503, percentage: {{numerator: 100}}}}
          - name: f2
            typed_config:
              "@type": {FAULT}
              abort: {{http_status: 451, percentage: {{numerator: 100}}}}
              headers: [{{name: x-f2, present_match: true}}]"""


def _bootstrap(routes, route_config_extra=""):
    """The express tests' bootstrap with these routes and the two fault filters before its
    router."""
    text = express_tests.BOOTSTRAP
    one_route = """
              - match: {prefix: "/"}
                route: {cluster: upstream%s}"""
    assert one_route in text
    text = text.replace(one_route, routes).replace(
        "          route_config:", "          route_config:" + route_config_extra).replace(
        "          http_filters:", "          http_filters:" + FILTERS)
    return text + "%s"       # (the Rig's route_extra: "")


ROUTES = "".join([
    _route("a"),
    _route("b", _entry("f1", ENABLE)),
    _route("c", _entry("f1", f'{{"@type": {FAULT}, abort: {{http_status: 418, '
                             f'percentage: {{numerator: 100}}}}}}')),
    _route("d", _entry("f1", DISABLE)),
    _route("e", _entry("f1", f'{{"@type": {FILTER_CONFIG}, config: {{"@type": {FAULT}, '
                             f'abort: {{http_status: 429, percentage: {{numerator: 100}}}}}}}}')),
    _route("f", _entry("f2", DISABLE)),
    _route("g", _entry("f2", ENABLE)),
])
# Envoy 1.40's answers: path -> (without x-f2, with x-f2).
ENVOY = {"a": (200, 451), "b": (503, 503), "c": (418, 418), "d": (200, 451),
         "e": (429, 429), "f": (200, 200), "g": (200, 451)}


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _rig(tmp_path, loop, monkeypatch, text):
    monkeypatch.setattr(express_tests, "BOOTSTRAP", text)
    return Rig(tmp_path, loop)


def _status(rig, path, *headers) -> int:
    head = "".join(f"{h}\r\n" for h in headers)
    rig.conn.data_received(f"GET /{path} HTTP/1.1\r\nHost: svc\r\n{head}\r\n".encode())
    return int(rig.down.take().split(b" ", 2)[1])


def test_filters_on_and_off_per_route_answer_as_envoy(tmp_path, loop, monkeypatch):
    rig = _rig(tmp_path, loop, monkeypatch, _bootstrap(ROUTES))
    for _ in range(2):                  # the second time from the plans kept per route
        got = {path: (_status(rig, path), _status(rig, path, "x-f2: 1")) for path in ENVOY}
        assert got == ENVOY


def test_the_route_configurations_entry_counts_where_the_route_and_its_host_say_nothing(
        tmp_path, loop, monkeypatch):
    rig = _rig(tmp_path, loop, monkeypatch, _bootstrap(
        _route("a") + _route("d", _entry("f1", DISABLE)), f"""
            typed_per_filter_config:
              f1: {ENABLE}"""))
    assert (_status(rig, "a"), _status(rig, "d")) == (503, 200)      # Envoy 1.40 likewise


def _translated(per_filter):
    data = {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200},
         "typed_per_filter_config": per_filter}]}]}
    protos.import_types_in(data)
    pb = protos.RouteConfiguration()
    errors, warnings = [], []
    assert parse_dict(data, pb, "rc", errors) == [], errors
    return translate_route_config(pb, "rc", errors, warnings), errors, warnings


def test_a_filter_config_is_checked_as_envoy_checks_it():
    _, errors, _ = _translated({"f1": {"@type": FILTER_CONFIG}})
    assert errors == ["rc.virtual_hosts[0].routes[0].typed_per_filter_config[f1]: Empty "
                      "route/virtual host per filter configuration for f1 filter"]
    lua = {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
           "name": "x"}
    config, errors, warnings = _translated({"f1": {"@type": FILTER_CONFIG, "config": lua,
                                                   "is_optional": True}})
    route = config["virtual_hosts"][0]["routes"][0]
    assert errors == [] and route["filter_enabled"] == {"f1": True} and route["per_filter"] == {}
    assert "ignored (is_optional)" in warnings[0]
    _, errors, _ = _translated({"f1": {"@type": FILTER_CONFIG, "config": lua}})
    assert "not supported" in errors[0]


def test_a_disabled_filter_given_by_config_discovery_keeps_its_state_and_name():
    from tests.unit.test_ecds import DENY_ALL, PLUGIN, ROUTER, source
    data = {"stat_prefix": "in", "http_filters": [
        {"name": PLUGIN, "disabled": True, "config_discovery": source(
            default_config=DENY_ALL, apply_default_config_without_warming=True)}, ROUTER]}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors = []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    from baton.xds.http_filters import translate_http_filters
    result = translate_http_filters(pb.http_filters, "hcm.http_filters", errors, [])
    assert errors == [] and (result[0]["disabled"], result[0]["filter_name"]) == (True, PLUGIN)
