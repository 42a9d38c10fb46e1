"""Differential: when the HTTP/2 codec stats (http2.*) are listed. Envoy creates them with the
first HTTP/2 codec, so /stats lists none at startup nor after HTTP/1.1 traffic. Its own pair
of proxies: any HTTP/2 connection before the test would list them."""

from __future__ import annotations

import urllib.request

from hpack import Encoder

from baton.worker.codecs.h2limits import CODEC_STATS

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential
from .differential.proxies import module_pair
from .test_differential_http2_codec import exchange, request


def h2stats_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "h2stats", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("s", ports["s"], route_config)],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-h2stats", h2stats_bootstrap, ["s"])


def test_http2_stats_are_listed_from_the_first_http2_connection(pair):
    """None listed at startup or after an HTTP/1.1 request; after one HTTP/2 request, what
    Baton's codec counts is listed, at 0 where nothing happened (Envoy lists more)."""
    def run(target):
        at_start = sorted(target.stats("http2."))
        with urllib.request.urlopen(f"http://127.0.0.1:{target.port}/", timeout=5) as reply:
            reply.read()
        after_http1 = sorted(target.stats("http2."))
        seen = exchange(target.port, request(Encoder(), 1), quiet=0.5)
        after_http2 = target.stats("http2.")
        # Envoy lists more than Baton counts (29 names): Baton's are each listed, at 0.
        return [at_start, after_http1, seen, {name: after_http2.get(name) for name in CODEC_STATS}]

    def expect(obs):
        assert obs == [[], [], [("HEADERS", 1, 5)], {name: 0 for name in CODEC_STATS}], obs
    differential(pair, run, expect)
