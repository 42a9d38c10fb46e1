"""The Wasm filter's body and trailer callbacks without sockets: buffers.replace (Envoy's
Buffer::copyFrom edits), the ABI's body buffers, and body.wat run by the body chain
(body_filters.py, on test_body_filters' stand-in stream): a body paused to its end and
rewritten, a trailer added at the end of a body, the filter class chosen by what the module
exports, and a Pause from the headers holding the body before the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")

from baton.worker.codecs.message import Headers, Request  # noqa: E402
from baton.worker.proxy.http import wasm  # noqa: E402
from baton.worker.wasm import abi, buffers  # noqa: E402

from .test_body_filters import Log, Stream  # noqa: E402
from .test_wasm_filter import Loop, factory  # noqa: E402

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"


def test_replace_keeps_to_envoys_three_edits():
    b = bytearray(b"hello")
    assert buffers.replace(b, 0, 0, b">") and b == b">hello"        # prepend
    assert buffers.replace(b, 0, 3, b"J") and b == b"Jllo"          # the start replaced
    assert buffers.replace(b, 4, 0, b"!") and b == b"Jllo!"         # append at the end
    assert buffers.replace(b, 99, 0, b"?") and b == b"Jllo!?"       # past it: append
    assert not buffers.replace(b, 2, 1, b"x") and b == b"Jllo!?"    # the middle: refused
    assert buffers.replace(b, 0, 100, b"all") and b == b"all"       # more than there is


def test_the_abi_sees_a_body_only_in_its_callback_or_while_buffered():
    host = abi.AbiHost(vm_id="t")
    ctx = host.current = host.new_context(abi.Plugin("p", "", "t", b""), None, object(),
                                          Request("GET", "/", "h", Headers([])))
    assert host.get_buffer(abi.REQUEST_BODY) == (abi.NOT_FOUND, b"")
    assert host.set_buffer(abi.REQUEST_BODY, 0, 0, b"x") == abi.NOT_FOUND
    bodies = ctx.bodies = buffers.Bodies()
    data = bytearray(b"abc")
    bodies.enter(abi.REQUEST_BODY, data, False)
    assert host.get_buffer(abi.REQUEST_BODY) == (abi.OK, b"abc")
    assert host.set_buffer(abi.REQUEST_BODY, 3, 0, b"d") == abi.OK and data == b"abcd"
    assert host.set_buffer(abi.REQUEST_BODY, 1, 1, b"d") == abi.BAD_ARGUMENT
    bodies.leave(abi.REQUEST_BODY, buffered=True)
    assert host.get_buffer(abi.REQUEST_BODY) == (abi.OK, b"abcd")      # paused: kept
    bodies.leave(abi.REQUEST_BODY, buffered=False)
    assert host.get_buffer(abi.REQUEST_BODY) == (abi.NOT_FOUND, b"")


def body_stream(f, path, *after):
    """A stand-in stream whose chain is the plugin's filter, then `after` filters."""
    stream = Stream([lambda s: f.create(s), *after])
    stream.loop = Loop()
    request = Request("POST", path, "h", Headers([]))
    stream.request = request
    first = stream.filters[0]
    assert first.on_request_headers(request, False) is None
    stream.filter_index = 1
    stream._continue_filters()          # the rest of the header loop, then the router
    return stream


@pytest.fixture(scope="module")
def plugin():
    return factory(wasmtime.wat2wasm((FIXTURES_DIR / "body.wat").read_text()))


def test_the_filter_class_follows_the_modules_exports(plugin):
    assert isinstance(plugin.create(Stream([])), wasm._BodyFilter)
    assert wasm.WasmStreamFilter.pause_holds_body
    assert not wasm.WasmStreamFilter.body_hooks


def test_a_body_paused_to_its_end_and_rewritten(plugin):
    stream = body_stream(plugin, "/upper", Log)
    chain = stream.body_chain
    chain.request_data(b"abc", False)
    assert stream.filters[1].seen == []
    chain.request_data(b"def", True)
    assert stream.filters[1].seen == [(b"ABCDEF", True)]


def test_a_trailer_added_at_the_end_of_the_body(plugin):
    stream = body_stream(plugin, "/trailer", Log)
    stream.body_chain.request_data(b"abc", True)
    assert stream.filters[1].seen == [(b"abc", False),
                                      ("trailers", {"x-wasm-trailer": "added"})]


def test_a_body_status_past_the_abis_is_stop_iteration_no_buffer():
    # proxy-wasm cpp-host's convertVmCallResultToFilterDataStatus: a result past 3
    # (StopIterationNoBuffer) is StopIterationNoBuffer: the chunk is not buffered (Baton
    # took it for StopIterationAndBuffer: a 413 past the limit).
    wat = """(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 7)))"""
    stream = body_stream(factory(wasmtime.wat2wasm(wat)), "/x", Log)
    stream.buffer_limit = 4
    stream.body_chain.request_data(b"123456", False)
    assert not stream.replies and stream.filters[1].seen == []
    assert stream.body_chain.request_buffer == b""
