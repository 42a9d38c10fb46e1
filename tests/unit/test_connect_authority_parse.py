"""connect_authority's ip:port parse (connect_tunnel.ip_and_port): what Envoy's
parseInternetAddressAndPortNoThrow takes, as istio/proxy's set_internal_dst_address restores
it, and nothing a unicode digit or a scope could sneak in."""

from __future__ import annotations

import pytest

from worker.proxy.internal_listener import ip_and_port


@pytest.mark.parametrize("authority, parsed", [
    ("10.0.0.1:80", ("10.0.0.1", 80)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::ffff:10.0.0.1]:443", ("::ffff:10.0.0.1", 443)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
])
def test_ip_and_port(authority, parsed):
    assert ip_and_port(authority) == parsed


@pytest.mark.parametrize("authority", [
    "127.0.0.1:\xb2", "10.0.0.1:\u0663", "\u0661\u0660.0.0.1:80",  # non-ASCII digits
    "[10.0.0.1]:80", "::1:80", "[fe80::1%eth0]:80",                   # brackets, scope
    "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:123456", "10.0.0.1:+80", "10.0.0.1: 80",
    "10.0.0.1", "10.0.0.1:", "[::1]80", "[::1]:", "name:80", "", None,
])
def test_refused(authority):
    assert ip_and_port(authority) is None


def test_a_set_filter_state_literal_is_parsed_the_same_way():
    """set_filter_state's ip:port literal took a superscript port and raised in int()."""
    from .test_filter_chain_matcher import _set_state
    key = "envoy.filters.listener.original_dst.local_ip"
    for literal in ("10.1.2.3:\xb2", "[10.1.2.3]:80", "name:80"):
        spec, errors = _set_state({"object_key": key, "shared_with_upstream": "ONCE",
                                   "format_string": {"text_format": literal}})
        (error,) = errors
        assert error.startswith("x.filter_chains[0].filters[0].typed_config.on_new_connection"
                                f"[0].format_string: {literal!r} not supported (") and \
            error.endswith(", or an ip:port)"), error
    spec, errors = _set_state({"object_key": key, "shared_with_upstream": "ONCE",
                               "format_string": {"text_format": "[::1]:80"}})
    assert errors == [] and spec["filter_chains"][0]["network_filters"][0]["original_dst"] == ["::1", 80]
