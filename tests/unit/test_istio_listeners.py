"""The listener side of what istiod sends (issue 14): network filter chains with Istio's
filters before the terminal one, default_filter_chain, bind_to_port false (and its
deprecated_v1 form), use_original_dst, listener access logs with a response flag filter, and
every filter_chain_match field Istio uses, selected in Envoy's order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from baton.xds import protos
from baton.xds.network_filters import TERMINAL, register_terminal
from baton.xds.translate import translate_listener
from baton.worker.proxy.chains import select

T = "type.googleapis.com/"
TCP = {"name": "envoy.filters.network.tcp_proxy",
       "typed_config": {"@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}
STATS = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}
EXCHANGE = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct",
    "type_url": T + "envoy.tcp.metadataexchange.config.MetadataExchange",
    "value": {"protocol": "istio-peer-exchange"}}}
AUTHN = {"name": "istio_authn", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.network.authn.Config"}}
NR_LOG = {"name": "envoy.access_loggers.file", "filter": {"response_flag_filter": {"flags": ["NR"]}},
          "typed_config": {"@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                           "path": "/dev/stdout", "log_format": {"text_format_source": {
                               "inline_string": "%DOWNSTREAM_LOCAL_ADDRESS% %RESPONSE_FLAGS% "
                                                "%CONNECTION_TERMINATION_DETAILS% "
                                                "%REQUESTED_SERVER_NAME%\n"}}}}


def listener(**fields):
    data = {"name": "l", "address": {"socket_address": {"address": "10.96.0.1", "port_value": 443}},
            "filter_chains": [{"filters": [STATS, TCP]}], **fields}
    protos.import_types_in(data)
    pb = protos.json_format.ParseDict(data, protos.Listener())
    errors, warnings = [], []
    return translate_listener(pb, "l", errors, warnings), errors, warnings


def test_istio_filters_before_the_terminal_one_are_accepted_in_order():
    spec, errors, warnings = listener(filter_chains=[{"filters": [EXCHANGE, AUTHN, STATS, TCP]}])
    assert errors == []
    (chain,) = spec["filter_chains"]
    assert chain["terminal"] == "tcp_proxy" and chain["tcp_proxy"]["stat_prefix"] == "PassthroughCluster"
    # The exchange, istio_authn (the principals' filter state) and the stats run in the worker.
    assert chain["network_filters"] == [
        {"name": "istio.metadata_exchange", "type": "istio.metadata_exchange",
         "protocol": "istio-peer-exchange"},
        {"name": "istio_authn", "type": "istio_authn"},
        {"name": "istio.stats", "type": "istio.stats"}]
    assert warnings == []


@pytest.mark.parametrize("filters, message", [
    ([TCP, STATS], "l.filter_chains[0].filters[0]: terminal filter named "
     "envoy.filters.network.tcp_proxy of type envoy.extensions.filters.network.tcp_proxy.v3."
     "TcpProxy must be the last filter in a filter chain"),
    ([STATS], "l.filter_chains[0].filters[0]: non-terminal filter named istio.stats of type "
     "stats.PluginConfig is the last filter in a filter chain"),
    ([{"name": "authz", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz", "stat_prefix": "x"}}, TCP],
     "l.filter_chains[0].filters[0].typed_config: envoy.extensions.filters.network.ext_authz.v3.ExtAuthz "
     "not supported"),
    ([{"name": "x", "typed_config": {"@type": T + "udpa.type.v1.TypedStruct",
                                     "type_url": T + "io.istio.network.authn.Config",
                                     "value": {"nope": 1}}}, TCP],
     "l.filter_chains[0].filters[0].typed_config.value.nope: not supported"),
])
def test_chain_order_and_unknown_filters_are_refused_with_their_path(filters, message):
    spec, errors, _ = listener(filter_chains=[{"filters": filters}])
    assert spec is None
    assert errors[0].startswith(message), errors


def test_stats_plugin_fields_beyond_the_declared_ones_are_refused_by_number():
    config = protos.message_class("stats.PluginConfig")(disable_host_header_fallback=True)
    raw = config.SerializeToString() + b"\x42\x00"            # field 8 (metrics): empty
    data = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}
    spec, errors, _ = listener(filter_chains=[{"filters": [data, TCP]}])
    assert errors == []
    pb = protos.json_format.ParseDict({
        "name": "l", "address": {"socket_address": {"address": "10.96.0.1", "port_value": 443}},
        "filter_chains": [{"filters": [data, TCP]}]}, protos.Listener())
    pb.filter_chains[0].filters[0].typed_config.value = raw
    errors = []
    assert translate_listener(pb, "l", errors) is None
    assert errors == ["l.filter_chains[0].filters[0].typed_config: field number 8 of "
                      "stats.PluginConfig not supported"]


def test_metadata_exchange_on_a_tls_chain_runs_in_the_worker():
    from baton.xds.network_filters import translate_network_filters
    data = {"filters": [EXCHANGE, TCP], "transport_socket": {"name": "tls", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"}}}
    protos.import_types_in(data)
    chain = protos.json_format.ParseDict(data, protos.Listener().filter_chains.add())
    errors = []
    result = translate_network_filters(chain, "c", errors, [], None)
    assert errors == []
    assert result["network_filters"] == [
        {"name": "istio.metadata_exchange", "type": "istio.metadata_exchange",
         "protocol": "istio-peer-exchange"}]


def test_a_terminal_filter_is_one_registration():
    calls = []
    register_terminal("google.protobuf.StringValue", "echo",
                      lambda any_pb, path, errors, warnings, clusters: calls.append(path) or {"x": 1})
    try:
        spec, errors, _ = listener(filter_chains=[{"filters": [STATS, {
            "name": "echo", "typed_config": {"@type": T + "google.protobuf.StringValue",
                                             "value": "hi"}}]}])
    finally:
        TERMINAL.pop("google.protobuf.StringValue")
    assert errors == [] and calls == ["l.filter_chains[0].filters[1].typed_config"]
    chain = spec["filter_chains"][0]
    assert (chain["terminal"], chain["echo"], chain["tcp_proxy"], chain["http"]) == ("echo", {"x": 1}, None, None)


def test_bind_to_port_false_default_filter_chain_and_access_log_as_istio_sends_them():
    spec, errors, warnings = listener(
        bind_to_port=False, listener_filters_timeout="0s",
        continue_on_listener_filters_timeout=True, access_log=[NR_LOG],
        listener_filters=[{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        filter_chains=[{"filter_chain_match": {"transport_protocol": "tls"}, "filters": [TCP]}],
        default_filter_chain={"filter_chain_match": {}, "name": "PassthroughFilterChain",
                              "filters": [STATS, TCP]})
    assert errors == []
    assert spec["bind_to_port"] is False
    assert spec["sniff_timeout"] is None            # 0s: wait for the inspectors
    assert spec["tcp_proxy"] is None                # no chain without a match ...
    default = spec["filter_chains"][-1]             # ... but a default_filter_chain
    assert default["default"] is True and default["name"] == "PassthroughFilterChain"
    assert default["match"] is None
    assert spec["access_log"][0]["flags"] == ["NR"]
    assert not any("access_log" in w for w in warnings)


def test_deprecated_v1_bind_to_port_and_use_original_dst():
    spec, errors, _ = listener(deprecated_v1={"bind_to_port": False})
    assert errors == [] and spec["bind_to_port"] is False
    spec, errors, _ = listener()
    assert errors == [] and "bind_to_port" not in spec
    # Envoy: use_original_dst alone recovers the original destination (Istio's
    # virtualOutbound has no original_dst listener filter).
    spec, errors, _ = listener(use_original_dst=True)
    assert errors == [] and spec["original_dst"] is True and spec["use_original_dst"] is True


def test_a_listener_log_that_would_log_taken_connections_says_it_does_not():
    log = {k: v for k, v in NR_LOG.items() if k != "filter"}
    spec, errors, warnings = listener(access_log=[log])
    assert errors == [] and spec["access_log"][0].get("flags") is None
    assert warnings == ["l.access_log: written for connections no filter chain matched (flag "
                        "NR) and for tcp_proxy ones, not for those of an HTTP connection manager"]


def test_every_filter_chain_match_field_istio_uses_is_translated():
    match = {"destination_port": 8080,
             "prefix_ranges": [{"address_prefix": "10.1.2.3", "prefix_len": 16},
                               {"address_prefix": "::1", "prefix_len": 128}],
             "source_prefix_ranges": [{"address_prefix": "192.168.0.0", "prefix_len": 24}],
             "direct_source_prefix_ranges": [{"address_prefix": "0.0.0.0"}],
             "source_type": "SAME_IP_OR_LOOPBACK", "source_ports": [7, 7, 5],
             "server_names": ["A.example.com"], "transport_protocol": "tls",
             "application_protocols": ["istio-peer-exchange", "istio"]}
    spec, errors, _ = listener(filter_chains=[{"filter_chain_match": match, "filters": [TCP]}])
    assert errors == []
    assert spec["filter_chains"][0]["match"] == {
        "destination_port": 8080, "prefix_ranges": [["10.1.0.0", 16], ["::1", 128]],
        "source_prefix_ranges": [["192.168.0.0", 24]],
        "direct_source_prefix_ranges": [["0.0.0.0", 0]],
        "source_type": "SAME_IP_OR_LOOPBACK", "source_ports": [5, 7],
        "server_names": ["a.example.com"], "transport_protocol": "tls",
        "application_protocols": ["istio-peer-exchange", "istio"]}
    _, errors, _ = listener(filter_chains=[{"filter_chain_match": {"prefix_ranges": [
        {"address_prefix": "10.0.0.0", "prefix_len": 33}]}, "filters": [TCP]}])
    assert errors == ["l.filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: 33 "
                      "is longer than the address (32 bits)"]


# --- selection -------------------------------------------------------------------------------

def chain(name, default=False, **match):
    return SimpleNamespace(name=name, match=match or None, spec={"default": default})


def pick(chains, dst=("10.0.0.1", 80), src=("10.9.9.9", 40000), transport="raw_buffer",
         protocols=(), sni=None):
    found = select(chains, dst[1], transport, protocols, sni, destination_ip=dst[0], source=src)
    return found.name if found else None


def test_the_longest_destination_prefix_wins_and_unset_is_the_fallback():
    chains = [chain("wide", prefix_ranges=[["10.0.0.0", 8]]),
              chain("narrow", prefix_ranges=[["10.0.0.0", 24], ["fd00::", 8]]),
              chain("any")]
    assert pick(chains, dst=("10.0.0.7", 80)) == "narrow"
    assert pick(chains, dst=("10.1.0.7", 80)) == "wide"
    assert pick(chains, dst=("192.168.1.1", 80)) == "any"
    assert pick(chains, dst=("fd00::5", 80)) == "narrow"


def test_destination_port_comes_before_the_destination_ip_and_no_going_back():
    # Envoy's tree: once port 80 has chains, a chain without a port is not considered,
    # even when none of the port-80 chains matches the destination IP.
    chains = [chain("p80-ip", destination_port=80, prefix_ranges=[["10.0.0.0", 24]]),
              chain("ip", prefix_ranges=[["192.168.0.0", 16]])]
    assert pick(chains, dst=("10.0.0.1", 80)) == "p80-ip"
    assert pick(chains, dst=("192.168.0.1", 80)) is None
    assert pick(chains, dst=("192.168.0.1", 81)) == "ip"


def test_source_type_then_source_prefix_then_source_port():
    chains = [chain("local", source_type="SAME_IP_OR_LOOPBACK"),
              chain("external", source_type="EXTERNAL", source_prefix_ranges=[["10.9.0.0", 16]]),
              chain("external-port", source_type="EXTERNAL", source_prefix_ranges=[["10.9.0.0", 16]],
                    source_ports=[40000]),
              chain("any")]
    assert pick(chains, src=("127.0.0.1", 5000)) == "local"
    assert pick(chains, dst=("10.0.0.1", 80), src=("10.0.0.1", 5000)) == "local"   # same IP
    assert pick(chains, src=("10.9.9.9", 40000)) == "external-port"
    assert pick(chains, src=("10.9.9.9", 40001)) == "external"
    # An external source outside the ranges: the EXTERNAL chains name other sources.
    assert pick(chains, src=("172.16.0.1", 40000)) is None
    assert pick(chains, src=("::ffff:10.9.1.1", 40000, 0, 0)) == "external-port"


def test_the_default_filter_chain_serves_only_when_nothing_matches():
    chains = [chain("tls", transport_protocol="tls"),
              chain("http", application_protocols=["http/1.1", "h2c"]),
              chain("PassthroughFilterChain", default=True)]
    assert pick(chains, transport="tls") == "tls"
    assert pick(chains, protocols=("http/1.1",)) == "http"
    assert pick(chains, protocols=()) == "PassthroughFilterChain"
    # A catch-all chain in filter_chains is a match, so the default never serves.
    assert pick(chains[:2] + [chain("catch-all")] + chains[2:]) == "catch-all"


def test_filter_disabled_skips_an_inspector_on_a_port_range():
    inspectors = [{"name": f"envoy.filters.listener.{kind}_inspector",
                   "filter_disabled": {"destination_port_range": {"start": 15006, "end": 15007}},
                   "typed_config": {"@type": T + f"envoy.extensions.filters.listener.{kind}_inspector.v3."
                                                 f"{kind.title()}Inspector"}}
                  for kind in ("tls", "http")]
    spec, errors, _ = listener(listener_filters=inspectors)
    assert errors == [] and spec["inspectors"] == ["tls", "http"]
    assert spec["inspectors_disabled"] == {"tls": [[15006, 15007]], "http": [[15006, 15007]]}
    from baton.worker.listener import Listener
    fake = SimpleNamespace(inspectors=["tls", "http"], inspectors_disabled=spec["inspectors_disabled"])
    assert Listener.inspectors_for(fake, 15006) == []
    assert Listener.inspectors_for(fake, 8080) == ["tls", "http"]
    inspectors[0]["filter_disabled"] = {"not_match": {"any_match": True}}
    _, errors, _ = listener(listener_filters=inspectors)
    assert errors == ["l.listener_filters[0].filter_disabled.not_match: not supported "
                      "(destination_port_range, or an or_match of them)"]


def test_filter_disabled_or_match_skips_an_inspector_on_any_of_its_port_ranges():
    """Istio 1.19+: the HTTP inspector is off on 80 and 15006 (an or_match of two ranges)."""
    ranges = [{"destination_port_range": {"start": 80, "end": 81}},
              {"destination_port_range": {"start": 15006, "end": 15007}}]
    inspector = {"name": "envoy.filters.listener.http_inspector",
                 "filter_disabled": {"or_match": {"rules": ranges}},
                 "typed_config": {"@type": T + "envoy.extensions.filters.listener.http_inspector.v3."
                                               "HttpInspector"}}
    spec, errors, _ = listener(listener_filters=[inspector])
    assert errors == [] and spec["inspectors_disabled"] == {"http": [[80, 81], [15006, 15007]]}
    from baton.worker.listener import Listener
    fake = SimpleNamespace(inspectors=["http"], inspectors_disabled=spec["inspectors_disabled"])
    assert Listener.inspectors_for(fake, 80) == [] and Listener.inspectors_for(fake, 15006) == []
    assert Listener.inspectors_for(fake, 8080) == ["http"]
    ranges.append({"not_match": {"any_match": True}})
    _, errors, _ = listener(listener_filters=[inspector])
    assert errors == ["l.listener_filters[0].filter_disabled.or_match.rules[2].not_match: not "
                      "supported (destination_port_range, or an or_match of them)"]


def test_chains_alike_are_no_error_under_a_filter_chain_matcher():
    """Envoy refuses two chains with the same filter_chain_match, but not when the listener's
    filter_chain_matcher picks chains by name (a waypoint's main_internal)."""
    matcher = {"matcher_tree": {
        "input": {"name": "port", "typed_config": {
            "@type": T + "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"}},
        "exact_match_map": {"map": {"80": {"action": {"name": "a", "typed_config": {
            "@type": T + "google.protobuf.StringValue", "value": "a"}}}}}}}
    chains = [{"name": "a", "filters": [TCP]}, {"name": "b", "filters": [TCP]}]
    _, errors, _ = listener(filter_chains=chains)
    assert errors == ["l.filter_chains[1].filter_chain_match: the same match as filter_chains[0] "
                      "(Envoy: multiple filter chains with the same matching rules)"]
    _, errors, _ = listener(filter_chains=chains, filter_chain_matcher=matcher)
    assert not any("the same match" in e for e in errors), errors
