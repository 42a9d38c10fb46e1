"""A proxy-wasm VM on wasmtime: the module, its instance, and the calls in and out.

wasmtime-py's public calls (Func.__call__, Linker.define_func) re-read the function type and
box every value on each crossing (6-30 us); this adapter goes through wasmtime's *unchecked*
C API instead (wasmtime_func_call_unchecked, wasmtime_linker_define_func_unchecked), with a
raw value array reused per export, and views guest memory as one ctypes array over
wasmtime_memory_data (the memory never moves: reads and writes are slices, no foreign call):
1.5 us a call in, 3.6 us a hostcall before that view (docs/wasm-plan.md 3.2; bench/RESULTS.md,
"Wasm filter cost", for after). Those functions live in
wasmtime-py's private `_bindings`, hence the pinned major version (pyproject.toml) and
tests/unit/test_wasm_vm.py.

What the guest may do to the host:
- A module may import what Envoy's host offers, with Envoy's signatures (imports.py); any
  other import refuses it, as proxy-wasm-cpp-host refuses it. Linked: the proxy-wasm
  hostcalls abi.py implements, WASI's basics (fd_write to the log, clock, random, environ
  from vm_config.environment_variables, proc_exit as a trap); the rest answers
  UNIMPLEMENTED (WASI: ENOSYS) and is counted in AbiHost.unimplemented. An import that is
  not a function refuses the module.
- A guest pointer outside its memory is INVALID_MEMORY_ACCESS, never a host crash.
- A trap (or a hostcall's exception) fails the VM (`failed`): its state is lost, as in
  Envoy; the filter applies its failure policy.
- A runaway guest is stopped by an epoch deadline: a thread bumps the engine's epoch every
  TICK seconds and each call from the host may run DEADLINE_TICKS of them (1.75-2 s). Only
  the guest's ticks count: those that pass inside a hostcall (the host's work, a
  collection, the worker descheduled) are given back when it returns, so a guest is not
  failed for the host's time (one overrun fails a VM for good); a tick is counted where it
  lands, so a guest that loops through hostcalls is still stopped by its own share. The
  limit is generous because the clock is the wall's: a worker descheduled while the guest
  runs still counts (0.1-0.2 s killed VMs, now and then, on this 2-core machine under load).
  Envoy's V8 has no deadline at all.
- Memory and tables are capped by Store limits (MAX_MEMORY, MAX_TABLE_ELEMENTS), and a
  hostcall produces nothing before its bounds are checked (WASI answers EFAULT); fd_write is
  bounded in iovecs and bytes (hostcalls.py), as a hostcall cannot be stopped by the epoch.

wasmtime is imported on first use: a worker without a Wasm filter never loads it (8 MB).
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import hashlib
import os
import struct
import threading
import time
import weakref

from . import abi, hostcalls, imports

TICK = 0.25
DEADLINE_TICKS = 8
MAX_MEMORY = 512 << 20
# A table's elements live outside linear memory (8+ bytes each in wasmtime): a guest's
# table.grow of 50M elements took 400 MB of the host's. Toolchains' tables hold the
# module's functions (AssemblyScript, Rust, TinyGo: hundreds to a few thousand).
MAX_TABLE_ELEMENTS = 1 << 20
MAX_TABLES = 8
ABI_VERSIONS = ("proxy_abi_version_0_2_0", "proxy_abi_version_0_2_1")

_U32 = struct.Struct("<I")
_U32_AT = _U32.unpack_from
_U64_INTO = struct.Struct("<Q").pack_into


def _packer(params, values) -> tuple:
    """An export's arguments written into its value array in one struct call: (pack_into,
    the array's bytes). A value is 16 bytes; an i32 (as unsigned) or an i64 in its low end."""
    layout = "".join("q8x" if str(p) == "i64" else "I12x" for p in params)
    return struct.Struct("<" + layout).pack_into, memoryview(values).cast("B")
# wasmtime_func_unchecked_callback_t (env, caller, values, count) -> trap, all as addresses.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_size_t)


class WasmError(Exception):
    """The module cannot run: it does not compile, lacks the ABI marker, a start call failed."""


class Trapped(WasmError):
    """The guest trapped (or was stopped) during a call; the VM is failed."""


_runtime = None
# A parent's runtime, inherited by fork: never freed here. The worker has closed the
# descriptors it inherited (worker/main.py), and wasmtime's objects own some (a module's
# memory image): freeing them would close whatever now has those numbers, or abort.
_inherited: list = []


def runtime() -> "Runtime":
    """This process's wasmtime engine (a forked child makes its own: an engine and its
    epoch thread do not survive a fork)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime is not None:
            _inherited.append(_runtime)
        _runtime = Runtime()
    return _runtime


@atexit.register
def _free_at_exit() -> None:
    """This process's engine and modules go before the interpreter tears wasmtime-py's
    bindings down (freed after, each said "Exception ignored ... 'NoneType' object is not
    callable"). A parent's runtime stays: see _inherited."""
    global _runtime
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime = None
        gc.collect()


def preload(snapshot: dict) -> None:
    """In the master, before it forks workers that become another user (worker/privileges.py):
    load wasmtime if a Wasm filter may come over xDS. A Wasm filter in the bootstrap has
    loaded it already (its check at translation); workers that keep the master's user load
    it when a VM starts."""
    if snapshot.get("xds") and (snapshot.get("runtime") or {}).get("worker_user"):
        load_wasmtime()


def load_wasmtime() -> None:
    """Import wasmtime and what it imports lazily, before this process becomes another user,
    if that user could not (an interpreter under a 0700 home; about 8 MB). The xDS agent
    calls this too: it checks the Wasm modules ECDS sends."""
    if _importable_by_others():
        return
    try:
        import wasmtime  # noqa: F401
        from wasmtime import _bindings, _ffi  # noqa: F401
    except ImportError:
        return  # not installed (it is a declared dependency): nothing to load ahead
    # And what a check imports: the plugin layer (zlib, the gRPC callouts' codecs), the
    # module cache (tempfile) and the remote code fetch (urllib).
    from . import cache, plugin, remote  # noqa: F401


def _importable_by_others() -> bool:
    """Whether the standard library and wasmtime's package (when installed) can be read by
    any user: every directory above them searchable, the files readable."""
    import importlib.util
    spec = importlib.util.find_spec("wasmtime")
    paths = [os.__file__] + ([spec.origin] if spec is not None and spec.origin else [])
    return all(_open_to_others(path) for path in paths)


def _open_to_others(path: str) -> bool:
    try:
        resolved = os.path.realpath(path)
        if not os.stat(resolved).st_mode & 0o004:
            return False
        parent = os.path.dirname(resolved)
        while True:
            if not os.stat(parent).st_mode & 0o001:
                return False
            if parent == os.path.dirname(parent):
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


class Runtime:
    """The engine, compiled modules by code hash, and the epoch thread."""

    def __init__(self):
        try:
            import wasmtime
        except ImportError as exc:      # not installed, or unreadable after a privilege drop
            raise WasmError(f"wasmtime cannot be loaded: {exc}") from None
        self.wasmtime = wasmtime
        self.pid = os.getpid()
        config = wasmtime.Config()
        config.epoch_interruption = True
        # No compile thread pool: the master validates modules before it forks workers,
        # and a pool's threads would not exist in the children.
        config.parallel_compilation = False
        # A linear memory stays where it is (its 4 GiB reservation holds MAX_MEMORY; growing
        # past it fails instead of moving it): a VM keeps one view of it (VM._refresh).
        config.memory_may_move = False
        self.engine = wasmtime.Engine(config)
        self.modules: dict[str, object] = {}
        self.disk = False               # cache.py's ModuleCache once looked up (None: none)
        self._ticker = None
        self._users = 0
        self._lock = threading.Lock()
        self.ticks = [0]                # the epoch as the ticker moved it (read without wasmtime)

    def compile(self, code: bytes, sha256: str | None = None, keep: bool = True):
        """The module of `code`, once per process (`keep`: kept by its hash), and once per
        user: mapped from the disk cache (cache.py) when a check or another worker compiled
        it already, else compiled and stored there."""
        key = sha256 or hashlib.sha256(code).hexdigest()
        module = self.modules.get(key)
        if module is None:
            disk = self._disk_cache()
            module = disk.load(self.engine, key) if disk is not None else None
            if module is None:
                try:
                    module = self.wasmtime.Module(self.engine, code)
                except Exception as exc:  # noqa: BLE001 - wasmtime's errors have no common base
                    raise WasmError(f"cannot compile the module: {_first_line(exc)}") from None
                if disk is not None:
                    disk.store(key, module)
            if keep:
                self.modules[key] = module
        return module

    def _disk_cache(self):
        if self.disk is False:
            from . import cache
            # Serialized code is only good for the same wasmtime library and engine settings:
            # the library file's size and time say which (importlib.metadata may not be
            # importable by a process that became another user: the xDS agent).
            from wasmtime import _ffi
            try:
                lib = os.stat(_ffi.filename)
                self.disk = cache.default(f"wasmtime{lib.st_size}.{lib.st_mtime_ns}-epoch-fixed")
            except OSError:
                self.disk = None
        return self.disk

    def hold_ticker(self) -> None:
        """A VM needs the epoch to move (until release_ticker)."""
        with self._lock:
            self._users += 1
            if self._ticker is None:
                self._ticker = _EpochTicker(self.engine, self.ticks)
                self._ticker.start()

    def release_ticker(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users <= 0 and self._ticker is not None:
                # Joined: the master checks modules before it forks, and a fork should find
                # no thread of ours running.
                self._ticker.stop()
                self._ticker.join()
                self._ticker = None
                self._users = 0


class _EpochTicker(threading.Thread):
    def __init__(self, engine, ticks: list):
        super().__init__(name="wasm-epoch", daemon=True)
        self.engine = engine
        self.ticks = ticks
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(TICK):
            self.engine.increment_epoch()
            self.ticks[0] += 1

    def stop(self):
        self.stopped.set()


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _trap_text(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "trap"
    # wasmtime puts the backtrace first and the cause last ("Caused by: ...").
    for line in reversed(lines):
        if not line.startswith(("0:", "1:", "2:", "3:", "4:", "5:", "6:", "7:", "8:", "9:",
                                "wasm backtrace", "Caused by", "note:")):
            return line
    return lines[-1]


class VM:
    """One instance of a module with its AbiHost. Calls into one VM never overlap (one
    worker thread), so each export keeps one raw argument array."""

    def __init__(self, module, host: abi.AbiHost, max_memory: int = MAX_MEMORY):
        rt = runtime()
        wasmtime = rt.wasmtime
        from wasmtime import _bindings as ffi
        self._ffi = ffi
        self._wasmtime = wasmtime
        self.runtime = rt
        self.host = host
        self.failed = ""                  # why the VM failed, "" while it works
        self.started_at = time.monotonic()
        self.last_exception = None
        self._keep = []                   # callbacks must outlive the instance
        self.store = wasmtime.Store(rt.engine)
        # Every resource a guest can grow, not linear memory alone: one instance, one memory.
        self.store.set_limits(memory_size=max_memory, table_elements=MAX_TABLE_ELEMENTS,
                              tables=MAX_TABLES, instances=1, memories=1)
        self.store.set_epoch_deadline(DEADLINE_TICKS)
        self._ticks = rt.ticks
        self._deadline = 0                # the tick the current call from the host may run to
        rt.hold_ticker()
        # Released by close(), or when the VM is collected (no plugin of a live config uses
        # it any more: worker/wasm/plugin.py keeps VMs weakly).
        self._release = weakref.finalize(self, rt.release_ticker)
        try:
            self._start(module)
        except BaseException:
            # Whatever failed (a start trap, a missing export), nothing of the VM stays: the
            # ticker's user count, and the cycle between the VM and its callbacks that kept
            # the store (and a module's /memfd:wasm-memory-image) until a collection.
            self._discard()
            raise

    def _start(self, module) -> None:
        wasmtime, ffi = self._wasmtime, self._ffi
        linker = wasmtime.Linker(self.runtime.engine)
        for imp in module.imports:
            self._define(linker, imp)
        try:
            self.instance = linker.instantiate(self.store, module)
        except Exception as exc:  # noqa: BLE001 - a trap in the start function, a bad import
            raise WasmError(f"cannot instantiate the module: {_trap_text(str(exc))}") from None
        exports = self.instance.exports(self.store)
        memory = exports.get("memory") if hasattr(exports, "get") else None
        if not isinstance(memory, wasmtime.Memory):
            raise WasmError("the module exports no memory")
        self._memory = ctypes.byref(memory._memory)
        self.exports = {}
        for export in module.exports:
            func = exports[export.name]
            if isinstance(func, wasmtime.Func):
                ftype = export.type
                size = max(len(ftype.params), len(ftype.results), 1)
                values = (ffi.wasmtime_val_raw * size)()
                self._keep.append(func)         # its wasmtime_func_t, called by address
                self.exports[export.name] = (len(ftype.results), ctypes.addressof(func._func),
                                             values, ctypes.addressof(values), size,
                                             _packer(ftype.params, values))
        self.ctx = self.store._context()
        # The raw C functions, bound once: a call in pays one ctypes call, not wrappers.
        # Called through a prototype of plain addresses: ctypes converts no argument (0.82 ->
        # 0.47 us a call). The GIL is released during it, as it must be: the epoch thread
        # has to run while a guest spins.
        self._call_raw = ctypes.CFUNCTYPE(
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
            ctypes.c_void_p)(ctypes.cast(ffi._wasmtime_func_call_unchecked, ctypes.c_void_p).value)
        self._ctx_address = ctypes.cast(self.ctx, ctypes.c_void_p).value
        self._set_deadline = ffi._wasmtime_context_set_epoch_deadline
        self._memory_size = ffi._wasmtime_memory_data_size
        data = ffi._wasmtime_memory_data          # the same function, answering an int address
        self._memory_data = ctypes.CFUNCTYPE(ctypes.c_void_p, *data.argtypes)(
            ctypes.cast(data, ctypes.c_void_p).value)
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_address = ctypes.addressof(self._trap)
        self._view = None                 # the memory as a ctypes char array (_refresh)
        self._memory_end = 0
        self.abi_version = next((name for name in self.exports if name in ABI_VERSIONS), None)
        if self.abi_version is None:
            found = [name for name in self.exports if name.startswith("proxy_abi_version_")]
            raise WasmError(f"ABI version {found[0][len('proxy_abi_version_'):]} not supported "
                            "(0_2_0, 0_2_1)" if found else
                            "not a proxy-wasm module (no proxy_abi_version_* export)")
        malloc = self.exports.get("proxy_on_memory_allocate") or self.exports.get("malloc")
        if malloc is None:
            raise WasmError("the module exports no proxy_on_memory_allocate (or malloc)")
        # The allocator runs nested inside hostcalls, while the export that made them still
        # holds its own array: the allocator gets a second one.
        values = (ffi.wasmtime_val_raw * malloc[4])()
        self._malloc_entry = (malloc[0], malloc[1], values, ctypes.addressof(values), malloc[4],
                              _packer(("i32",), values))     # (size) -> address
        for init in ("_initialize", "_start"):
            if init in self.exports:
                self.call(init)
                break

    def _discard(self) -> None:
        self.close()
        for name in ("instance", "exports", "_malloc_entry", "_memory", "ctx"):
            self.__dict__.pop(name, None)
        self.store = None
        self._keep.clear()

    def close(self) -> None:
        self._release()

    # -- calls in -------------------------------------------------------------------------------
    _trap = None

    def has(self, name: str) -> bool:
        return name in self.exports

    def call(self, name: str, *args) -> int | None:
        """Call an export from the host (a new epoch deadline); None when it is not exported
        or returns nothing. Raises Trapped (and the VM is failed)."""
        entry = self.exports.get(name)
        if entry is None:
            return None
        if self.failed:
            raise Trapped(self.failed)
        deadline = self._ticks[0] + DEADLINE_TICKS
        if deadline != self._deadline:     # else the epoch has not moved (a tick is 0.25 s):
            self._deadline = deadline       # the deadline set is already this one
            self._set_deadline(self.ctx, DEADLINE_TICKS)
        try:
            result = self._invoke(self.ctx, entry, args)
        except Trapped as exc:
            self.failed = f"{name}: {exc}"
            raise Trapped(self.failed) from None
        if self.host.after_call:
            self._after_call()
        return result

    def _after_call(self) -> None:
        """What a hostcall left for when the VM call returns (Envoy's addAfterVmCallAction),
        before the caller goes on: each may call into the VM again."""
        actions = self.host.after_call
        while actions:
            actions.pop(0)()

    def _invoke(self, ctx, entry, args):
        nresults, func, values, address, size, (pack, view) = entry
        try:
            pack(view, 0, *args)            # the arguments in one write, not a field each
        except (struct.error, TypeError):   # a negative i32, a float, a count that differs
            i = 0
            for arg in args:
                values[i].i32 = arg
                i += 1
        error = self._call_raw(self._ctx_address, func, address, size, self._trap_address)
        if error:
            error = ctypes.cast(error, ctypes.POINTER(self._ffi.wasmtime_error_t))
            raise Trapped(_trap_text(str(self._wasmtime.WasmtimeError._from_ptr(error))))
        if self._trap:
            trap = self._wasmtime.Trap._from_ptr(self._trap)     # owns (and frees) it
            self._trap = ctypes.POINTER(self._ffi.wasm_trap_t)()
            self._trap_address = ctypes.addressof(self._trap)
            raise Trapped(_trap_text(str(trap)))
        return _U32_AT(view)[0] if nresults else None   # an i32 as unsigned: its low half

    def _give_back(self, ctx, entered: int) -> None:
        """A hostcall entered at tick `entered` returns, later: the ticks it took are the
        host's (its work, a collection, the worker descheduled), not the guest's, so the
        guest gets them back; what it had left then it has now."""
        left = max(self._deadline - entered, 1)
        self._deadline = self._ticks[0] + left
        self._set_deadline(ctx, left)

    def tick(self) -> int:
        """The epoch tick now (a tick is 0.25 s): where a span charge_since counts from."""
        return self._ticks[0]

    def charge_since(self, entered: int) -> bool:
        """The ticks since `entered` were the guest's, though spent in a hostcall (a foreign
        function: foreign.py charged): its deadline comes as many ticks earlier, which
        _give_back then returns none of. False when the deadline has passed."""
        now = self._ticks[0]
        if now == entered:
            return True
        if now >= self._deadline:
            return False
        self._deadline -= now - entered
        return True

    # -- guest memory ---------------------------------------------------------------------------
    def _refresh(self, ctx) -> None:
        """View the memory as it is now. It never moves (Runtime) and only grows, so a view
        stays right for what it covers; a pointer past its end asks again (the guest may
        have grown the memory since)."""
        self._memory_end = end = self._memory_size(ctx, self._memory)
        self._view = (ctypes.c_char * end).from_address(self._memory_data(ctx, self._memory))

    def bounds(self, ctx, end: int) -> None:
        """IndexError (INVALID_MEMORY_ACCESS, EFAULT) unless [.., end) is in the memory."""
        if end > self._memory_end:
            self._refresh(ctx)
            if end > self._memory_end:
                raise IndexError

    def memory_size(self, ctx) -> int:
        self._refresh(ctx)
        return self._memory_end

    # Slices of the view: no foreign call (string_at and memmove were one each, 0.3-0.5 us).
    def read(self, ctx, ptr: int, size: int) -> bytes:
        if not size:
            return b""
        end = ptr + size
        if end > self._memory_end:
            self.bounds(ctx, end)
        return self._view[ptr:end]

    def write(self, ctx, ptr: int, data: bytes) -> None:
        end = ptr + len(data)
        if end > self._memory_end:
            self.bounds(ctx, end)
        try:
            self._view[ptr:end] = data
        except TypeError:               # a char array takes bytes only (not bytearray, str)
            self._view[ptr:end] = bytes(data)

    def give(self, ctx, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Copy `data` into memory the guest allocates, and tell it where and how long."""
        address = 0
        if data:
            address = self._invoke(ctx, self._malloc_entry, (len(data),))
            if not address:
                raise MemoryError("the guest's allocator returned 0")
            self.write(ctx, address, data)
        self.write(ctx, ptr_ptr, _U32.pack(address))
        self.write(ctx, size_ptr, _U32.pack(len(data)))

    # -- imports --------------------------------------------------------------------------------
    def _define(self, linker, imp) -> None:
        wasmtime, ffi = self._wasmtime, self._ffi
        if not isinstance(imp.type, wasmtime.FuncType):
            raise WasmError(f"import {imp.module}.{imp.name} is not a function (not supported)")
        refused = imports.check(imp.module, imp.name, imp.type.params, imp.type.results)
        if refused:
            raise WasmError(refused)
        function = hostcalls.function(self, imp.module, imp.name)
        # A pointer outside memory: WASI's EFAULT, proxy-wasm's INVALID_MEMORY_ACCESS.
        fault = hostcalls.EFAULT if imp.module in hostcalls.WASI_MODULES else \
            abi.INVALID_MEMORY_ACCESS
        # The arguments in one read of the raw value array (16 bytes a value): an i32 as
        # unsigned, an i64 signed, as the hostcalls take them.
        params = [str(p) for p in imp.type.params]
        unpack = struct.Struct("<" + "".join("q8x" if p == "i64" else "I12x"
                                             for p in params)).unpack
        size = 16 * len(params)
        returns = bool(imp.type.results)
        # The value array viewed in place (a ctypes array type's from_address, 0.4 us less a
        # hostcall than string_at's copy); the result goes to its first value.
        view_at = (ctypes.c_char * max(size, 16)).from_address
        vm = self
        ticks = self._ticks

        def callback(env, caller, values, nvalues):
            entered = ticks[0]
            try:
                ctx = vm.ctx                # the caller's context is its store's, the VM's
                view = view_at(values)
                try:
                    result = function(ctx, *unpack(view)) if size else function(ctx)
                except IndexError:
                    result = fault
                if returns:                 # zero-extended: the i32 is its low half
                    _U64_INTO(view, 0, (result or 0) & 0xFFFFFFFFFFFFFFFF)
                if ticks[0] != entered:
                    vm._give_back(ctx, entered)
                return 0
            except BaseException as exc:  # noqa: BLE001 - becomes a trap in the guest
                vm.last_exception = exc
                trap = wasmtime.Trap(f"host {imp.name}: {exc}")
                return ctypes.cast(trap._consume(), ctypes.c_void_p).value or 0

        # Its arguments as plain addresses: ctypes makes no pointer objects for them.
        raw = _CALLBACK(callback)
        self._keep.append(raw)
        module, name = imp.module.encode(), imp.name.encode()
        error = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(), ctypes.create_string_buffer(module), len(module),
            ctypes.create_string_buffer(name), len(name), imp.type.ptr(),
            ctypes.cast(raw, ffi.wasmtime_func_unchecked_callback_t), None,
            ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0))
        if error:
            raise WasmError(f"cannot link {imp.module}.{imp.name}: "
                            f"{_first_line(wasmtime.WasmtimeError._from_ptr(error))}")
