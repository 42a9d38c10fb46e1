"""Differential: a proxy-wasm plugin's body callbacks (tests/fixtures/wasm/body.wat) through
Envoy 1.40 and Baton: a request body paused until its end and rewritten in place
(proxy_set_buffer_bytes over the whole body), prepended and appended to (chunked), the body
size each saw (x-body-seen), a response body paused and rewritten, an edit in the middle
refused (BAD_ARGUMENT), a request without a body (no body callback)."""

from __future__ import annotations

import base64
import hashlib

import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import Closed, curl, one
from .differential.compare import differential, header, observe
from .differential.proxies import module_pair
from .test_differential_wasm import FIXTURES, wasm_filter


def body_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "wasm", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    code = wasmtime.wat2wasm((FIXTURES / "body.wat").read_text())
    plugin = wasm_filter({"inline_bytes": base64.b64encode(code).decode()}, "", "")
    hold = wasmtime.wat2wasm((FIXTURES / "hold_response.wat").read_text())
    holding = wasm_filter({"inline_bytes": base64.b64encode(hold).decode()}, "", "")

    def template(ports: dict[str, int], admin: int) -> dict:
        small = http_listener("small", ports["small"], route_config, http_filters=[plugin])
        small["per_connection_buffer_limit_bytes"] = SMALL_LIMIT
        return bootstrap(admin, [http_listener("body", ports["body"], route_config,
                                               http_filters=[plugin]), small,
                                 http_listener("hold", ports["hold"], route_config,
                                               http_filters=[holding])],
                         [cluster("a", [upstreams["a"]])])
    return template


SMALL_LIMIT = 32768
recorder, pair = module_pair("diff-wasm-body", body_bootstrap, ["body", "small", "hold"])

TEXT = b"The quick brown fox jumps over the lazy dog. " * 70        # 3,150 bytes


def post(path: str, body: bytes, chunked: bool = False, headers=()):
    def run(target):
        return observe(one(target.ports["body"], "POST", path,
                           [("host", "diff.test"), *headers], body, chunked=chunked), target)
    return run


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_request_body_paused_until_its_end_then_rewritten(pair):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["upstream"]["body_sha256"] == sha(TEXT.upper()), obs
        assert header(obs, "x-body-seen") == str(len(TEXT)), obs
    differential(pair, post("/upper", TEXT), expect)


def test_chunked_request_body_rewritten(pair):
    def expect(obs):
        assert obs["upstream"]["framing"] == "chunked", obs
        assert obs["upstream"]["body_sha256"] == sha(TEXT.upper()), obs
        assert header(obs, "x-body-seen") == str(len(TEXT)), obs
    differential(pair, post("/upper", TEXT, chunked=True), expect)


def test_prepend_and_append_to_a_chunked_body(pair):
    def expect(obs):
        assert obs["upstream"]["body_sha256"] == sha(b"<<" + TEXT + b">>"), obs
        assert obs["upstream"]["body_length"] == len(TEXT) + 4, obs
    differential(pair, post("/wrap", TEXT, chunked=True), expect)


def test_an_edit_in_the_middle_is_refused(pair):
    def expect(obs):
        assert header(obs, "x-edit-status") == "2", obs        # BAD_ARGUMENT
        assert obs["upstream"]["body_sha256"] == sha(b"abcdef"), obs
    differential(pair, post("/bad-edit", b"abcdef"), expect)


def test_response_body_paused_until_its_end_then_rewritten(pair):
    size = 20000

    def expect(obs):
        assert obs["status"] == 200, obs
        pattern = (bytes(range(256)) * (size // 256 + 1))[:size]
        upper = bytes(c - 32 if 97 <= c <= 122 else c for c in pattern)
        assert obs["body"] == {"length": size, "sha256": sha(upper)}, obs
    differential(pair, post("/resp-upper", b"x", headers=[("x-test-body-size", str(size))]),
                 expect)


def test_a_request_without_a_body_calls_no_body_callback(pair):
    def run(target):
        return observe(one(target.ports["body"], "GET", "/upper", [("host", "diff.test")]),
                       target)

    def expect(obs):
        assert obs["status"] == 200 and header(obs, "x-body-seen") is None, obs
    differential(pair, run, expect)


def test_http2_request_body_rewritten(pair, tmp_path):
    data = tmp_path / "body"
    data.write_bytes(TEXT)

    def run(target):
        return observe(curl(target.ports["body"], "/upper", "--data-binary", f"@{data}",
                            "-H", "host: diff.test", http2=True), target)

    def expect(obs):
        assert obs["upstream"]["body_sha256"] == sha(TEXT.upper()), obs
        assert header(obs, "x-body-seen") == str(len(TEXT)), obs
    differential(pair, run, expect)


def test_a_local_reply_from_the_response_headers_replaces_the_response(pair):
    # Envoy's sendLocalReply while encoding, before the head went out: sendDirectLocalReply,
    # which bypasses the filters (the plugin is not called again for the reply).
    def run(target):
        return observe(one(target.ports["body"], "GET", "/reply", [("host", "diff.test")]),
                       target)

    def expect(obs):
        assert obs["status"] == 418 and obs["body"] == "replaced\n", obs
        assert header(obs, "x-edit-status") is None, obs
    differential(pair, run, expect)


def test_a_response_buffered_over_the_limit_is_reset_after_its_head(pair):
    # Envoy's responseDataTooLarge: rs_too_large, and (the head went out) a reset.
    def run(target):
        stat = "http.small.rs_too_large"
        before = target.stats(stat).get(stat, 0)
        try:
            resp = one(target.ports["small"], "POST", "/resp-upper", [
                ("host", "diff.test"), ("x-test-body-size", str(4 * SMALL_LIMIT))], b"x")
            outcome = {"status": resp.status, "length": len(resp.body)}
        except Closed:
            outcome = "closed"
        return {"outcome": outcome, "rs_too_large": target.stats(stat).get(stat, 0) - before}

    def expect(obs):
        assert obs == {"outcome": "closed", "rs_too_large": 1}, obs
    differential(pair, run, expect)


def test_a_request_body_paused_over_the_limit_is_413(pair):
    def run(target):
        stat = "http.small.downstream_rq_too_large"
        before = target.stats(stat).get(stat, 0)
        obs = observe(one(target.ports["small"], "POST", "/upper", [("host", "diff.test")],
                          b"y" * (2 * SMALL_LIMIT)), target)
        obs["downstream_rq_too_large"] = target.stats(stat).get(stat, 0) - before
        # (x-body-seen, the size the last callback saw before the limit, follows how each
        # proxy's reads cut the body: 65,472 bytes in Envoy, all 65,536 in Baton)
        obs["headers"] = [h for h in obs["headers"] if h[0] != "x-body-seen"]
        return obs

    def expect(obs):
        assert obs["status"] == 413 and obs["body"] == "Payload Too Large", obs
        assert obs["downstream_rq_too_large"] == 1, obs
    differential(pair, run, expect)


def test_a_pause_from_the_response_headers_holds_the_response_until_continued(pair):
    # hold_response.wat: the head waits for the plugin's next tick; the body behind it.
    def run(target):
        return observe(one(target.ports["hold"], "GET", "/hold",
                           [("host", "diff.test"), ("x-test-body-size", "5000")]), target)

    def expect(obs):
        assert obs["status"] == 200 and header(obs, "x-held") == "yes", obs
        assert obs["body"]["length"] == 5000, obs
    differential(pair, run, expect)


def test_a_local_reply_while_the_response_head_waits_replaces_it(pair):
    def run(target):
        return observe(one(target.ports["hold"], "GET", "/hold-reply",
                           [("host", "diff.test"), ("x-test-body-size", "5000")]), target)

    def expect(obs):
        assert obs["status"] == 503 and obs["body"] == "late", obs
    differential(pair, run, expect)


# Last in this module: the upstream connection is left with the 4 bytes past the length.
def test_a_grown_body_keeps_the_clients_content_length(pair):
    # Envoy fixes nothing: content-length stays as the client sent it and the upstream reads
    # that many bytes of the grown body (a plugin that changes a body's size removes
    # content-length in its request headers callback).
    def expect(obs):
        assert obs["upstream"]["framing"] == "content-length", obs
        assert obs["upstream"]["body_length"] == len(TEXT), obs
        assert obs["upstream"]["body_sha256"] == sha((b"<<" + TEXT + b">>")[:len(TEXT)]), obs
    differential(pair, post("/wrap", TEXT), expect)
