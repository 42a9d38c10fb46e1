"""Protocol auto-detection for RPC (issue 16 point 2): the sniffer recognises Dubbo and SOFA
Bolt from their first bytes (worker/codecs/sniff.py), and Baton's rpc_inspector listener
filter turns that on for a listener (xds/translate.py)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from baton.tests.integration.rpc_peers.frames import bolt_request, dubbo_request
from baton.tests.unit.test_config import bootstrap, errors, listener, load  # noqa: F401
from baton.worker.codecs import bolt, dubbo
from baton.worker.codecs.sniff import BOLT, DUBBO, RAW, sniff

SERVICE = "com.example.HelloService"
SAMPLES = {
    "dubbo request": (dubbo_request(7, SERVICE, "echo", ["x"]), DUBBO),
    "dubbo heartbeat": (dubbo.heartbeat_request(1), DUBBO),
    "bolt request": (bolt_request(7, f"{SERVICE}:1.0", "hello"), BOLT),
    "bolt oneway": (bolt_request(8, f"{SERVICE}:1.0", "hello", oneway=True), BOLT),
    "bolt heartbeat": (bolt.request(9, cmd_code=bolt.CMD_HEARTBEAT), BOLT),
}


def test_each_first_frame_is_recognised_and_every_prefix_waits_or_agrees():
    for name, (frame, verdict) in SAMPLES.items():
        assert sniff(frame) == verdict, name
        for k in range(len(frame)):
            assert sniff(frame[:k]) in (None, verdict), (name, k)


def test_what_only_starts_like_them_is_raw():
    for data in (b"\xda\x00", b"\xdb", b"\x01\x00", b"\x01\x03", b"\x01\x01\x01",
                 b"\x01\x01\x00\x02",        # a Bolt response: no client sends one first
                 b"\x02\x01\x00\x01"):       # Bolt v2, which the codec does not speak
        assert sniff(data) == RAW, data


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=64))
def test_a_verdict_never_changes_with_more_bytes(name, more):
    frame, verdict = SAMPLES[name]
    assert sniff(frame[:4] + more) == verdict


RPC_INSPECTOR = "baton.filters.listener.rpc_inspector"
STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"


def test_the_rpc_inspector_loads_by_name_or_as_a_typed_struct(load, errors):
    by_name = {"name": RPC_INSPECTOR}
    struct = {"name": "auto", "typed_config": {
        "@type": STRUCT,
        "type_url": "type.googleapis.com/baton.filters.listener.rpc_inspector.v1.RpcInspector"}}
    http = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3"
                 ".HttpInspector"}}
    for filters, inspectors in (([by_name], ["rpc"]), ([struct, http], ["rpc", "http"])):
        spec = load(bootstrap(listeners=[listener(listener_filters=filters)]))["listeners"][0]
        assert spec["inspectors"] == inspectors
    other = {"name": "auto", "typed_config": {"@type": STRUCT,
                                              "type_url": "type.googleapis.com/some.Other"}}
    settings_given = {"name": RPC_INSPECTOR, "typed_config": {
        **struct["typed_config"], "value": {"timeout": "1s"}}}
    assert errors(bootstrap(listeners=[listener(listener_filters=[other, settings_given])])) == [
        "static_resources.listeners[0].listener_filters[0].typed_config: some.Other not "
        "supported as a listener filter",
        "static_resources.listeners[0].listener_filters[1].typed_config.value: "
        "baton.filters.listener.rpc_inspector has no settings"]
