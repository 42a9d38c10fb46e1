"""worker/proxy/http/wasm.py with a fake stream: a plugin's StopIteration pauses the request
until proxy_continue_stream (resumed after the VM call, as ext_authz resumes), a local reply
becomes the filter's LocalReply, on_log ends the stream context, and a plugin that cannot
start fails closed (503) or open."""

from __future__ import annotations

import hashlib

import pytest

wasmtime = pytest.importorskip("wasmtime")

from baton.worker.codecs.message import Headers, Request  # noqa: E402
from baton.worker.proxy.http import wasm  # noqa: E402
from baton.worker.proxy.http.filter import PAUSE, LocalReply  # noqa: E402
from baton.worker.stats import Stats  # noqa: E402

# Every request stops (1); proxy_on_foreign_function(ctx) continues that context's stream
# (the test calls it: a stand-in for an answer arriving later, e.g. an http_call's).
PAUSING = """(module
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 2048))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_foreign_function") (param $ctx i32) (param i32) (param i32)
    (drop (call $effective (local.get $ctx))) (drop (call $continue (i32.const 0)))))"""


class Loop:
    def __init__(self):
        self.soon = []

    def call_soon(self, fn, *args):
        self.soon.append((fn, args))


class Stream:
    def __init__(self):
        self.loop = Loop()
        self.info = None
        self.resumed = []

    def resume_filters(self, result=None):
        self.resumed.append(result)


class Worker:
    node = {}
    loop = None
    clusters = {}


class Context:
    def __init__(self):
        self.worker = Worker()
        self.stats = Stats()
        self.loop = None


def factory(code: bytes, **extra) -> wasm.WasmFilterFactory:
    config = {"name": "t", "root_id": "", "vm_id": "unit-filter", "configuration": b"",
              "vm_config": b"", "code": code, "sha256": hashlib.sha256(code).hexdigest(),
              "environment": {}, "fail_open": False, **extra}
    return wasm.WasmFilterFactory(config, Context())


def test_stop_iteration_pauses_until_the_plugin_continues():
    f = factory(wasmtime.wat2wasm(PAUSING))
    stream = Stream()
    stream_filter = f.create(stream)
    assert stream_filter.on_request_headers(Request("GET", "/", "h", Headers([])), True) is PAUSE
    ctx = stream_filter.ctx
    vm = f.root.vm
    vm.call("proxy_on_foreign_function", ctx.id, 0, 0)
    assert stream.resumed == [] and len(stream.loop.soon) == 1      # after the VM call
    fn, args = stream.loop.soon[0]
    fn(*args)
    assert stream.resumed == [None]
    vm.call("proxy_on_foreign_function", ctx.id, 0, 0)                 # once only
    assert len(stream.loop.soon) == 1
    stream_filter.on_log()
    assert ctx.id not in f.root.host.contexts


def test_a_local_reply_becomes_the_filters_answer():
    from pathlib import Path
    deny = (Path(__file__).resolve().parent.parent / "fixtures" / "wasm" / "deny.wat").read_text()
    f = factory(wasmtime.wat2wasm(deny), root_id="x")
    reply = f.create(Stream()).on_request_headers(Request("GET", "/deny", "h", Headers([])), True)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.headers, reply.details) == (403, b"denied\n", [],
                                                                        "wasm_denied")


def test_a_plugin_that_cannot_start_fails_closed_or_open():
    broken = wasmtime.wat2wasm('(module (memory (export "memory") 1))')     # no ABI marker
    closed = factory(broken)
    reply = closed.create(Stream()).on_request_headers(Request("GET", "/", "h", Headers([])), True)
    assert (reply.status, reply.body, reply.details) == (503, b"", "wasm_fail_stream")
    assert factory(broken, fail_open=True).create(Stream()) is None


def test_a_plugin_no_config_uses_is_freed_with_its_vm():
    """Roots and VMs are kept weakly: once the filter factories that use a plugin are gone
    (a new version of a WasmPlugin replaced it), its VM goes, and with it the epoch thread
    when it was the last."""
    import gc
    import weakref

    from baton.worker.wasm import plugin, vm
    f = factory(wasmtime.wat2wasm(PAUSING), vm_id="unit-freed")
    gc.collect()                                # other tests' garbage VMs go first
    machine = weakref.ref(f.root.vm)
    runtime = vm.runtime()
    users = runtime._users
    assert any(key[0][0] == "unit-freed" for key in plugin._roots.keys())
    del f
    gc.collect()
    assert machine() is None
    assert not any(key[0][0] == "unit-freed" for key in plugin._roots.keys())
    assert runtime._users == users - 1


def test_plugins_sharing_a_vm_each_answer_their_own_callouts(monkeypatch):
    """Two plugins in one VM (same vm_id and code, other names): each root's proxy_http_call
    goes to its own plugin, and still does once the other plugin is freed. One caller per VM
    sent every callout to the newest plugin, and answered INTERNAL_FAILURE once it was gone."""
    import gc

    from baton.worker.wasm import abi, plugin
    from baton.worker.wasm.maps import serialize_pairs

    class Worker:
        node, loop, clusters = {}, None, {"c": object()}
    seen = []
    monkeypatch.setattr(plugin.PluginRoot, "http_call", lambda self, root, *rest: (
        seen.append((self.plugin.name, root.id)), (abi.OK, 7))[1])
    code = wasmtime.wat2wasm(PAUSING)

    def config(name):
        return {"name": name, "root_id": "", "vm_id": "unit-shared", "configuration": b"x",
                "vm_config": b"", "code": code, "sha256": hashlib.sha256(code).hexdigest(),
                "environment": {}, "fail_open": False}
    a = plugin.plugin_root(config("A"), None, {}, Worker())
    b = plugin.plugin_root(config("B"), None, {}, Worker())
    assert a.vm is b.vm
    request = serialize_pairs([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x")])
    for root in (a.root, b.root):
        a.host.current = root
        assert a.host.http_call(b"c", request, b"", serialize_pairs([]), 0) == (abi.OK, 7)
    assert seen == [("A", a.root.id), ("B", b.root.id)]
    del b
    gc.collect()
    a.host.current = a.root
    assert a.host.http_call(b"c", request, b"", serialize_pairs([]), 0) == (abi.OK, 7)
    assert seen[-1] == ("A", a.root.id)


def test_a_callout_our_side_fails_to_start_is_a_failure_not_a_trap(monkeypatch):
    """An exception in the host while it starts a callout (a fault of Baton's) answers
    INTERNAL_FAILURE: raised through the hostcall it trapped the guest, whose VM then failed
    for good (a callout to an ORIGINAL_DST cluster did, before cluster.pick learned it)."""
    from baton.worker.proxy.http import upstream_call
    from baton.worker.wasm import abi, plugin
    from baton.worker.wasm.maps import serialize_pairs

    class Worker:
        node, loop, clusters = {}, None, {"c": object()}

    def broken(self, *args):
        raise AttributeError("a bug")
    monkeypatch.setattr(upstream_call.UpstreamCall, "start", broken)
    code = wasmtime.wat2wasm(PAUSING)
    config = {"name": "C", "root_id": "", "vm_id": "unit-broken-call", "configuration": b"x",
              "vm_config": b"", "code": code, "sha256": hashlib.sha256(code).hexdigest(),
              "environment": {}, "fail_open": False}
    root = plugin.plugin_root(config, None, {}, Worker())
    root.host.current = root.root
    request = serialize_pairs([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x")])
    assert root.host.http_call(b"c", request, b"", serialize_pairs([]), 0) == \
        (abi.INTERNAL_FAILURE, 0)
    assert not root.calls and not root.vm.failed
