"""proxy_call_foreign_function: the functions Envoy's host registers by name, sans-IO.

    call(host, name, arguments) -> (status, result bytes)

Envoy 1.40 registers (source/extensions/common/wasm/foreign.cc): compress, uncompress,
declare_property, set_envoy_filter_state, clear_route_cache, sign, verify_signature and the
CEL trio expr_create / expr_evaluate / expr_delete. A name it does not register is NOT_FOUND.
Here:

- compress / uncompress: zlib's compress() and uncompress() (the zlib format, default level);
  data that does not inflate to one whole stream is SERIALIZATION_FAILURE. Envoy grows its
  output buffer without a bound; here the result is at most MAX_RESULT (16 MiB), past it
  SERIALIZATION_FAILURE: a 508 KiB bomb inflated to vm.py's 512 MiB memory cap took 2.3 s of
  CPU and 1 GiB of the worker. The time a foreign function takes is the guest's (charged():
  other hostcalls give theirs back), so a guest looping on them meets its deadline.
- declare_property (DeclarePropertyArguments: name, readonly, type, schema, span): declares
  a property of the calling context (Envoy keeps them per context and proxy_set_property
  consults the root's); declaring a name twice is BAD_ARGUMENT; a readonly property takes
  one proxy_set_property per stream, the next is BAD_ARGUMENT (Envoy's CelState).
- set_envoy_filter_state (SetEnvoyFilterStateArguments: path, value, span): Envoy builds the
  object with the filter state factory registered for `path`, NOT_FOUND when there is none.
  Baton has no filter state objects a plugin could set that anything reads: NOT_FOUND for
  every path.
- clear_route_cache: the calling stream's route is chosen again once its filters are
  through (Stream.clear_route_cache, worker/proxy/http/route_again.py); OK, as Envoy.
- sign, verify_signature, expr_*: UNIMPLEMENTED (no CEL runtime here).
"""

from __future__ import annotations

import zlib

OK, NOT_FOUND, BAD_ARGUMENT, SERIALIZATION_FAILURE, UNIMPLEMENTED = 0, 1, 2, 3, 12

MAX_RESULT = 16 << 20           # inflated bytes a call may give (Baton's bound; Envoy: none)


class PastDeadline(Exception):
    """A foreign function ended past the VM call's deadline: a trap in the guest."""


def charged(vm, function, *args):
    """function(*args), its time counted as the guest's. vm.py gives the epoch ticks a
    hostcall took back to the guest when it returns (the host's work, not the guest's): the
    deadline moved earlier by as many makes that give back nothing, and a call that ends
    past the deadline traps (wasmtime only checks the epoch in guest code, and a guest whose
    time goes into these calls would rarely be there when a tick comes)."""
    entered = vm.tick()
    result = function(*args)
    if not vm.charge_since(entered):
        raise PastDeadline("the VM call's deadline passed in a foreign function")
    return result


def _compress(host, arguments: bytes):
    return OK, zlib.compress(arguments)


def _uncompress(host, arguments: bytes):
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(arguments, MAX_RESULT)
    except zlib.error:
        return SERIALIZATION_FAILURE, b""
    if not inflater.eof:            # truncated, or larger than a VM could take
        return SERIALIZATION_FAILURE, b""
    return OK, out


def wire_fields(data: bytes) -> dict[int, object] | None:
    """A protobuf message's fields (varints as int, length-delimited as bytes; the last
    occurrence wins, as for a singular field), None when the bytes are not one."""
    fields: dict[int, object] = {}
    i, n = 0, len(data)

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value
    try:
        while i < n:
            key = varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                fields[number] = varint()
            elif wire == 2:
                size = varint()
                if i + size > n:
                    return None
                fields[number] = data[i:i + size]
                i += size
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if i + width > n:
                    return None
                fields[number] = data[i:i + width]
                i += width
            else:
                return None
    except ValueError:
        return None
    return fields


def _declare_property(host, arguments: bytes):
    fields = wire_fields(arguments)
    ctx = host.current
    if fields is None or ctx is None:
        return BAD_ARGUMENT, b""
    name = fields.get(1, b"")
    name = name if isinstance(name, bytes) else b""
    declared = host.declared.setdefault(ctx.id, {})
    if name in declared:
        return BAD_ARGUMENT, b""
    declared[name] = bool(fields.get(2, 0))         # readonly
    return OK, b""


def _set_envoy_filter_state(host, arguments: bytes):
    if wire_fields(arguments) is None:
        return BAD_ARGUMENT, b""
    return NOT_FOUND, b""


def _clear_route_cache(host, arguments: bytes):
    ctx = host.current
    clear = getattr(ctx.stream, "clear_route_cache", None) if ctx is not None else None
    if clear is not None:
        clear()
    return OK, b""


def _unimplemented(host, arguments: bytes):
    return UNIMPLEMENTED, b""


FUNCTIONS = {
    "compress": _compress,
    "uncompress": _uncompress,
    "declare_property": _declare_property,
    "set_envoy_filter_state": _set_envoy_filter_state,
    "clear_route_cache": _clear_route_cache,
    "sign": _unimplemented,
    "verify_signature": _unimplemented,
    "expr_create": _unimplemented,
    "expr_evaluate": _unimplemented,
    "expr_delete": _unimplemented,
}


def call(host, name: bytes, arguments: bytes) -> tuple[int, bytes]:
    function = FUNCTIONS.get(name.decode("utf-8", "replace"))
    if function is None:
        return NOT_FOUND, b""
    return function(host, arguments)
