"""worker/wasm/foreign.py, the foreign functions Envoy registers, without wasm."""

from __future__ import annotations

import zlib

from baton.worker.stats import Stats
from baton.worker.wasm import abi, foreign


def host_and_stream():
    h = abi.AbiHost(vm_id="f", stats=Stats())
    plugin = abi.Plugin("p", "", "f", b"")
    root = h.current = h.new_context(plugin)
    return h, root, h.new_context(plugin, root, object(), None)


def test_compress_and_uncompress_are_zlibs():
    h, _, _ = host_and_stream()
    status, packed = h.call_foreign_function(b"compress", b"abc" * 100)
    assert status == abi.OK and packed == zlib.compress(b"abc" * 100)
    assert h.call_foreign_function(b"uncompress", packed) == (abi.OK, b"abc" * 100)
    for bad in (b"", b"nope", packed[:-3]):           # not zlib, or truncated
        assert h.call_foreign_function(b"uncompress", bad) == (abi.SERIALIZATION_FAILURE, b"")


def test_uncompress_is_bounded(monkeypatch):
    monkeypatch.setattr(foreign, "MAX_RESULT", 1000)
    h, _, _ = host_and_stream()
    assert h.call_foreign_function(b"uncompress", zlib.compress(b"\0" * 1001)) == \
        (abi.SERIALIZATION_FAILURE, b"")
    assert h.call_foreign_function(b"uncompress", zlib.compress(b"\0" * 1000))[0] == abi.OK


def test_unknown_names_are_not_found_and_envoys_others_unimplemented():
    h, _, _ = host_and_stream()
    assert h.call_foreign_function(b"nope", b"") == (abi.NOT_FOUND, b"")
    for name in (b"sign", b"verify_signature", b"expr_create"):     # (clear_route_cache:
        #                                                             test_route_again.py)
        assert h.call_foreign_function(name, b"")[0] == abi.UNIMPLEMENTED


def test_a_readonly_declared_property_is_set_once_per_stream():
    h, root, stream = host_and_stream()
    declare = b"\x0a\x02ro\x10\x01"                   # {name: "ro", readonly: true}
    assert h.call_foreign_function(b"declare_property", declare) == (abi.OK, b"")
    assert h.call_foreign_function(b"declare_property", declare)[0] == abi.BAD_ARGUMENT
    assert h.call_foreign_function(b"declare_property", b"\x0a\x05ro")[0] == abi.BAD_ARGUMENT
    h.current = stream
    assert h.set_property(b"ro", b"a") == abi.OK
    assert h.set_property(b"ro", b"b") == abi.BAD_ARGUMENT
    assert h.get_property(b"ro") == (abi.OK, b"a")
    assert h.set_property(b"rw", b"a") == abi.OK and h.set_property(b"rw", b"b") == abi.OK


def test_set_envoy_filter_state_knows_no_key():
    h, _, stream = host_and_stream()
    h.current = stream
    assert h.call_foreign_function(b"set_envoy_filter_state", b"\x0a\x04nope\x12\x01x")[0] == \
        abi.NOT_FOUND
    assert h.call_foreign_function(b"set_envoy_filter_state", b"\x0a\x09")[0] == abi.BAD_ARGUMENT


def test_the_wire_reader_takes_every_wire_type_and_refuses_garbage():
    assert foreign.wire_fields(b"\x08\x96\x01\x12\x01x\x1d\0\0\0\0\x21" + b"\0" * 8) == \
        {1: 150, 2: b"x", 3: b"\0" * 4, 4: b"\0" * 8}
    for bad in (b"\x08", b"\x12\x05x", b"\x0b", b"\x00\x00", b"\x08" + b"\xff" * 11):
        assert foreign.wire_fields(bad) is None, bad


def test_a_streams_declared_properties_go_with_the_stream():
    """declare_property from a stream context is kept under the stream's id; its end frees
    it (host.declared grew by one entry a request for the VM's life: 32 MiB in 100,000)."""
    import pytest
    pytest.importorskip("wasmtime")
    from baton.worker.codecs.message import Headers, Request
    from .test_wasm_vm import config, module
    from baton.worker.wasm import plugin
    code = module("""
      (drop (call $foreign (i32.const 16) (i32.const 16) (i32.const 32) (i32.const 6)
                           (i32.const 64) (i32.const 68)))
      (i32.const 0)""", imports="""
      (import "env" "proxy_call_foreign_function"
        (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
      (data (i32.const 16) "declare_property")
      (data (i32.const 32) "\\0a\\02ro\\10\\01")""")
    cfg = config(code)
    root = plugin.PluginRoot(plugin._new_vm(cfg, Stats(), {}), plugin._plugin(cfg), True)
    for _ in range(3):
        ctx = root.new_stream(None, Request("GET", "/", "h", Headers([])))
        assert root.request_headers(ctx, True) == 0
        assert root.host.declared[ctx.id] == {b"ro": True}
        root.end_stream(ctx)
        assert ctx.id not in root.host.declared


def test_uncompress_gives_at_most_16_mib():
    h, _, _ = host_and_stream()
    assert foreign.MAX_RESULT == 16 << 20
    assert h.call_foreign_function(b"uncompress", zlib.compress(b"\0" * (17 << 20))) == \
        (abi.SERIALIZATION_FAILURE, b"")


def test_a_guest_looping_on_uncompress_meets_its_deadline(monkeypatch):
    """The time a foreign function takes is the guest's: vm.py gave it back (a hostcall's
    time is the host's), so a loop over a zlib bomb ran past the deadline without end."""
    import time
    import pytest
    pytest.importorskip("wasmtime")
    from baton.worker.wasm import plugin, vm
    from baton.worker.wasm.vm import Trapped
    from .test_wasm_vm import config, module
    monkeypatch.setattr(vm, "DEADLINE_TICKS", 2)             # 0.5 s
    bomb = zlib.compress(b"\0" * (16 << 20), 9)              # 16 KiB, 16 MiB inflated
    escaped = "".join(f"\\{b:02x}" for b in bomb)
    code = module("""
      (local $i i32)
      (loop $again                                           ;; 100 calls: 30 s unstopped
        (drop (call $foreign (i32.const 16) (i32.const 10) (i32.const 4096)
                             (i32.const %d) (i32.const 32) (i32.const 36)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $again (i32.lt_u (local.get $i) (i32.const 100))))
      (i32.const 0)""" % len(bomb), imports="""
      (import "env" "proxy_call_foreign_function"
        (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
      (data (i32.const 16) "uncompress")
      (data (i32.const 4096) "%s")""" % escaped,
                  alloc="proxy_on_memory_allocate_unused", extra="""
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $need i32)
        (local.set $need (i32.sub (i32.shr_u (i32.add (local.get $n) (i32.const 0x10FFFF))
                                             (i32.const 16)) (memory.size)))
        (if (i32.gt_s (local.get $need) (i32.const 0))
          (then (drop (memory.grow (local.get $need)))))
        (i32.const 0x100000))""")
    cfg = config(code)
    machine = plugin._new_vm(cfg, Stats(), {})
    start = time.monotonic()
    with pytest.raises(Trapped):
        machine.call("proxy_on_request_headers", 1, 0, 1)
    assert time.monotonic() - start < 3, time.monotonic() - start


class _Clock:
    """What charged needs of a VM, its public methods only (no _ticks, no _deadline)."""

    def __init__(self, deadline: int):
        self.now, self.deadline = 0, deadline

    def tick(self) -> int:
        return self.now

    def charge_since(self, entered: int) -> bool:
        if self.now >= self.deadline:
            return False
        self.deadline -= self.now - entered
        return True


def test_charged_uses_the_vms_public_clock():
    import pytest
    clock = _Clock(deadline=4)

    def takes(ticks):
        clock.now += ticks
        return ticks
    assert foreign.charged(clock, takes, 1) == 1 and clock.deadline == 3
    with pytest.raises(foreign.PastDeadline):
        foreign.charged(clock, takes, 2)
