"""Filter chain selection in Envoy's order (worker/proxy/chains.py)."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.proxy.chains import select


def chain(name, **match):
    return SimpleNamespace(name=name, match=match or None)


def pick(chains, port=443, transport="raw_buffer", protocols=(), sni=None):
    found = select(chains, port, transport, protocols, sni)
    return found.name if found else None


def test_exact_name_beats_wildcard_and_longer_wildcard_beats_shorter():
    chains = [chain("wild", server_names=["*.example.com"]), chain("deeper", server_names=["*.api.example.com"]),
              chain("exact", server_names=["v1.api.example.com"]), chain("default")]
    assert pick(chains, sni="v1.api.example.com") == "exact"
    assert pick(chains, sni="v2.api.example.com") == "deeper"
    assert pick(chains, sni="www.example.com") == "wild"
    assert pick(chains, sni="example.org") == "default"
    assert pick(chains, sni=None) == "default"


def test_destination_port_narrows_first():
    chains = [chain("p80", destination_port=80), chain("sni", server_names=["a.test"]), chain("default")]
    assert pick(chains, port=80, sni="a.test") == "p80"
    assert pick(chains, port=443, sni="a.test") == "sni"


def test_transport_and_application_protocols():
    chains = [chain("tls", transport_protocol="tls"), chain("h2", application_protocols=["h2", "h2c"]),
              chain("http1", application_protocols=["http/1.1"]), chain("default")]
    assert pick(chains, transport="tls", protocols=("h2",)) == "tls"
    assert pick(chains, protocols=("h2c",)) == "h2"
    assert pick(chains, protocols=("http/1.1",)) == "http1"
    assert pick(chains) == "default"


def test_no_candidate_left_is_no_match():
    chains = [chain("only", server_names=["a.test"])]
    assert pick(chains, sni="b.test") is None
    assert pick(chains, sni="a.test") == "only"
