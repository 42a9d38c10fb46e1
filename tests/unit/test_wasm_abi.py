"""worker/wasm/abi.py, the proxy-wasm host without any wasm: the map encoding, header maps
viewing Baton's Request/Response (pseudo-headers included), local replies, properties,
metrics as Envoy names them, shared data with cas, statuses."""

from __future__ import annotations

import logging
import struct

import pytest

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.stats import Stats
from baton.worker.wasm import abi


def host(**kwargs):
    h = abi.AbiHost(vm_id=kwargs.pop("vm_id", "t"), stats=Stats(), **kwargs)
    return h


def stream(h, request=None, info=None):
    plugin = abi.Plugin("p", "root", "t", b"cfg")
    root = h.new_context(plugin)

    class Stream:
        pass
    s = Stream()
    s.info = info
    ctx = h.current = h.new_context(plugin, root, s, request or Request(
        "GET", "/a?b=1", "example.com", Headers([("user-agent", "curl"), ("x-a", "1"), ("x-a", "2")])))
    return ctx


def test_the_map_encoding_round_trips_and_reads_the_empty_forms():
    pairs = [(b"a", b"1"), (b":path", b"/x"), (b"", b"")]
    data = abi.serialize_pairs(pairs)
    assert data[:4] == struct.pack("<I", 3)
    assert abi.parse_pairs(data) == pairs
    assert abi.parse_pairs(b"") == [] and abi.parse_pairs(b"\0") == []
    assert abi.serialize_pairs([]) == b"\0\0\0\0"
    with pytest.raises(ValueError):
        abi.parse_pairs(data[:-3])
    with pytest.raises(ValueError):
        abi.parse_pairs(struct.pack("<I", 1000))


def test_request_headers_are_a_view_with_pseudo_headers():
    h = host()
    ctx = stream(h)
    status, data = h.get_pairs(abi.REQUEST_HEADERS)
    assert status == abi.OK and abi.parse_pairs(data) == [
        (b":authority", b"example.com"), (b":path", b"/a?b=1"), (b":method", b"GET"),
        (b":scheme", b"http"), (b"user-agent", b"curl"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert h.get_header(abi.REQUEST_HEADERS, b"X-A") == (abi.OK, b"1,2")
    assert h.get_header(abi.REQUEST_HEADERS, b":path") == (abi.OK, b"/a?b=1")
    assert h.get_header(abi.REQUEST_HEADERS, b"missing") == (abi.NOT_FOUND, b"")
    assert h.replace_header(abi.REQUEST_HEADERS, b":path", b"/new") == abi.OK
    assert h.add_header(abi.REQUEST_HEADERS, b"X-New", b"\xe9") == abi.OK
    assert h.replace_header(abi.REQUEST_HEADERS, b"x-a", b"3") == abi.OK
    assert h.remove_header(abi.REQUEST_HEADERS, b"user-agent") == abi.OK
    request = ctx.request
    assert request.path == "/new"
    assert request.headers.items == [("x-a", "3"), ("x-new", "\xe9")]      # latin-1 both ways
    assert h.set_pairs(abi.REQUEST_HEADERS, abi.serialize_pairs(
        [(b":method", b"POST"), (b"k", b"v")])) == abi.OK
    assert request.method == "POST" and request.headers.items == [("k", "v")]
    assert h.set_pairs(abi.REQUEST_HEADERS, b"\5\0\0\0") == abi.PARSE_FAILURE


def test_response_headers_come_with_the_response_and_status_is_writable():
    h = host()
    ctx = stream(h)
    assert h.get_pairs(abi.RESPONSE_HEADERS) == (abi.OK, b"\0\0\0\0")    # not there yet: empty
    response = Response(200, Headers([("content-length", "2")]))
    ctx.set_response(response)
    assert h.get_header(abi.RESPONSE_HEADERS, b":status") == (abi.OK, b"200")
    h.replace_header(abi.RESPONSE_HEADERS, b":status", b"404")
    h.add_header(abi.RESPONSE_HEADERS, b"x-wasm", b"hello")
    assert response.status == 404 and ("x-wasm", "hello") in response.headers.items
    assert h.get_header(9, b"x") == (abi.BAD_ARGUMENT, b"")
    h.current = None
    assert h.add_header(abi.REQUEST_HEADERS, b"a", b"b") == abi.BAD_ARGUMENT


def test_a_local_response_and_continue_are_recorded_for_the_filter():
    h = host()
    ctx = stream(h)
    headers = abi.serialize_pairs([(b"X-Denied", b"1")])
    assert h.send_local_response(403, b"wasm_denied", b"no\n", headers, 0xFFFFFFFF) == abi.OK
    assert ctx.local_reply == (403, "wasm_denied", b"no\n", [("x-denied", "1")], None)
    for given, kept in ((-1, None), (0, 0), (7, 7), (16, 16), (17, None), (72, None)):
        assert h.send_local_response(503, b"", b"", b"", given) == abi.OK
        assert ctx.local_reply[4] == kept, given       # past 16: none, as Envoy
    resumed = []
    ctx.resume = lambda: resumed.append(True)
    assert h.continue_stream(0) == abi.OK and ctx.continued and resumed == [True]
    h.current = ctx.root
    assert h.send_local_response(403, b"", b"", b"", 0) == abi.BAD_ARGUMENT


def test_buffers_give_the_configurations():
    h = host(vm_config=b"vm")
    ctx = stream(h)
    assert h.get_buffer(abi.PLUGIN_CONFIGURATION) == (abi.OK, b"cfg")
    assert h.get_buffer(abi.VM_CONFIGURATION) == (abi.OK, b"vm")
    assert h.get_buffer(abi.REQUEST_BODY) == (abi.NOT_FOUND, b"")
    assert ctx.plugin.configuration == b"cfg"


def test_properties_are_encoded_as_envoy_does():
    class Info:
        downstream_remote = ("10.0.0.1", 5555)
        downstream_local = ("::1", 80)
        connection_id = 7
        upstream_cluster = "app"
        route_name = "r1"
        upstream_host = None
        protocol = "HTTP/1.1"
        response_code = 0
        response_code_details = ""
        start_time = 1.5
    h = host(node={"id": "sidecar~1", "metadata": {"NAME": "pod", "LABELS": {"app": "a"}}})
    ctx = stream(h, info=Info())

    def prop(*path):
        return h.get_property(b"\0".join(p.encode() for p in path))
    assert prop("request", "path") == (abi.OK, b"/a?b=1")
    assert prop("request.url_path") == (abi.OK, b"/a")           # one segment, dotted
    assert prop("request", "host") == (abi.OK, b"example.com")
    assert prop("source", "address") == (abi.OK, b"10.0.0.1:5555")
    assert prop("source", "port") == (abi.OK, struct.pack("<q", 5555))
    assert prop("destination", "address") == (abi.OK, b"[::1]:80")
    assert prop("node", "id") == (abi.OK, b"sidecar~1")
    assert prop("node", "metadata", "NAME") == (abi.OK, b"pod")
    assert prop("node", "metadata", "LABELS", "app") == (abi.OK, b"a")
    assert prop("plugin_name") == (abi.OK, b"p") and prop("plugin_root_id") == (abi.OK, b"root")
    assert prop("xds", "cluster_name") == (abi.OK, b"app")
    assert prop("response", "code") == (abi.NOT_FOUND, b"")
    ctx.set_response(Response(503, Headers([])))
    assert prop("response", "code") == (abi.OK, struct.pack("<q", 503))
    assert prop("no", "such") == (abi.NOT_FOUND, b"")
    status, headers = prop("request", "headers")
    assert status == abi.OK and (b"user-agent", b"curl") in abi.parse_pairs(headers)
    from google.protobuf import struct_pb2
    status, data = prop("node", "metadata", "LABELS")
    assert status == abi.OK and struct_pb2.Struct.FromString(data)["app"] == "a"
    assert h.set_property(b"my\0key", b"v") == abi.OK and prop("my", "key") == (abi.OK, b"v")


def test_metrics_are_wasmcustom_stats_of_the_worker():
    h = host()
    status, counter = h.define_metric(abi.COUNTER, b"wasm_filter.requests")
    assert status == abi.OK
    assert h.define_metric(abi.COUNTER, b"wasm_filter.requests") == (abi.OK, counter)
    _, gauge = h.define_metric(abi.GAUGE, b"g")
    _, histogram = h.define_metric(abi.HISTOGRAM, b"h")
    assert h.stats.counters["wasmcustom.wasm_filter.requests"] == 0    # defined: shown at 0
    assert h.increment_metric(counter, 2) == abi.OK
    assert h.increment_metric(counter, -5) == abi.OK                   # a counter never goes down
    assert h.record_metric(counter, 3) == abi.OK
    assert h.get_metric(counter) == (abi.OK, 5)
    assert h.increment_metric(gauge, -2) == abi.OK and h.get_metric(gauge) == (abi.OK, -2)
    assert h.record_metric(gauge, 9) == abi.OK and h.stats.gauges["wasmcustom.g"] == 9
    assert h.record_metric(histogram, 1) == abi.OK                     # accepted, not exported
    assert h.increment_metric(99, 1) == abi.NOT_FOUND
    assert h.define_metric(7, b"x") == (abi.BAD_ARGUMENT, 0)


def test_shared_data_is_per_vm_id_with_cas():
    a, b, other = host(vm_id="shared-a"), host(vm_id="shared-a"), host(vm_id="shared-b")
    assert a.get_shared_data(b"k") == (abi.NOT_FOUND, b"", 0)
    assert a.set_shared_data(b"k", b"1", 0) == abi.OK
    status, value, cas = b.get_shared_data(b"k")
    assert (status, value) == (abi.OK, b"1")
    assert b.set_shared_data(b"k", b"2", cas + 1) == abi.CAS_MISMATCH
    assert b.set_shared_data(b"k", b"2", cas) == abi.OK
    assert a.get_shared_data(b"k")[1] == b"2"
    assert other.get_shared_data(b"k")[0] == abi.NOT_FOUND


def test_log_levels_follow_the_logger():
    log = logging.getLogger("baton.wasm.test")
    log.setLevel(logging.WARNING)
    h = host(log=log)
    assert h.log_level() == 3
    log.setLevel(logging.DEBUG)
    assert h.log_level() == 1
    assert h.proxy_log(9, b"odd level") == abi.OK
    assert h.unimplemented_call("proxy_http_call") == abi.UNIMPLEMENTED
    assert h.unimplemented == {"proxy_http_call": 1}


def test_a_configuration_any_gives_the_bytes_envoy_gives():
    # Envoy's anyToBytes: a StringValue's or BytesValue's value, else the Any's own value
    # (the serialized message) whatever its type: Baton gave JSON, and NACKed a type it did
    # not know ("'NoneType' object is not callable").
    from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
    from baton.xds.http_filters_wasm import any_bytes
    packed = any_pb2.Any()
    packed.Pack(wrappers_pb2.StringValue(value="text"))
    assert any_bytes(packed) == b"text"
    packed.Pack(wrappers_pb2.BytesValue(value=b"\0\1"))
    assert any_bytes(packed) == b"\0\1"
    config = struct_pb2.Struct()
    config["a"] = "b"
    packed.Pack(config)
    assert any_bytes(packed) == config.SerializeToString()
    unknown = any_pb2.Any(type_url="type.googleapis.com/acme.v1.NotKnownHere", value=b"\x08\x07")
    assert any_bytes(unknown) == b"\x08\x07"
    assert any_bytes(any_pb2.Any()) == b""
