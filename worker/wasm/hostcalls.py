"""The imports a proxy-wasm module may link: the ABI's hostcalls and WASI's basics.

    function(vm, module, name) -> f(caller context, *int args) -> int result

Each reads its (pointer, length) arguments through the VM (vm.py: bounds-checked guest
memory), asks the sans-IO host (abi.py) and writes the answer back. Any other function of
Envoy's host (imports.py: what a module may import at all) answers UNIMPLEMENTED (a WASI
one ENOSYS) and is counted in AbiHost.unimplemented.
"""

from __future__ import annotations

import os
import struct

from . import abi, foreign

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
# WASI errnos (wasi_snapshot_preview1's errno enum; proxy-wasm's statuses are not these:
# its INVALID_MEMORY_ACCESS, 6, is EAGAIN there).
EFAULT = 21
EINVAL = 28
ENOSYS = 52
IOV_MAX = 1024                  # Linux's writev limit
LOG_PIECE = 64 << 10            # the longest log line fd_write makes

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestExit(Exception):
    """proc_exit (AssemblyScript's abort lands here): the guest ends, a trap."""


def function(vm, module: str, name: str):
    """The Python function for import module.name: f(ctx, *int args) -> int result."""
    host, read, write, give = vm.host, vm.read, vm.write, vm.give

    def returning(ctx, result, ptr_ptr, size_ptr):
        status, data = result
        if status == abi.OK:
            give(ctx, data, ptr_ptr, size_ptr)
        return status

    def get_buffer_bytes(ctx, kind, start, max_size, ptr_ptr, size_ptr):
        status, data = host.get_buffer(kind)
        data = data[start:start + max_size]
        if status == abi.OK and data:       # an empty read writes nothing (SDKs rely on it)
            give(ctx, data, ptr_ptr, size_ptr)
        return status

    def get_buffer_status(ctx, kind, length_ptr, flags_ptr):
        status, data = host.get_buffer(kind)
        if status == abi.OK:
            write(ctx, length_ptr, _U32.pack(len(data)))
            write(ctx, flags_ptr, _U32.pack(0))
        return status

    def header_map_size(ctx, kind, size_ptr):
        status, data = host.get_pairs(kind)
        if status == abi.OK:
            write(ctx, size_ptr, _U32.pack(len(data)))
        return status

    def define_metric(ctx, kind, name_ptr, name_size, id_ptr):
        status, metric_id = host.define_metric(kind, read(ctx, name_ptr, name_size))
        if status == abi.OK:
            write(ctx, id_ptr, _U32.pack(metric_id))
        return status

    def get_metric(ctx, metric_id, value_ptr):
        status, value = host.get_metric(metric_id)
        if status == abi.OK:
            write(ctx, value_ptr, _U64.pack(value & (2**64 - 1)))
        return status

    def get_shared_data(ctx, key_ptr, key_size, ptr_ptr, size_ptr, cas_ptr):
        status, data, cas = host.get_shared_data(read(ctx, key_ptr, key_size))
        if status == abi.OK:
            give(ctx, data, ptr_ptr, size_ptr)
            write(ctx, cas_ptr, _U32.pack(cas))
        return status

    def log(ctx, level, ptr, size):
        if host.log_enabled(level):
            return host.proxy_log(level, read(ctx, ptr, size))
        vm.bounds(ctx, ptr + size)       # SDKs log every callback at debug: only check bounds
        return abi.OK

    def http_call(ctx, cluster_ptr, cluster_size, headers_ptr, headers_size, body_ptr,
                  body_size, trailers_ptr, trailers_size, timeout_ms, token_ptr):
        status, token = host.http_call(
            read(ctx, cluster_ptr, cluster_size), read(ctx, headers_ptr, headers_size),
            read(ctx, body_ptr, body_size), read(ctx, trailers_ptr, trailers_size), timeout_ms)
        if status == abi.OK:
            write(ctx, token_ptr, _U32.pack(token))
        return status

    def token_out(ctx, result, token_ptr):
        status, token = result
        if status == abi.OK:
            write(ctx, token_ptr, _U32.pack(token))
        return status

    def get_status(ctx, code_ptr, ptr_ptr, size_ptr):
        code, message = host.status
        write(ctx, code_ptr, _U32.pack(code & 0xFFFFFFFF))
        give(ctx, message, ptr_ptr, size_ptr)
        return abi.OK

    def write_u32(ctx, ptr, value):
        write(ctx, ptr, _U32.pack(value))
        return abi.OK

    def write_u64(ctx, ptr, value):
        write(ctx, ptr, _U64.pack(value))
        return abi.OK

    proxy = {
        "proxy_log": log,
        "proxy_get_log_level": lambda c, p: write_u32(c, p, host.log_level()),
        "proxy_get_current_time_nanoseconds": lambda c, p: write_u64(c, p, host.now_ns()),
        "proxy_set_tick_period_milliseconds": lambda c, ms: host.set_tick_period(ms),
        "proxy_get_buffer_bytes": get_buffer_bytes,
        "proxy_get_buffer_status": get_buffer_status,
        "proxy_set_buffer_bytes": lambda c, t, start, length, p, n: host.set_buffer(
            t, start, length, read(c, p, n)),
        "proxy_get_header_map_pairs": lambda c, t, pp, sp: returning(c, host.get_pairs(t), pp, sp),
        "proxy_set_header_map_pairs": lambda c, t, p, n: host.set_pairs(t, read(c, p, n)),
        "proxy_get_header_map_value": lambda c, t, kp, ks, pp, sp: returning(
            c, host.get_header(t, read(c, kp, ks)), pp, sp),
        "proxy_add_header_map_value": lambda c, t, kp, ks, vp, vs: host.add_header(
            t, read(c, kp, ks), read(c, vp, vs)),
        "proxy_replace_header_map_value": lambda c, t, kp, ks, vp, vs: host.replace_header(
            t, read(c, kp, ks), read(c, vp, vs)),
        "proxy_remove_header_map_value": lambda c, t, kp, ks: host.remove_header(
            t, read(c, kp, ks)),
        "proxy_get_header_map_size": header_map_size,
        "proxy_get_property": lambda c, kp, ks, pp, sp: returning(
            c, host.get_property(read(c, kp, ks)), pp, sp),
        "proxy_set_property": lambda c, kp, ks, vp, vs: host.set_property(
            read(c, kp, ks), read(c, vp, vs)),
        "proxy_send_local_response": lambda c, status, dp, ds, bp, bs, hp, hs, grpc:
            host.send_local_response(status, read(c, dp, ds), read(c, bp, bs),
                                     read(c, hp, hs), grpc),
        "proxy_continue_stream": lambda c, stream_type: host.continue_stream(stream_type),
        "proxy_set_effective_context": lambda c, cid: host.set_effective_context(cid),
        "proxy_done": lambda c: abi.OK,
        "proxy_http_call": http_call,
        "proxy_define_metric": define_metric,
        "proxy_increment_metric": lambda c, mid, delta: host.increment_metric(
            mid, delta - (1 << 64) if delta >= 1 << 63 else delta),
        "proxy_record_metric": lambda c, mid, value: host.record_metric(mid, value),
        "proxy_get_metric": get_metric,
        "proxy_get_shared_data": get_shared_data,
        "proxy_set_shared_data": lambda c, kp, ks, vp, vs, cas: host.set_shared_data(
            read(c, kp, ks), read(c, vp, vs), cas),
        "proxy_grpc_call": lambda c, sp, ss, np, ns, mp, ms, dp, ds, rp, rs, timeout, tp: token_out(
            c, host.grpc_call(read(c, sp, ss), read(c, np, ns), read(c, mp, ms), read(c, dp, ds),
                              read(c, rp, rs), timeout & 0xFFFFFFFF), tp),
        "proxy_grpc_stream": lambda c, sp, ss, np, ns, mp, ms, dp, ds, tp: token_out(
            c, host.grpc_stream(read(c, sp, ss), read(c, np, ns), read(c, mp, ms),
                                read(c, dp, ds)), tp),
        "proxy_grpc_send": lambda c, token, mp, ms, end: host.grpc_send(
            token & 0xFFFFFFFF, read(c, mp, ms), end),
        "proxy_grpc_close": lambda c, token: host.grpc_close(token & 0xFFFFFFFF),
        "proxy_grpc_cancel": lambda c, token: host.grpc_cancel(token & 0xFFFFFFFF),
        "proxy_get_status": get_status,
        "proxy_call_foreign_function": lambda c, np, ns, ap, az, pp, sp: foreign.charged(
            vm, lambda: returning(c, host.call_foreign_function(read(c, np, ns),
                                                                read(c, ap, az)), pp, sp)),
        "proxy_register_shared_queue": lambda c, np, ns, tp: token_out(
            c, host.register_shared_queue(read(c, np, ns)), tp),
        "proxy_resolve_shared_queue": lambda c, vp, vs, np, ns, tp: token_out(
            c, host.resolve_shared_queue(read(c, vp, vs), read(c, np, ns)), tp),
        "proxy_enqueue_shared_queue": lambda c, token, dp, ds: host.enqueue_shared_queue(
            token & 0xFFFFFFFF, read(c, dp, ds)),
        "proxy_dequeue_shared_queue": lambda c, token, pp, sp: returning(
            c, host.dequeue_shared_queue(token & 0xFFFFFFFF), pp, sp),
    }
    if module in WASI_MODULES:
        function = _wasi(vm, name)
        if function is None:
            def function(ctx, *args):
                host.unimplemented_call(f"{module}.{name}")
                return ENOSYS
        return function
    function = proxy.get(name)
    if function is None:
        def function(ctx, *args):
            return host.unimplemented_call(name)
    return function


def _wasi(vm, name: str):
    """WASI preview1's basics, as Envoy's host gives them (errno 0 on success)."""
    host, read, write = vm.host, vm.read, vm.write

    def fd_write(ctx, fd, iovs, count, written_ptr):
        # Bounded before anything is produced: at most IOV_MAX iovecs (writev's EINVAL past
        # it), and at most the memory's size taken in all (a short write, as writev may
        # do): each iovec may name the whole memory, and joined they made a log line
        # thousands of times its size. Logged in pieces of LOG_PIECE bytes.
        if count > IOV_MAX:
            return EINVAL
        vectors = read(ctx, iovs, 8 * count)
        level = 2 if fd == 1 else 4                 # stdout info, stderr error
        logging = host.log_enabled(level)
        budget = vm.memory_size(ctx)
        written = 0
        piece = []
        pending = 0
        for ptr, size in struct.iter_unpack("<II", vectors):
            size = min(size, budget - written)
            vm.bounds(ctx, ptr + size)               # EFAULT before any of it is read
            if logging:
                while size:
                    take = min(size, LOG_PIECE - pending)
                    piece.append(read(ctx, ptr, take))
                    pending += take
                    written += take
                    ptr += take
                    size -= take
                    if pending == LOG_PIECE:
                        host.proxy_log(level, b"".join(piece).rstrip(b"\n"))
                        piece, pending = [], 0
            else:
                written += size
            if written >= budget:
                break
        if piece:
            host.proxy_log(level, b"".join(piece).rstrip(b"\n"))
        write(ctx, written_ptr, _U32.pack(written))
        return 0

    def proc_exit(ctx, code):
        raise GuestExit(f"proc_exit({code})")

    def clock_time_get(ctx, clock_id, precision, time_ptr):
        import time
        now = host.now_ns() if clock_id == 0 else time.monotonic_ns()
        write(ctx, time_ptr, _U64.pack(now))
        return 0

    def random_get(ctx, ptr, size):
        vm.bounds(ctx, ptr + size)       # EFAULT before the bytes exist (a 64 KiB guest asked 64 MiB)
        write(ctx, ptr, os.urandom(size))
        return 0

    def sizes(entries):
        def get(ctx, count_ptr, size_ptr):
            items = entries()
            write(ctx, count_ptr, _U32.pack(len(items)))
            write(ctx, size_ptr, _U32.pack(sum(len(e) + 1 for e in items)))
            return 0
        return get

    def values(entries):
        def get(ctx, pointers_ptr, buffer_ptr):
            for i, entry in enumerate(entries()):
                write(ctx, pointers_ptr + 4 * i, _U32.pack(buffer_ptr))
                write(ctx, buffer_ptr, entry + b"\0")
                buffer_ptr += len(entry) + 1
            return 0
        return get

    return {"fd_write": fd_write, "proc_exit": proc_exit, "clock_time_get": clock_time_get,
            "random_get": random_get, "environ_sizes_get": sizes(host.environ),
            "environ_get": values(host.environ), "args_sizes_get": sizes(list),
            "args_get": values(list), "sched_yield": lambda ctx: 0}.get(name)
