"""The Stream's plain step (stream.py, Stream.start under HttpConfig.plain_streams): its config
verdict is the express lane's without the codec, and a request under it writes what the
Router's own path writes, on a route the lane may serve (start sends it itself) and on one it
may not (start hands it to _route).

In process on fake transports, as tests/unit/test_http_express.py (whose Rig, and whose
fixtures for the Router-only rig, this module uses).
"""

from types import SimpleNamespace

import pytest

from baton.worker.proxy.http import express
from baton.worker.proxy.http.config import HttpConfig
from baton.worker.proxy.http.route_step import RouteStep
from tests.unit.test_http_express import Rig, _normalised, _router_only, loop  # noqa: F401

PLAIN = dict(routes=SimpleNamespace(adds_request_headers=False, matches_proxy_headers=False),
             filter_factories=[], access_logs=[], via="", merge_slashes=False,
             strip_matching_host_port=False, strip_any_host_port=False,
             use_remote_address=False, internal_networks=[],
             always_set_request_id_in_response=False, normalize_path=False,
             escaped_slashes="KEEP_UNCHANGED", max_stream_duration=None)


def test_the_verdict_is_the_lanes_without_its_codec(tmp_path, loop):
    assert set(HttpConfig.STREAM_BLOCKING) == set(HttpConfig.EXPRESS_BLOCKING) - {"codec_type"}
    for codec_type in ("AUTO", "HTTP1", "HTTP2"):
        config = SimpleNamespace(**PLAIN, codec_type=codec_type)
        assert express.blockers(config, HttpConfig.STREAM_BLOCKING) == []
    for name, value in [("filter_factories", [1]), ("access_logs", [1]), ("via", "1.1 b"),
                        ("use_remote_address", True), ("max_stream_duration", 5.0)]:
        config = SimpleNamespace(**{**PLAIN, "codec_type": "AUTO", name: value})
        assert express.blockers(config, HttpConfig.STREAM_BLOCKING) == [name]
    hcm = Rig(tmp_path, loop).conn.hcm
    table = hcm.spec["route_config"]
    assert hcm.plain_streams
    hcm.set_routes(None)            # RDS took the table away: no plain step
    assert not hcm.plain_streams
    hcm.set_routes(table)
    assert hcm.plain_streams


@pytest.mark.parametrize("route_extra, routed, taken_by", [
    ("", 0, "Stream"),                                          # the lane's route: start sends
    (", prefix_rewrite: /b", 3, "Stream"),                      # _route rewrites, then straight
    (", retry_policy: {retry_on: 5xx}", 3, "UpstreamRequest"),  # _route, then the Router
], ids=["lane_route", "rewrite", "retry"])
def test_the_plain_step_writes_what_the_router_writes(tmp_path, loop, monkeypatch,
                                                      route_extra, routed, taken_by):
    calls = []
    real_route = RouteStep._route

    def spy(stream):
        calls.append(stream.conn)
        real_route(stream)

    monkeypatch.setattr(RouteStep, "_route", spy)
    plain = Rig(tmp_path, loop, route_extra, express=False)
    full = Rig(tmp_path, loop, route_extra, express=False, straight=False)
    assert plain.conn.hcm.plain_streams
    for _ in range(3):
        a, b = plain.exchange(), full.exchange()
        assert (plain.taken_by, full.taken_by) == (taken_by, "UpstreamRequest")
        assert _normalised(a[0]) == _normalised(b[0])
        assert _normalised(a[1]) == _normalised(b[1])
        assert a[2] == b[2]
    assert calls.count(plain.conn) == routed
    assert dict(plain.worker.stats.counters) == dict(full.worker.stats.counters)
    assert dict(plain.worker.stats.gauges) == dict(full.worker.stats.gauges)
    assert not plain.conn.streams and plain.cluster.rq_active == 0
