"""envoy.filters.http.buffer: its translation (xds/http_filters_buffer.py, through the HCM's
filter list and a route's typed_per_filter_config) and its factory's per-route choice."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.proxy.http.buffer import BufferFilter, BufferFilterFactory
from baton.xds import protos
from baton.xds.http_filters_buffer import translate_buffer_per_route

from .test_http_filters import ROUTER, T, filters

BUFFER = T + "envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


def per_route(**fields):
    protos.import_type(PER_ROUTE)
    pb = protos.message_class(PER_ROUTE)()
    protos.json_format.ParseDict(fields, pb)
    errors = []
    return translate_buffer_per_route(pb, "rt", errors), errors


def test_translation_names_the_filter_for_its_per_route_config():
    result, errors, _ = filters({"name": "buf", "typed_config": {
        "@type": BUFFER, "max_request_bytes": 4096}}, ROUTER)
    assert errors == []
    assert result[0] == {"name": "envoy.filters.http.buffer",
                         "config": {"max_request_bytes": 4096, "filter_name": "buf"}}


def test_max_request_bytes_is_required_and_above_zero():
    _, errors, _ = filters({"name": "buf", "typed_config": {"@type": BUFFER}}, ROUTER)
    assert errors == ["hcm.http_filters[0].typed_config.max_request_bytes: value is required"]
    _, errors, _ = filters({"name": "buf", "typed_config": {
        "@type": BUFFER, "max_request_bytes": 0}}, ROUTER)
    assert errors == ["hcm.http_filters[0].typed_config.max_request_bytes: value must be "
                      "greater than 0"]


def test_per_route_disabled_or_buffer():
    assert per_route(disabled=True) == ({"disabled": True}, [])
    assert per_route(buffer={"max_request_bytes": 9}) == (
        {"disabled": False, "max_request_bytes": 9}, [])
    assert per_route(disabled=False)[1] == ["rt.disabled: value must equal true"]
    assert per_route()[1] == ["rt: one of disabled or buffer is required"]


def factory():
    return BufferFilterFactory({"max_request_bytes": 100, "filter_name": "buf"},
                               SimpleNamespace())


def stream(per_filter=None):
    route = SimpleNamespace(per_filter=per_filter)
    return SimpleNamespace(route=route, buffer_limit=1 << 20)


def test_route_config_wins_over_the_virtual_host_and_can_disable():
    made = factory().create(stream(({"buf": {"disabled": False, "max_request_bytes": 7}},
                                    {"buf": {"disabled": True}})))
    assert isinstance(made, BufferFilter) and made.max_bytes == 7
    assert factory().create(stream(({}, {"buf": {"disabled": True}}))) is None
    assert factory().create(stream()).max_bytes == 100


def test_headers_only_request_passes_and_a_body_raises_the_limit():
    s = stream()
    made = factory().create(s)
    assert made.on_request_headers(SimpleNamespace(headers=None), True) is None
    assert s.buffer_limit == 1 << 20
    assert made.on_request_headers(SimpleNamespace(headers={}), False) == "pause"
    assert s.buffer_limit == 100
