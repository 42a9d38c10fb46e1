"""Differential: a proxy-wasm plugin's gRPC callouts (proxy_grpc_call, proxy_grpc_stream,
_send, _cancel, _close and the proxy_on_grpc_* callbacks) through Envoy 1.40 (V8) and Baton,
to a real grpcio service (wasm_grpc_server.py) over an HTTP/2 cluster. The WAT plugin
(tests/fixtures/wasm/grpc.wat) writes what its callbacks saw into the request the upstream
records: a unary answer, a failed call's status and message (proxy_get_status), a timeout,
a cluster nobody listens on, a bidirectional stream (metadata both ends, two messages each
way), a cancel, and the statuses Envoy gives to bad tokens and a cluster that does not exist."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import wasmtime

from .conftest import free_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, upstream_headers
from .differential.proxies import ProxyPair, Recorder
from .test_differential_wasm import exchange as wasm_exchange

HERE = Path(__file__).resolve().parent
SERVER = HERE / "wasm_grpc_server.py"
FIXTURES = HERE.parent / "fixtures" / "wasm"
T = "type.googleapis.com/"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def grpc_bootstrap(upstreams, grpc_port, mute_port):
    code = base64.b64encode(wasmtime.wat2wasm((FIXTURES / "grpc.wat").read_text())).decode()
    plugin = {"name": "wasm", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
            "name": "grpc", "root_id": "",
            "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"inline_bytes": code}}}}}}
    routes = {"name": "grpc", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        return bootstrap(admin, [http_listener("grpc", ports["grpc"], routes,
                                               http_filters=[plugin])],
                         [cluster("a", [upstreams["a"]]),
                          cluster("grpc", [grpc_port], typed_extension_protocol_options=H2),
                          cluster("down", [free_port()], typed_extension_protocol_options=H2),
                          cluster("mute", [mute_port], typed_extension_protocol_options=H2)])
    return template


@contextmanager
def server_process(script: Path):
    """A server script that prints "ready PORT" once it listens: its port; killed after."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd="/")
    try:
        line = proc.stdout.readline()           # blocks until "ready PORT" or exit
        if not line.startswith("ready "):
            raise RuntimeError(f"{script.name} did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def grpc_server():
    with server_process(SERVER) as port:
        yield port


@pytest.fixture(scope="module")
def mute():
    """A port that takes connections into its backlog and never accepts: a call to it is
    never answered (a grpcio server would end it at its own deadline, racing the proxy's)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, grpc_server, mute, tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-wasm-grpc"),
                  grpc_bootstrap(recorder.ports, grpc_server, mute), ["grpc"])
    yield p
    p.stop()


def exchange(path: str, case: str):
    return wasm_exchange("grpc", path, case)


def marks(obs) -> dict:
    names = ("x-initial", "x-msg", "x-trailing", "x-close", "x-close-message", "x-call-status",
             "x-cancel")
    return {name: upstream_headers(obs, name) for name in names
            if upstream_headers(obs, name)}


def test_a_unary_call_answers_once(pair):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert marks(obs) == {"x-msg": ["/echo-me|m"]}, obs      # its metadata reached
    differential(pair, exchange("/echo-me", "grpc-unary"), expect)


def test_a_failed_call_closes_with_the_servers_status_and_message(pair):
    def expect(obs):
        # Envoy 1.40 adds the stream's response code details to the message.
        assert marks(obs) == {"x-close": ["07"],
                              "x-close-message": ["denied here{via_upstream}"]}, obs
    differential(pair, exchange("/deny", "grpc-deny"), expect)


def test_a_call_past_its_timeout(pair):
    def expect(obs):
        assert marks(obs) == {"x-close": ["14"], "x-close-message": [
            "upstream request timeout{response_timeout}"]}, obs
    differential(pair, exchange("/timeout", "grpc-timeout"), expect)


def test_a_call_to_a_cluster_nobody_listens_on(pair):
    def expect(obs):
        assert marks(obs) == {"x-close": ["14"], "x-close-message": [
            "upstream connect error or disconnect/reset before headers. reset reason: remote "
            "connection failure{upstream_reset_before_response_started{remote_connection_failure"
            "|delayed_connect_error:_Connection_refused}}"]}, obs
    differential(pair, exchange("/x-down", "grpc-down"), expect)


def test_a_bidirectional_stream(pair):
    def expect(obs):
        assert marks(obs) == {"x-initial": ["yes"], "x-msg": ["echo:one", "echo:two"],
                              "x-trailing": ["done"], "x-close": ["00"],
                              "x-close-message": ["via_upstream"]}, obs
    differential(pair, exchange("/bidi", "grpc-bidi"), expect)


def test_cancel_and_bad_tokens(pair):
    """A cancel (OK), the same cancel again and a close of a token never given (NOT_FOUND),
    a send on a unary call's token (BAD_ARGUMENT); no callback comes for the cancelled call."""
    def expect(obs):
        assert marks(obs) == {"x-cancel": ["00010102"]}, obs
    differential(pair, exchange("/cancel", "grpc-cancel"), expect)


def test_a_call_naming_a_cluster_that_does_not_exist(pair):
    def expect(obs):
        assert marks(obs) == {"x-call-status": ["04"]}, obs    # PARSE_FAILURE, as Envoy
    differential(pair, exchange("/nosuch", "grpc-nosuch"), expect)


def test_a_grpc_service_naming_a_cluster_that_does_not_exist(pair):
    """The call fails as it starts: INTERNAL_FAILURE from proxy_grpc_call, and its close
    (UNAVAILABLE) comes when the VM call returns, before the request goes on."""
    def expect(obs):
        assert marks(obs) == {"x-call-status": ["10"], "x-close": ["14"],
                              "x-close-message": ["Cluster not available"]}, obs
    differential(pair, exchange("/unknown", "grpc-unknown-cluster"), expect)
