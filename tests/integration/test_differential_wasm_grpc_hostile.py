"""Differential: a Wasm plugin's unary gRPC callout (tests/fixtures/wasm/grpc.wat) answered by a
server that breaks the rules (wasm_grpc_hostile_server.py), through Envoy 1.40 and Baton: a
grpc-status that is not a number, three messages for a unary call, and the grpc-timeout
header of a timeout past 8 digits of milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from .differential.compare import differential
from .differential.proxies import ProxyPair
from .test_differential_wasm_grpc import (exchange, grpc_bootstrap, marks, mute,  # noqa: F401
                                          recorder, server_process)

SERVER = Path(__file__).with_name("wasm_grpc_hostile_server.py")


@pytest.fixture(scope="module")
def hostile():
    with server_process(SERVER) as port:
        yield port


@pytest.fixture(scope="module")
def pair(recorder, hostile, mute, tmp_path_factory):  # noqa: F811
    p = ProxyPair(tmp_path_factory.mktemp("diff-wasm-grpc-hostile"),
                  grpc_bootstrap(recorder.ports, hostile, mute), ["grpc"])
    yield p
    p.stop()


def test_a_grpc_status_that_is_not_a_number(pair):
    """grpc-status b"\\xb2" (latin-1 "²", which str.isdigit takes): Envoy's getGrpcStatus
    gives InvalidCode, -1 to proxy_on_grpc_close. Baton raised in the pool's data_received
    and lost the shared upstream connection."""
    def expect(obs):
        assert obs["status"] == 200, obs
        seen = marks(obs)
        assert "x-msg" not in seen and seen["x-close-message"] == ["via_upstream"], obs
    differential(pair, exchange("/e-b2", "hostile-b2"), expect)
    # the connection to the server lives on: a plain call after it is answered
    differential(pair, exchange("/e-after", "hostile-after"),
                 lambda obs: marks(obs) == {"x-msg": ["plain"]} or pytest.fail(str(obs)))


def test_a_unary_answer_of_three_messages_gives_the_last(pair):
    """Envoy's AsyncRequestImpl keeps the last message; Baton closed with 13 INTERNAL."""
    def expect(obs):
        assert marks(obs) == {"x-msg": ["m3"]}, obs
    differential(pair, exchange("/e-many", "hostile-many"), expect)


def test_the_grpc_timeout_of_a_long_timeout_moves_to_seconds(pair):
    """200,000,000 ms: gRPC allows 8 digits; Envoy's toGrpcTimeout writes 200000S."""
    def expect(obs):
        assert marks(obs) == {"x-msg": ["200000S"]}, obs
    differential(pair, exchange("/g-tmo", "hostile-timeout"), expect)


@pytest.mark.parametrize("path, text", [
    ("/m-meta", "invalid header value for: x-meta"),        # CR LF in the value
    ("/z-meta", "invalid header value for: x-meta"),        # NUL
    ("/k-meta", "invalid header name: x meta"),             # a space in the name
])
def test_metadata_that_is_not_valid_http_fails_the_call(pair, path, text):
    """Envoy's router refuses the call's headers: proxy_grpc_call INTERNAL_FAILURE, then a
    close 14 with its text; nothing reaches the server (Baton sent it as it was)."""
    def expect(obs):
        detail = "filter_removed_required_request_headers{" + text.replace(" ", "_") + "}"
        assert marks(obs) == {"x-call-status": ["10"], "x-close": ["14"],
                              "x-close-message": [f"{text}{{{detail}}}"]}, obs
    differential(pair, exchange(path, "hostile" + path), expect)
