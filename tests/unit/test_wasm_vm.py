"""worker/wasm/vm.py and plugin.py on WAT modules (text here and in tests/fixtures/wasm/;
wasmtime compiles it, no toolchain): the calls through wasmtime's unchecked C API (the
private _bindings the pinned major version is for), bounds-checked guest memory, Envoy's
imports linked (those not implemented UNIMPLEMENTED / ENOSYS) and any other refused, traps
failing the VM, the epoch deadline stopping a spinning guest (guest time only), the ABI
marker, start failures and their cleanup, what a hostcall may make the host allocate."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")

from baton.worker.codecs.message import Headers, Request, Response  # noqa: E402
from baton.worker.stats import Stats  # noqa: E402
from baton.worker.wasm import abi, plugin  # noqa: E402
from baton.worker.wasm.vm import Trapped, WasmError  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"


def config(code: bytes, root_id="", configuration=b"", environment=None, vm_id=None) -> dict:
    return {"name": "t", "root_id": root_id, "vm_id": vm_id or hashlib.sha256(code).hexdigest()[:8],
            "configuration": configuration, "vm_config": b"", "code": code,
            "sha256": hashlib.sha256(code).hexdigest(), "environment": environment or {},
            "fail_open": False}


def module(body: str, imports: str = "", marker: str = "proxy_abi_version_0_2_1",
           configure: str = "(i32.const 1)", extra: str = "",
           alloc: str = "proxy_on_memory_allocate") -> bytes:
    """A plugin whose proxy_on_request_headers runs `body` (it returns an i32)."""
    return wasmtime.wat2wasm(f"""(module
      {imports}
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 1024))
      (func (export "{marker}"))
      (func (export "{alloc}") (param $n i32) (result i32) (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) {configure})
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {body})
      {extra})""")


def run_request(cfg, request=None):
    """(the action, the context) of one request through a fresh VM's plugin."""
    root = plugin.PluginRoot(plugin._new_vm(cfg, Stats(), {}), plugin._plugin(cfg), True)
    ctx = root.new_stream(None, request or Request("GET", "/hello", "h", Headers([])))
    return root.request_headers(ctx, True), ctx, root


def test_the_raw_abi_plugin_allows_and_denies():
    code = wasmtime.wat2wasm((FIXTURES / "deny.wat").read_text())
    cfg = config(code, root_id="x")
    plugin.validate(cfg)
    action, ctx, root = run_request(cfg)
    assert action == 0 and ctx.local_reply is None
    response = Response(200, Headers([]))
    root.response_headers(ctx, response, True)
    assert response.headers.items == [("x-wasm", "hello")]
    root.end_stream(ctx)
    assert ctx.id not in root.host.contexts
    action, ctx, _ = run_request(cfg, Request("GET", "/deny/1", "h", Headers([])))
    assert action == 1 and ctx.local_reply == (403, "wasm_denied", b"denied\n", [], None)


def test_a_pointer_outside_memory_is_an_invalid_memory_access():
    code = module("(call $log (i32.const 2) (i32.const 65530) (i32.const 100))",
                  '(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))')
    assert run_request(config(code))[0] == abi.INVALID_MEMORY_ACCESS


def test_envoys_other_imports_are_linked_and_answer_unimplemented():
    code = module("""(drop (call $fd_close (i32.const 3)))
                     (i32.add (call $pthread_equal (i32.const 1) (i32.const 1))
                              (call $fd_close (i32.const 3)))""",
                  """(import "env" "pthread_equal" (func $pthread_equal (param i32 i32) (result i32)))
                     (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))""")
    action, _, root = run_request(config(code))
    assert action == abi.UNIMPLEMENTED + 52           # UNIMPLEMENTED, and WASI's ENOSYS
    assert root.host.unimplemented == {"pthread_equal": 1, "wasi_snapshot_preview1.fd_close": 2}


def test_the_allocator_may_grow_memory_during_a_hostcall():
    # The allocator grows memory by a page for every allocation: the host must read the
    # memory's base again after it (the header value lands in the new page).
    code = module("""(drop (call $get (i32.const 0) (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 104)))
                     (i32.load8_u (i32.load (i32.const 100)))""",
                  '(import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))',
                  extra="""(data (i32.const 0) ":path")
                           (func (export "malloc") (param i32) (result i32)
                             (i32.mul (memory.grow (i32.const 1)) (i32.const 65536)))""",
                  alloc="unused_allocator")
    action, ctx, root = run_request(config(code))
    assert action == ord("/")


def test_a_trap_fails_the_vm_and_proc_exit_is_a_trap():
    cfg = config(module("unreachable"))
    root = plugin.PluginRoot(plugin._new_vm(cfg, Stats(), {}), plugin._plugin(cfg), True)
    ctx = root.new_stream(None, Request("GET", "/", "h", Headers([])))
    with pytest.raises(Trapped, match="proxy_on_request_headers"):
        root.request_headers(ctx, True)
    assert root.failed
    with pytest.raises(Trapped):
        root.new_stream(None, Request("GET", "/", "h", Headers([])))
    exiting = module("(call $exit (i32.const 3)) (i32.const 0)",
                     '(import "wasi_unstable" "proc_exit" (func $exit (param i32)))')
    with pytest.raises(Trapped, match="proc_exit"):
        run_request(config(exiting))


def test_the_epoch_deadline_stops_a_spinning_guest(monkeypatch):
    from baton.worker.wasm import vm
    monkeypatch.setattr(vm, "DEADLINE_TICKS", 1)      # 0-0.25 s instead of 1.75-2 s
    code = module("(loop $spin (br $spin)) (i32.const 0)")
    started = time.monotonic()
    with pytest.raises(Trapped, match="interrupt"):
        run_request(config(code))
    assert time.monotonic() - started < 1.0


def test_the_abi_marker_and_starts_are_checked():
    with pytest.raises(WasmError, match="no proxy_abi_version"):
        plugin.validate(config(module("(i32.const 0)", marker="something_else")))
    with pytest.raises(WasmError, match="ABI version 0_1_0 not supported"):
        plugin.validate(config(module("(i32.const 0)", marker="proxy_abi_version_0_1_0")))
    with pytest.raises(WasmError, match="proxy_on_configure failed"):
        plugin.validate(config(module("(i32.const 0)", configure="(i32.const 0)")))
    with pytest.raises(WasmError, match="proxy_on_configure.*unreachable|unreachable"):
        plugin.validate(config(module("(i32.const 0)", configure="unreachable")))
    with pytest.raises(WasmError, match="cannot compile"):
        plugin.validate(config(b"\0asm\1\0\0\0junk"))
    memory_import = wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)))')
    with pytest.raises(WasmError, match="env.memory is not a function"):
        plugin.validate(config(memory_import))


def test_wasi_environ_serves_the_vm_environment():
    # environ_sizes_get, then environ_get; the result: the first byte of the first entry.
    code = module("""(drop (call $sizes (i32.const 200) (i32.const 204)))
                     (drop (call $get (i32.const 300) (i32.const 400)))
                     (i32.add (i32.mul (i32.load (i32.const 200)) (i32.const 1000))
                              (i32.load8_u (i32.load (i32.const 300))))""",
                  """(import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
                     (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))""")
    action, _, _ = run_request(config(code, environment={"K": "v", "HOSTNAME": "h"}))
    assert action == 2 * 1000 + ord("K")



def test_wasmtime_is_preloaded_only_where_another_user_could_not_import_it(tmp_path):
    """A master whose workers become another user loads wasmtime before they fork only if
    that user could not read it later (a Python under a 0700 home)."""
    from baton.worker.wasm import vm
    public = tmp_path / "public"
    public.mkdir()
    module = public / "m.py"
    module.write_text("")
    tmp_path.chmod(0o755)
    public.chmod(0o755)
    module.chmod(0o644)
    opened = vm._open_to_others(str(module)) and all(
        os.stat(p).st_mode & 0o001 for p in map(str, tmp_path.parents))
    assert vm._open_to_others(str(module)) == opened
    public.chmod(0o700)
    assert not vm._open_to_others(str(module))
    public.chmod(0o755)
    module.chmod(0o600)
    assert not vm._open_to_others(str(module))


WASI = "wasi_snapshot_preview1"


def test_random_get_checks_bounds_before_it_makes_the_bytes(monkeypatch):
    # A one-page guest asked 64 MiB: the host made them (+75 MB) before the bounds check.
    from baton.worker.wasm import hostcalls
    made = []
    monkeypatch.setattr(hostcalls.os, "urandom", lambda n: made.append(n) or bytes(n))
    code = module("(i32.add (i32.mul (call $random (i32.const 0) (i32.const 0x4000000)) (i32.const 100))"
                  "         (call $random (i32.const 16) (i32.const 8)))",
                  f'(import "{WASI}" "random_get" (func $random (param i32 i32) (result i32)))')
    action, _, _ = run_request(config(code))
    assert action == hostcalls.EFAULT * 100 + 0        # WASI's EFAULT (21), not proxy-wasm's 6
    assert made == [8]


def fd_write_module(count: int) -> bytes:
    """fd_write(stdout) of `count` iovecs that each name the whole 64 KiB page (written at
    1000, the iovecs from 2048); answers errno * 1,000,000 + bytes written."""
    return module(f"""(local $i i32)
        (block $done (loop $fill
          (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
          (i32.store (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
          (i32.store (i32.add (i32.const 2052) (i32.mul (local.get $i) (i32.const 8))) (i32.const 65536))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $fill)))
        (i32.add (i32.mul (call $write (i32.const 1) (i32.const 2048) (i32.const {count}) (i32.const 1000))
                          (i32.const 1000000))
                 (i32.load (i32.const 1000)))""",
                  f'(import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))')


def test_fd_write_takes_at_most_the_memory_and_logs_it_in_pieces(caplog):
    # 4,000 iovecs over one page were joined into a 256 MB log line (+446 MB).
    from baton.worker.wasm import hostcalls
    with caplog.at_level("INFO", logger="baton.wasm"):
        action, _, _ = run_request(config(fd_write_module(1000)))
    assert action == 65536                              # errno 0, a short write of one page
    lines = [r for r in caplog.records if "wasm log" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0].getMessage()) < 65536 + 200
    action, _, _ = run_request(config(fd_write_module(4000)))
    assert action == hostcalls.EINVAL * 1000000         # past IOV_MAX, as writev
    outside = module("(call $write (i32.const 1) (i32.const 65530) (i32.const 1) (i32.const 1000))",
                     f'(import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))')
    assert run_request(config(outside))[0] == hostcalls.EFAULT


def test_tables_are_capped_with_the_memory():
    # table.grow of 50M elements took 400 MB of host memory: set_limits capped memory only.
    from baton.worker.wasm import vm
    code = module("(table.grow $t (ref.null func) (i32.const 50000000))",
                  extra="(table $t 1 funcref)")
    assert run_request(config(code))[0] == 0xFFFFFFFF   # -1: refused
    small = module(f"(table.grow $t (ref.null func) (i32.const {vm.MAX_TABLE_ELEMENTS // 2}))",
                   extra="(table $t 1 funcref)")
    assert run_request(config(small))[0] == 1


def memory_images() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "wasm-memory-image" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


@pytest.mark.parametrize("extra, marker, error", [
    ('(func (export "_initialize") unreachable)', "proxy_abi_version_0_2_1", "unreachable"),
    ("", "proxy_abi_version_0_1_0", "not supported"),
    ("", "something_else", "no proxy_abi_version"),
])
def test_a_vm_that_fails_to_start_leaves_nothing_behind(extra, marker, error):
    # A failed start skipped close(): the ticker's user count leaked (the epoch thread ran
    # on), and the VM's cycle with its callbacks kept the store and the module's memory
    # image open until a collection.
    import gc
    import weakref
    from baton.worker.wasm import vm as vm_module
    code = module("(i32.const 0)", marker=marker,
                  extra=extra + '(data (i32.const 4096) "an initialized page")')
    runtime = vm_module.runtime()
    gc.collect()                                    # the VMs of earlier tests
    users, images = runtime._users, memory_images()
    made = []
    real_init = vm_module.VM.__init__

    def init(self, *args, **kwargs):
        made.append(weakref.ref(self))
        real_init(self, *args, **kwargs)
    gc.disable()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(vm_module.VM, "__init__", init)
            with pytest.raises(WasmError, match=error):
                plugin._new_vm(config(code), Stats(), {}, keep=False)
            assert made[0]() is None                # freed at once, with no collection
            assert runtime._users == users and memory_images() == images
            with pytest.raises(WasmError, match=error):
                plugin.validate(config(code))
        assert len(made) == 2 and made[1]() is None
        assert runtime._users == users and memory_images() == images
    finally:
        gc.enable()


@pytest.mark.parametrize("imported, error", [
    ('(import "env" "no_such_call" (func (param i32)))',
     "missing import: env.no_such_call"),
    ('(import "foo" "bar" (func))', "missing import: foo.bar"),
    ('(import "env" "proxy_continue_request" (func (result i32)))',    # ABI 0.1.0's only
     "missing import: env.proxy_continue_request"),
    ('(import "env" "proxy_log" (func (param i32 i32) (result i32)))',
     "import type mismatch: env.proxy_log, want: i32 i32 -> i32, but host exports: "
     "i32 i32 i32 -> i32"),
    ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32) (result i32)))',
     "wasi_snapshot_preview1.fd_write, want: i32 i32 i32 -> i32, but host exports: "
     "i32 i32 i32 i32 -> i32"),
])
def test_a_module_importing_what_envoys_host_lacks_is_refused(imported, error):
    # Envoy 1.40 refuses each of these at config time (test_differential_wasm_safety.py);
    # Baton linked unknown names to stubs and known ones with any signature.
    with pytest.raises(WasmError, match=re.escape(error)):
        plugin.validate(config(module("(i32.const 0)", imported)))


def test_the_deadline_counts_the_guests_time_not_the_hosts(monkeypatch):
    # Three hostcalls of 0.3 s each against a deadline of 2 ticks (0.25-0.5 s): the host's
    # time counted against the guest failed the VM for good.
    from baton.worker.wasm import vm
    monkeypatch.setattr(vm, "DEADLINE_TICKS", 2)
    real_log = abi.AbiHost.proxy_log

    def slow_log(self, level, message):
        time.sleep(0.3)
        return real_log(self, level, message)
    monkeypatch.setattr(abi.AbiHost, "proxy_log", slow_log)
    monkeypatch.setattr(abi.AbiHost, "log_enabled", lambda self, level: True)
    # A loop: wasmtime checks the deadline at a loop's back edge (and a function's entry).
    code = module("""(local $i i32)
        (loop $again
          (drop (call $log (i32.const 2) (i32.const 0) (i32.const 1)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $again (i32.lt_u (local.get $i) (i32.const 3))))
        (local.get $i)""",
                  '(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))')
    assert run_request(config(code))[0] == 3


def test_a_guest_looping_through_hostcalls_is_still_stopped(monkeypatch):
    # Its guest work between hostcalls (a 200k-step loop each) adds up: a deadline re-armed
    # in full at every hostcall would never stop it.
    from baton.worker.wasm import vm
    monkeypatch.setattr(vm, "DEADLINE_TICKS", 2)
    code = module("""(local $i i32)
        (loop $forever
          (local.set $i (i32.const 200000))
          (loop $spin (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                      (br_if $spin (local.get $i)))
          (drop (call $log (i32.const 0) (i32.const 0) (i32.const 1)))
          (br $forever))
        (i32.const 0)""",
                  '(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))')
    started = time.monotonic()
    with pytest.raises(Trapped, match="interrupt"):
        run_request(config(code))
    assert time.monotonic() - started < 3.0


def test_guest_memory_is_read_and_written_in_place_within_bounds():
    # The VM views its memory as one char array (it never moves): bytes-like data is
    # written, and a range past the end is an IndexError (INVALID_MEMORY_ACCESS / EFAULT).
    machine = plugin._new_vm(config(module("(i32.const 0)")), Stats(), {})
    machine.write(machine.ctx, 10, bytearray(b"abc"))
    machine.write(machine.ctx, 20, memoryview(b"xyz"))
    assert machine.read(machine.ctx, 10, 3) + machine.read(machine.ctx, 20, 3) == b"abcxyz"
    assert machine.read(machine.ctx, 65536, 0) == b""
    for bad in (lambda: machine.read(machine.ctx, 65535, 2),
                lambda: machine.write(machine.ctx, 65535, b"ab")):
        with pytest.raises(IndexError):
            bad()
    machine.close()
