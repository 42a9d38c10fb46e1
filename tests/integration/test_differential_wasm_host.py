"""Differential: the rest of the proxy-wasm host through Envoy 1.40 (V8) and Baton, with
hand-written WAT plugins (tests/fixtures/wasm/): the grpc_status of a plugin's local reply
(grpc_reply.wat); shared queues, a request handed to the root's proxy_on_queue_ready and
continued from there (queue.wat); foreign functions (foreign.wat)."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import pytest
import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, upstream_header
from .differential.proxies import module_pair
from .test_differential_wasm import exchange

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def wat_filter(fixture: str, configuration: str = "", vm_id: str = "") -> dict:
    code = base64.b64encode(wasmtime.wat2wasm((FIXTURES / fixture).read_text())).decode()
    return {"name": "wasm", "typed_config": {"@type": WASM_TYPE, "config": {
        "name": fixture.split(".")[0], "root_id": "",
        "configuration": {"@type": STRING_VALUE, "value": configuration},
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "vm_id": vm_id,
                      "code": {"local": {"inline_bytes": code}}}}}}


LISTENERS = {"grpc_reply": [wat_filter("grpc_reply.wat")],
             "queue": [wat_filter("queue.wat", vm_id="qvm")],
             "foreign": [wat_filter("foreign.wat")]}


def host_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "host", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        listeners = [http_listener(name, ports[name], route_config, http_filters=filters)
                     for name, filters in LISTENERS.items()]
        return bootstrap(admin, listeners, [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-host", host_bootstrap, list(LISTENERS))


GRPC = [("content-type", "application/grpc")]


@pytest.mark.parametrize("path, grpc_status", [("/7", "7"), ("/0", "0"), ("/-", "14"),
                                               ("/@", "16"), ("/A", "14"),
                                               ("/x", "14")])
def test_a_local_replys_grpc_status_answers_a_grpc_request(pair, recorder, path, grpc_status):
    """A gRPC request gets the trailers-only 200 with the plugin's grpc_status, the body as
    grpc-message; -1 (none), or a status past gRPC's last (16, UNAUTHENTICATED): the 503
    maps to UNAVAILABLE, as Envoy 1.40 does."""
    def expect(obs):
        assert obs["status"] == 200, obs
        assert ["grpc-status", grpc_status] in obs["headers"], obs
        assert ["grpc-message", "no%0A"] in obs["headers"], obs
        assert obs["body"] == "", obs
    differential(pair, exchange("grpc_reply", path, "grpc-reply" + path, GRPC), expect)


def test_a_local_replys_grpc_status_is_not_used_for_other_requests(pair, recorder):
    def expect(obs):
        assert (obs["status"], obs["body"]) == (503, "no\n"), obs
        assert not any(name.startswith("grpc-") for name, _ in obs["headers"]), obs
    differential(pair, exchange("grpc_reply", "/7", "grpc-reply-plain"), expect)


def test_a_shared_queue_carries_a_request_to_its_roots_queue_ready(pair, recorder):
    """queue.wat: the request enqueues its path and waits; the root's proxy_on_queue_ready
    dequeues it, marks the request (x-queued), finds the queue EMPTY (7) and continues it.
    Resolving a name nobody registered and enqueueing to an unknown token: NOT_FOUND (1)."""
    def expect(obs):
        assert obs["status"] == 200, obs
        assert upstream_header(obs, "x-queued") == "/queued?a=1", obs
        assert upstream_header(obs, "x-empty") == "7", obs
        assert upstream_header(obs, "x-missing") == "1", obs
        assert upstream_header(obs, "x-bad-token") == "1", obs
    differential(pair, exchange("queue", "/queued?a=1", "queue-1"), expect)
    differential(pair, exchange("queue", "/queued?a=1", "queue-2"), expect)


def test_foreign_functions(pair, recorder):
    """foreign.wat: compress's zlib bytes and their round trip, uncompress of bytes that are
    not zlib (SERIALIZATION_FAILURE, 3), a function nobody registered and a filter state key
    no factory makes (NOT_FOUND, 1), a property declared twice (the second BAD_ARGUMENT, 2)
    and, declared readonly, set twice (the second BAD_ARGUMENT) and read back."""
    path = "/foreign/compress-me-compress-me"

    def expect(obs):
        assert obs["status"] == 200, obs
        assert upstream_header(obs, "x-compressed") == zlib.compress(path.encode()).hex(), obs
        assert upstream_header(obs, "x-roundtrip") == path, obs
        assert upstream_header(obs, "x-bad-inflate") == "3", obs
        assert upstream_header(obs, "x-unknown") == "1", obs
        assert upstream_header(obs, "x-filter-state") == "1", obs
        assert upstream_header(obs, "x-declare") == "02", obs
        assert upstream_header(obs, "x-ro-set") == "02", obs
        assert upstream_header(obs, "x-ro") == "nope", obs
    differential(pair, exchange("foreign", path, "foreign"), expect)
