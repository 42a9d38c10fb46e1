"""The functions Envoy's host offers a proxy-wasm 0.2.x module, with their signatures.

    check(module, name, params, results) -> None, or the reason the module is refused

proxy-wasm-cpp-host links a module's imports against this set when the VM starts and fails
a module that imports anything else ("Failed to load Wasm module due to a missing import")
or a known name with another signature ("... an import type mismatch"); Envoy then refuses
the plugin ("Unable to create Wasm plugin"). The set was read from Envoy 1.40 itself: each
name imported with a wrong signature into a module checked by `envoy --mode validate`,
whose error names the host's signature (ABI 0.2.x: the 0.1.0 calls proxy_get_configuration,
proxy_continue_request, proxy_continue_response and proxy_clear_route_cache are not there).
Baton links every one of them; those it does not implement answer UNIMPLEMENTED / ENOSYS
(hostcalls.py).
"""

from __future__ import annotations

_I5 = "i32 i32 i32 i32 i32 -> i32"

ENV = {
    "proxy_log": "i32 i32 i32 -> i32",
    "proxy_get_status": "i32 i32 i32 -> i32",
    "proxy_set_property": "i32 i32 i32 i32 -> i32",
    "proxy_get_property": "i32 i32 i32 i32 -> i32",
    "proxy_send_local_response": "i32 i32 i32 i32 i32 i32 i32 i32 -> i32",
    "proxy_get_shared_data": _I5,
    "proxy_set_shared_data": _I5,
    "proxy_register_shared_queue": "i32 i32 i32 -> i32",
    "proxy_resolve_shared_queue": _I5,
    "proxy_dequeue_shared_queue": "i32 i32 i32 -> i32",
    "proxy_enqueue_shared_queue": "i32 i32 i32 -> i32",
    "proxy_get_header_map_value": _I5,
    "proxy_add_header_map_value": _I5,
    "proxy_replace_header_map_value": _I5,
    "proxy_remove_header_map_value": "i32 i32 i32 -> i32",
    "proxy_get_header_map_pairs": "i32 i32 i32 -> i32",
    "proxy_set_header_map_pairs": "i32 i32 i32 -> i32",
    "proxy_get_header_map_size": "i32 i32 -> i32",
    "proxy_get_buffer_status": "i32 i32 i32 -> i32",
    "proxy_get_buffer_bytes": _I5,
    "proxy_set_buffer_bytes": _I5,
    "proxy_http_call": "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 -> i32",
    "proxy_grpc_call": "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 -> i32",
    "proxy_grpc_stream": "i32 i32 i32 i32 i32 i32 i32 i32 i32 -> i32",
    "proxy_grpc_close": "i32 -> i32",
    "proxy_grpc_cancel": "i32 -> i32",
    "proxy_grpc_send": "i32 i32 i32 i32 -> i32",
    "proxy_set_tick_period_milliseconds": "i32 -> i32",
    "proxy_get_current_time_nanoseconds": "i32 -> i32",
    "proxy_define_metric": "i32 i32 i32 i32 -> i32",
    "proxy_increment_metric": "i32 i64 -> i32",
    "proxy_record_metric": "i32 i64 -> i32",
    "proxy_get_metric": "i32 i32 -> i32",
    "proxy_set_effective_context": "i32 -> i32",
    "proxy_done": "void -> i32",
    "proxy_call_foreign_function": "i32 i32 i32 i32 i32 i32 -> i32",
    "proxy_continue_stream": "i32 -> i32",
    "proxy_close_stream": "i32 -> i32",
    "proxy_get_log_level": "i32 -> i32",
    "pthread_equal": "i32 i32 -> i32",
    "emscripten_notify_memory_growth": "i32 -> void",
}

# wasi_unstable and wasi_snapshot_preview1 alike.
WASI = {
    "args_get": "i32 i32 -> i32",
    "args_sizes_get": "i32 i32 -> i32",
    "environ_get": "i32 i32 -> i32",
    "environ_sizes_get": "i32 i32 -> i32",
    "clock_res_get": "i32 i32 -> i32",
    "clock_time_get": "i32 i64 i32 -> i32",
    "fd_advise": "i32 i64 i64 i32 -> i32",
    "fd_allocate": "i32 i64 i64 -> i32",
    "fd_close": "i32 -> i32",
    "fd_datasync": "i32 -> i32",
    "fd_fdstat_get": "i32 i32 -> i32",
    "fd_fdstat_set_flags": "i32 i32 -> i32",
    "fd_fdstat_set_rights": "i32 i64 i64 -> i32",
    "fd_filestat_get": "i32 i32 -> i32",
    "fd_filestat_set_size": "i32 i64 -> i32",
    "fd_filestat_set_times": "i32 i64 i64 i32 -> i32",
    "fd_pread": "i32 i32 i32 i64 i32 -> i32",
    "fd_prestat_get": "i32 i32 -> i32",
    "fd_prestat_dir_name": "i32 i32 i32 -> i32",
    "fd_pwrite": "i32 i32 i32 i64 i32 -> i32",
    "fd_read": "i32 i32 i32 i32 -> i32",
    "fd_readdir": "i32 i32 i32 i64 i32 -> i32",
    "fd_renumber": "i32 i32 -> i32",
    "fd_seek": "i32 i64 i32 i32 -> i32",
    "fd_sync": "i32 -> i32",
    "fd_tell": "i32 i32 -> i32",
    "fd_write": "i32 i32 i32 i32 -> i32",
    "path_create_directory": "i32 i32 i32 -> i32",
    "path_filestat_get": _I5,
    "path_filestat_set_times": "i32 i32 i32 i32 i64 i64 i32 -> i32",
    "path_link": "i32 i32 i32 i32 i32 i32 -> i32",
    "path_open": "i32 i32 i32 i32 i32 i64 i64 i32 i32 -> i32",
    "path_readlink": "i32 i32 i32 i32 i32 i32 -> i32",
    "path_remove_directory": "i32 i32 i32 -> i32",
    "path_rename": "i32 i32 i32 i32 i32 i32 -> i32",
    "path_symlink": "i32 i32 i32 i32 -> i32",
    "path_unlink_file": "i32 i32 i32 -> i32",
    "poll_oneoff": "i32 i32 i32 i32 -> i32",
    "proc_exit": "i32 -> void",
    "sched_yield": "void -> i32",
    "random_get": "i32 i32 -> i32",
    "sock_accept": "i32 i32 i32 -> i32",
    "sock_recv": "i32 i32 i32 i32 i32 i32 -> i32",
    "sock_send": "i32 i32 i32 i32 i32 -> i32",
    "sock_shutdown": "i32 i32 -> i32",
}

HOST = {"env": ENV, "wasi_unstable": WASI, "wasi_snapshot_preview1": WASI}


def signature(params, results) -> str:
    """Envoy's way of writing a function type: "i32 i64 -> i32", "void -> i32"."""
    return f"{' '.join(map(str, params)) or 'void'} -> {' '.join(map(str, results)) or 'void'}"


def check(module: str, name: str, params, results) -> str | None:
    """Why Envoy would not link this import (its words), or None."""
    host = HOST.get(module, {}).get(name)
    if host is None:
        return f"Failed to load Wasm module due to a missing import: {module}.{name}"
    wanted = signature(params, results)
    if wanted != host:
        return (f"Failed to load Wasm module due to an import type mismatch: {module}.{name}, "
                f"want: {wanted}, but host exports: {host}")
    return None
