"""What a filter chain asks of every request, decided once per chain (stream.filter_chain):
a factory whose config gave it nothing to do is not called, and a chain none of whose
filters can clear the route cache keeps no per-request record of the factories that made
nothing. The request and response are what the chain that calls everything gives."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import tests.unit.test_http_express as express_tests
from baton.worker.proxy.http import stream as stream_module
from baton.worker.proxy.http.cors import CorsFactory
from baton.worker.proxy.http.fault import FaultFilterFactory
from baton.worker.proxy.http.filter import FilterFactory
from tests.unit.test_http_express import Rig, _normalised

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _mesh_rig(tmp_path, loop, monkeypatch) -> Rig:
    """bench/http_proxies.py's mesh-shaped chain, as bench/h2_cost.py's rig reads it: CORS
    first, a fault with nothing to do, a local rate limit, a route that adds and removes
    headers, an access log (bench/ is not a package: its modules import each other)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import http_proxies
    tmp_path.mkdir(exist_ok=True)
    text = http_proxies.envoy_bootstrap(http_proxies.Ports(10001, 10000, 10000, 10002), "mesh",
                                        tmp_path)
    monkeypatch.setattr(express_tests, "BOOTSTRAP", text.replace("%", "%%") + "%s")
    return Rig(tmp_path, loop)


class _Rerouting(FilterFactory):
    """A factory whose filters may clear the route cache (as a user's may): it makes none."""

    def create(self, stream):
        return None


def _factories(fault_config):
    context = SimpleNamespace(stats=SimpleNamespace(counters=Counter(), gauges=Counter()),
                              stat_prefix="p")
    return [CorsFactory({}, context), FaultFilterFactory(fault_config, context)]


def test_a_chain_that_cannot_reroute_leaves_out_an_idle_factory():
    cors, fault = factories = _factories({})
    chain = stream_module.FilterPlan(factories)
    assert chain.calls == (cors,) and chain.reroutes is False
    # A fault with something to do is called; a factory that may re-route turns the record on
    # and every factory is called.
    cors, fault = factories = _factories({"abort": {"http_status": 503, "percentage": None}})
    assert stream_module.FilterPlan(factories).calls == (cors, fault)
    factories.append(_Rerouting({}, None))
    chain = stream_module.FilterPlan(factories)
    assert chain.calls == tuple(factories) and chain.reroutes is True


def test_the_kept_plan_is_looked_at_again_for_a_grown_or_replaced_list(tmp_path, loop,
                                                                      monkeypatch):
    """The plan lives on the config (HttpConfig.filter_plan): a grown list or a replaced one
    is decided again, and a replaced config's factories are not kept by a memo (review R1,
    finding 7: a memo by the list's id kept up to 1,024 old chains alive)."""
    rig = _mesh_rig(tmp_path, loop, monkeypatch)
    hcm = rig.conn.hcm
    assert hcm.filter_plan is None
    _exchange(rig)
    first = hcm.filter_plan
    assert first is not None and first.factories is hcm.filter_factories
    _exchange(rig)
    assert hcm.filter_plan is first                       # kept while nothing changed
    hcm.filter_factories.append(_Rerouting({}, None))
    _exchange(rig)
    assert hcm.filter_plan is not first and hcm.filter_plan.reroutes is True
    grown = hcm.filter_plan
    hcm.filter_factories = list(hcm.filter_factories)     # replaced (a route update)
    _exchange(rig)
    assert hcm.filter_plan is not grown and hcm.filter_plan.factories is hcm.filter_factories
    assert not hasattr(stream_module, "_CHAINS")


def _exchange(rig, origin=False):
    request = b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-Mesh-Internal: 1\r\n" + \
        (b"Origin: https://mesh.test\r\n" if origin else b"") + b"\r\n"
    rig.conn.data_received(request)
    stream = rig.conn.active
    upstream = rig.busy_upstream()
    sent = upstream.transport.take()
    upstream.data_received(express_tests.RESPONSE)
    return stream, sent, rig.down.take()


@pytest.mark.parametrize("origin", [False, True])
def test_the_mesh_chain_writes_what_the_recording_chain_writes(tmp_path, loop, monkeypatch,
                                                               origin):
    rig = _mesh_rig(tmp_path, loop, monkeypatch)
    stream, sent, answer = _exchange(rig, origin)
    assert stream.skipped_factories is None
    assert [type(f).__name__ for f in stream.filters] == \
        (["CorsFilter", "LocalRateLimitFilter"] if origin else [])
    assert sent.count(b"x-envoy-expected-rq-timeout-ms: 15000\r\n") == 1
    assert b"x-mesh-route: bench\r\n" in sent and b"x-mesh-internal" not in sent.lower()
    assert b"x-mesh-served-by: baton-bench\r\n" in answer
    # The same chain with a factory that may re-route: every factory called and recorded.
    recording = _mesh_rig(tmp_path / "r", loop, monkeypatch)
    recording.conn.hcm.filter_factories.append(_Rerouting({}, None))
    stream2, sent2, answer2 = _exchange(recording, origin)
    assert stream2.skipped_factories is not None and \
        stream2.skipped_factories[-1] is recording.conn.hcm.filter_factories[-1]
    assert _normalised(sent2) == _normalised(sent)
    assert _normalised(answer2) == _normalised(answer)
