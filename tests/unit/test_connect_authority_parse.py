"""connect_authority's ip:port parse (connect_tunnel.ip_and_port): what Envoy's
parseInternetAddressAndPortNoThrow takes, as istio/proxy's set_internal_dst_address restores
it, and nothing a unicode digit or a scope could sneak in."""

from __future__ import annotations

import pytest

from worker.proxy.http.connect_tunnel import ip_and_port


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
