"""Remote Wasm code (worker/wasm/remote.py, xds/http_filters_wasm.py) without a network:
the tries and back-off, the hash check, the cache by sha256, the translation's answers
(fetched, failed: the plugin fails; nack_on_code_cache_miss: NACK and a background fill;
bad fields by path)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import wasmtime

from baton.worker.wasm import cache, remote
from baton.xds import protos
from baton.xds.http_filters_wasm import TYPE, translate_wasm

from ..waiting import wait_until

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "wasm")
DENY = wasmtime.wat2wasm(open(os.path.join(FIXTURES, "deny.wat")).read())
SHA = hashlib.sha256(DENY).hexdigest()


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """A cache directory of the test's own and no code fetched before."""
    before = os.environ.pop(cache.ENV, None)
    os.environ[cache.ENV] = str(tmp_path / "cache")
    monkeypatch.setattr(remote, "_fetched", {})
    monkeypatch.setattr(remote, "_failed", {})
    yield
    os.environ.pop(cache.ENV, None)
    if before is not None:
        os.environ[cache.ENV] = before


def answers(monkeypatch, *results):
    """Remote.try_once answers these in turn; -> the URIs tried."""
    tried, results = [], list(results)

    def try_once(self, end=None):
        tried.append(self.uri)
        return results.pop(0)
    monkeypatch.setattr(remote.Remote, "try_once", try_once)
    return tried


def test_a_failed_try_is_retried_after_a_jittered_back_off(monkeypatch):
    tried = answers(monkeypatch, (None, "HTTP 500"), (None, "refused"), (DENY, ""))
    slept = []
    r = remote.Remote("http://m/x", SHA, 1.0, retries=2, base=0.5, ceiling=0.8)
    assert r.get(sleep=slept.append) == (DENY, "")
    assert len(tried) == 3 and 0 <= slept[0] < 0.5 and 0 <= slept[1] < 0.8
    # kept by its hash, in this process and on disk: no fetch the next time
    assert r.get(sleep=slept.append) == (DENY, "") and len(tried) == 3
    monkeypatch.setattr(remote, "_fetched", {})
    assert remote.cached(SHA) == DENY


def test_every_try_failing_says_why_the_last_did(monkeypatch):
    tried = answers(monkeypatch, (None, "HTTP 404"), (None, "sha256 mismatch"))
    assert remote.Remote("http://m/x", SHA, 1.0).get(sleep=lambda s: None) == \
        (None, "sha256 mismatch")
    assert len(tried) == 2                  # Envoy's default: one retry


def test_a_hash_whose_fetch_failed_is_not_fetched_again_for_10_s(monkeypatch):
    tried = answers(monkeypatch, (None, "refused"), (None, "refused"), (DENY, ""))
    r = remote.Remote("http://m/x", SHA, 1.0, retries=1)
    assert r.get(sleep=lambda s: None) == (None, "refused") and len(tried) == 2
    assert r.get(sleep=lambda s: None) == (None, "refused") and len(tried) == 2
    when, why = remote._failed[SHA]
    remote._failed[SHA] = (when - remote.NEGATIVE_SECONDS, why)      # 10 s later
    assert r.get(sleep=lambda s: None) == (DENY, "") and len(tried) == 3
    assert SHA not in remote._failed


def test_a_cached_file_that_does_not_hash_right_is_not_used(tmp_path):
    disk = cache.default("")
    disk.store_bytes(f"{SHA}.wasm", b"not the module")
    assert remote.cached(SHA) is None


def wasm_pb(**vm):
    protos.import_type(TYPE)
    message = protos.message_class(TYPE)()
    protos.json_format.ParseDict({"config": {"name": "r", "root_id": "x", "vm_config": {
        "runtime": "envoy.wasm.runtime.v8", **vm}}}, message)
    return message


def code(sha256=SHA, **remote_fields):
    return {"code": {"remote": {"http_uri": {"uri": "http://m/deny.wasm", "cluster": "c",
                                             "timeout": "1s"},
                                "sha256": sha256, **remote_fields}}}


def test_translation_fetches_and_checks_the_module(monkeypatch):
    answers(monkeypatch, (DENY, ""))
    errors, warnings = [], []
    name, config = translate_wasm(wasm_pb(**code()), "f", errors, warnings)
    assert errors == [] and config["code"] == DENY and config["sha256"] == SHA
    assert config["failed"] == ""


def test_a_module_not_fetched_makes_a_plugin_that_fails(monkeypatch):
    answers(monkeypatch, (None, "refused"), (None, "refused"))
    monkeypatch.setattr("time.sleep", lambda s: None)
    errors, warnings = [], []
    name, config = translate_wasm(wasm_pb(**code()), "f", errors, warnings)
    assert errors == [] and config["code"] is None
    assert config["failed"] == "remote code from http://m/deny.wasm could not be fetched: refused"
    assert warnings == ["f: " + config["failed"]]
    from baton.worker.wasm.plugin import plugin_root
    from baton.worker.wasm.vm import WasmError
    with pytest.raises(WasmError, match="could not be fetched"):
        plugin_root(config, None, {})


def test_nack_on_code_cache_miss_nacks_and_fills_the_cache(monkeypatch):
    started = []
    monkeypatch.setattr(remote, "fetch_in_background", started.append)
    errors = []
    assert translate_wasm(wasm_pb(nack_on_code_cache_miss=True, **code()), "f", errors,
                          []) == (None, None)
    assert errors == ["f: Unable to create Wasm plugin r: its remote code is not fetched yet "
                      "(http://m/deny.wasm)"]
    assert [r.sha256 for r in started] == [SHA]
    remote.keep(SHA, DENY)                  # what the background fetch does
    errors = []
    name, config = translate_wasm(wasm_pb(nack_on_code_cache_miss=True, **code()), "f",
                                  errors, [])
    assert errors == [] and config["code"] == DENY


def test_the_background_fill_fetches_once_per_hash(monkeypatch):
    """Fills asked for while one of the same hash is in flight start no fetch of their own."""
    release, tried = threading.Event(), []

    def try_once(self, end=None):
        tried.append(self.uri)
        release.wait(5)                     # in flight until the other fills were asked for
        return DENY, ""
    monkeypatch.setattr(remote.Remote, "try_once", try_once)
    r = remote.Remote("http://m/x", SHA, 1.0)
    remote.fetch_in_background(r)
    wait_until(lambda: tried, 5, "the background fetch's try")
    remote.fetch_in_background(r)
    remote.fetch_in_background(remote.Remote("http://m/y", SHA, 1.0))
    release.set()
    wait_until(lambda: SHA not in remote._in_flight, 5, "the background fetch's end")
    assert tried == ["http://m/x"] and remote.cached(SHA) == DENY


@pytest.mark.parametrize("fields, error", [
    ({"code": {"remote": {"sha256": SHA}}},
     "f.config.vm_config.code.remote.http_uri.uri: required"),
    (code(sha256="abc"), "f.config.vm_config.code.remote.sha256: 64 hex digits expected"),
])
def test_bad_remote_fields_are_refused_by_path(fields, error):
    errors = []
    assert translate_wasm(wasm_pb(**fields), "f", errors, []) == (None, None)
    assert error in errors, errors


def test_one_try_takes_a_200_of_the_right_hash_and_follows_no_redirect():
    import http.server
    import threading

    class Modules(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("location", "/deny.wasm")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path != "/deny.wasm":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-length", str(len(DENY)))
            self.end_headers()
            self.wfile.write(DENY)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Modules)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Through the cluster: the URI's host is never dialled (Envoy's RemoteDataFetcher).
    base = "http://modules.invalid:1"
    cluster = remote.Upstream("modules", [("127.0.0.1", server.server_address[1])], None)
    try:
        assert remote.Remote(base + "/deny.wasm", SHA, 5, upstream=cluster).try_once() == \
            (DENY, "")
        assert remote.Remote(base + "/moved", SHA, 5, upstream=cluster).try_once() == \
            (None, "HTTP 302")
        assert remote.Remote(base + "/gone", SHA, 5, upstream=cluster).try_once() == \
            (None, "HTTP 404")
        assert remote.Remote(base + "/deny.wasm", "0" * 64, 5, upstream=cluster).try_once() \
            == (None, "sha256 mismatch")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
