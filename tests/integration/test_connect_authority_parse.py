"""Istio's connect_authority on a terminated CONNECT whose internal listener runs a connection
manager (a waypoint's main_internal), with an ORIGINAL_DST cluster behind it.

- The HTTP router's ORIGINAL_DST pick takes connect_authority's `port` at the authority's ip,
  as tcp_proxy's does (Envoy's OriginalDstCluster load balancer prefers the DestinationAddress
  filter state whatever asks it, istio/proxy set_internal_dst_address sets it): it dialled the
  authority's own port, where nothing listens, and answered 503.
- A bad authority on an HTTP/2 connection restores nothing and harms no other stream: the
  superscript digit of `127.0.0.1:\\xb2` passed str.isdigit() and int() raised, a "Fatal error
  on transport" that dropped every stream of the connection.

Istio's filters are not in upstream Envoy, so Baton alone.
"""

from __future__ import annotations

import json
import socket

from .conftest import Baton, free_port
from .test_hbone_tunnel import HCM, SET_INTERNAL_DST, T, terminator

CONNECT_AUTHORITY = {"@type": T + "udpa.type.v1.TypedStruct",
                     "type_url": T + "io.istio.http.connect_authority.Config"}
GET = b"GET /through HTTP/1.1\r\nHost: app\r\n\r\n"
# Envoy 1.40's HTTP/2 codec takes the three ASCII ones (measured: a route that does not match
# them answers 404); the non-ASCII one it refuses outright, closing the whole connection (no
# GOAWAY, another open tunnel dropped with it). Baton's codec takes it (worker/codecs/h2fields.py
# decodes latin-1): here it reaches the route and must restore nothing and harm no one.
BAD_AUTHORITIES = (b"127.0.0.1:\xb2", b"[127.0.0.1]:80", b"[fe80::1%eth0]:80", b"127.0.0.1:0")


def _bootstrap(admin: int, port: int, app: int) -> dict:
    """The terminator's CONNECT route into main_internal with connect_authority's `port` =
    `app`; main_internal is a connection manager whose every request goes to ORIGINAL_DST."""
    end = terminator(admin, port, app, "h1")
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "connect_authority", "typed_config": CONNECT_AUTHORITY})
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["domains"] = ["*"]
    route = vhost["routes"][0]
    route["route"]["cluster"] = "main_internal"
    route["typed_per_filter_config"] = {"connect_authority": {
        **CONNECT_AUTHORITY, "value": {"enabled": True, "port": app}}}
    end["static_resources"]["clusters"] = [
        {"name": "main_internal", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}},
        {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
         "connect_timeout": "1s"}]
    inner = {"@type": HCM, "stat_prefix": "inner", "route_config": {"name": "inner", "virtual_hosts": [{
        "name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "passthrough"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}
    end["static_resources"]["listeners"].append({
        "name": "main_internal", "internal_listener": {}, "listener_filters": [SET_INTERNAL_DST],
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": inner}]}]})
    return end


def _status_and_upstream(response: bytes) -> tuple[int, str | None]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["upstream"] if status == 200 else None


class H2Tunnels:
    """CONNECT streams over one HTTP/2 connection, each carrying HTTP/1.1 requests."""

    def __init__(self, port: int):
        import h2.config
        import h2.connection
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.h2.initiate_connection()
        self.status: dict = {}
        self.data: dict = {}
        self.ended: set = set()

    def connect(self, authority: bytes) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", authority),
                                         (b"x-tunnel", b"hbone")])
        self.sock.sendall(self.h2.data_to_send())
        self.pump(lambda: stream_id in self.status or stream_id in self.ended)
        return stream_id

    def send(self, stream_id: int, data: bytes) -> None:
        self.data[stream_id] = b""
        self.h2.send_data(stream_id, data)
        self.sock.sendall(self.h2.data_to_send())

    def response(self, stream_id: int) -> bytes:
        """One complete HTTP/1.1 response with a Content-Length, read from `stream_id`."""
        def complete():
            head, sep, body = self.data[stream_id].partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            return bool(sep) and length is not None and len(body) >= length
        self.pump(complete)
        return self.data[stream_id]

    def pump(self, done) -> None:
        import h2.events
        while not done():
            chunk = self.sock.recv(65536)
            assert chunk, "the HTTP/2 connection ended"
            for event in self.h2.receive_data(chunk):
                if isinstance(event, h2.events.ConnectionTerminated):
                    raise AssertionError(f"GOAWAY: {event}")
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(event.stream_id)
            self.sock.sendall(self.h2.data_to_send())

    def close(self) -> None:
        self.sock.close()


def test_original_dst_behind_a_connection_manager_dials_the_configured_port(tmp_path, recorder):
    port, admin = free_port(), free_port()
    nowhere = free_port()                   # the authority's own port: nothing listens there
    b = Baton(tmp_path / "b", _bootstrap(admin, port, recorder), concurrency=1).start()
    client = H2Tunnels(port)
    try:
        good = client.connect(f"127.0.0.1:{nowhere}".encode())
        assert client.status[good] == 200
        client.send(good, GET)
        assert _status_and_upstream(client.response(good)) == (200, "app")

        for authority in BAD_AUTHORITIES:
            # Nothing restored: the tunnel reaches main_internal, whose ORIGINAL_DST has no
            # destination (503); the connection and its other streams go on.
            bad = client.connect(authority)
            assert client.status.get(bad) == 200, authority
            client.send(bad, GET)
            assert _status_and_upstream(client.response(bad))[0] == 503, authority

        client.send(good, GET)              # the first tunnel still carries requests
        assert _status_and_upstream(client.response(good)) == (200, "app")
        later = client.connect(f"127.0.0.1:{nowhere}".encode())
        client.send(later, GET)
        assert _status_and_upstream(client.response(later)) == (200, "app")
        assert "Traceback" not in b.log, b.log[-3000:]
    finally:
        client.close()
        b.stop()
