"""use_downstream_protocol_config with real processes: an HTTP/1.1 request goes upstream as
HTTP/1.1 and an HTTP/2 (h2c) one as HTTP/2, as Envoy does (Istio sets it on every cluster).

Front: the Baton under test, its cluster `app` with use_downstream_protocol_config. Upstream:
a second Baton (codec AUTO: it takes HTTP/1.1 and h2c) in front of the recording upstream; its
downstream_rq_http1_total / downstream_rq_http2_total say what the front sent.
"""

from __future__ import annotations

from .conftest import free_port, http_bootstrap
from .differential.client import curl

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def test_each_request_goes_upstream_in_its_downstream_protocol(baton, recorder):
    back_port = free_port()
    back = baton(http_bootstrap(free_port(), back_port, recorder), concurrency=1)
    front_port = free_port()
    bootstrap = http_bootstrap(free_port(), front_port, back_port)
    bootstrap["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                       "use_downstream_protocol_config": {"http_protocol_options": {},
                                                          "http2_protocol_options": {}}}}
    front = baton(bootstrap, concurrency=1)
    for _ in range(3):
        assert curl(front_port, "/one").status == 200
    for _ in range(2):
        response = curl(front_port, "/two", http2=True)
        assert (response.status, response.version) == (200, "HTTP/2")
    seen = back.stats()
    assert seen["http.ingress_http.downstream_rq_http1_total"] == 3
    assert seen["http.ingress_http.downstream_rq_http2_total"] == 2
    sent = front.stats()
    assert sent["cluster.app.upstream_cx_http2_total"] >= 1
    assert sent["cluster.app.upstream_cx_http1_total"] >= 1
