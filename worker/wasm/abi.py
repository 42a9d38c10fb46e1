"""The proxy-wasm ABI 0.2.x host, sans-IO: what each hostcall means, with no wasm runtime.

The adapter (vm.py) turns a hostcall's (pointer, length) arguments into bytes, calls the
method here and copies what it returns into guest memory. Nothing here touches wasmtime,
a socket or a timer, so every semantic is unit-testable (tests/unit/test_wasm_abi.py).

Spec: proxy-wasm/spec abi-versions/v0.2.1; where the spec is silent, Envoy's host
(proxy-wasm-cpp-host and Envoy's source/extensions/common/wasm) decides:

- Header maps *view* Baton's Request / Response, pseudo-headers included (maps.py);
  properties are Envoy's attribute names (properties.py).
- A missing header is NOT_FOUND (Envoy's Context::getHeaderMapValue); a map the stream
  has not reached yet (response headers during the request) is an empty map; trailers not
  there yet are no map (get and add BAD_ARGUMENT, no pairs). In proxy_on_log the maps are
  read-only (a change is BAD_ARGUMENT) and one the stream lacks is NOT_FOUND.
- An empty buffer read writes nothing (the AssemblyScript SDK relies on it): the adapter's
  job, see vm.py.
- Metrics are Envoy's "wasmcustom.<name>": counters and gauges in the worker's Stats;
  histograms are accepted and not exported (Baton's Stats has none).
- Shared data is per worker process and per vm_id (Envoy: per process), as Baton's
  local_ratelimit bucket is per worker.
"""

from __future__ import annotations

import logging
import time

from ..codecs.message import Headers, Request
from . import buffers, foreign
from .maps import (PairsMap, RequestMap, ResponseMap, _raw, _text,  # noqa: F401 - the ABI's
                   parse_pairs, serialize_pairs)
from .properties import encode_property, stream_property  # noqa: F401
from .queues import WORKER as WORKER_QUEUES, SharedQueues

# proxy_status_t
OK, NOT_FOUND, BAD_ARGUMENT, SERIALIZATION_FAILURE, PARSE_FAILURE = 0, 1, 2, 3, 4
INVALID_MEMORY_ACCESS, EMPTY, CAS_MISMATCH, INTERNAL_FAILURE, UNIMPLEMENTED = 6, 7, 8, 10, 12
# proxy_map_type_t
REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_TRAILERS = 0, 1, 2, 3
CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS = 6, 7
GRPC_RECEIVE_INITIAL_METADATA, GRPC_RECEIVE_TRAILING_METADATA = 4, 5
GRPC_RECEIVE_BUFFER = 5                     # proxy_buffer_type_t
# proxy_buffer_type_t
REQUEST_BODY, RESPONSE_BODY, CALL_RESPONSE_BODY, VM_CONFIGURATION, PLUGIN_CONFIGURATION = \
    0, 1, 4, 6, 7
# proxy_metric_type_t
COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
# proxy_log_level_t -> Python logging
LOG_LEVELS = (5, 10, 20, 30, 40, 50)        # trace (below debug), debug, info, warn, error, critical
# proxy_filter_headers_status_t: Continue 0; anything else stops the filter chain
CONTINUE, STOP_ITERATION = 0, 1

METRIC_PREFIX = "wasmcustom."
GRPC_STATUS_LAST = 16           # UNAUTHENTICATED


class Plugin:
    """One root context's identity and configuration (one filter config)."""

    __slots__ = ("name", "root_id", "vm_id", "configuration", "direction")

    def __init__(self, name: str, root_id: str, vm_id: str, configuration: bytes,
                 direction: int = 0):
        self.name = name
        self.root_id = root_id
        self.vm_id = vm_id
        self.configuration = configuration
        self.direction = direction       # listener_direction: 0 unspecified, 1 in, 2 out


class Context:
    """A root context (stream is None) or one HTTP stream's context."""

    __slots__ = ("id", "plugin", "root", "stream", "request", "response", "maps",
                 "local_reply", "continued", "resume", "properties", "bodies", "logging")

    def __init__(self, context_id: int, plugin: Plugin, root: "Context | None" = None,
                 stream=None, request=None):
        self.id = context_id
        self.plugin = plugin
        self.root = root
        self.stream = stream            # Baton's stream (its .info), or None
        self.request = request
        self.response = None
        self.maps: dict = {}
        if request is not None:
            self.maps[REQUEST_HEADERS] = RequestMap(request)
        self.local_reply = None         # (status, details, body, [(name, value)], grpc_status)
        self.continued = False          # proxy_continue_stream asked for
        self.resume = None              # set by a paused filter: resumes its stream
        self.properties: dict = {}      # set by the guest (proxy_set_property)
        self.bodies = None              # buffers.Bodies, once a body callback ran
        self.logging = False            # in proxy_on_log: the maps are read-only

    def set_response(self, response) -> None:
        self.response = response
        self.maps[RESPONSE_HEADERS] = ResponseMap(response)


# --- the host --------------------------------------------------------------------------------

_SHARED: dict[str, dict[bytes, tuple[bytes, int]]] = {}        # vm_id -> key -> (value, cas)


def shared_data(vm_id: str) -> dict:
    """This worker's shared data of a vm_id (Envoy shares it per process and vm_id)."""
    return _SHARED.setdefault(vm_id, {})


class AbiHost:
    """The host side of one VM: its contexts, metrics, shared data, VM configuration.

    `stats`: a worker/stats.py Stats (its counters and gauges); `node`: the bootstrap's node;
    `log`: a logging.Logger."""

    def __init__(self, vm_id: str = "", vm_config: bytes = b"", stats=None, node=None,
                 log: logging.Logger | None = None, environment: dict | None = None,
                 queues: SharedQueues | None = None):
        self.vm_id = vm_id
        self.vm_config = vm_config
        self.stats = stats
        self.node = node or {}
        self.log = log or logging.getLogger("baton.wasm")
        self.environment = environment or {}      # vm_config.environment_variables
        self.contexts: dict[int, Context] = {}
        self.current: Context | None = None
        self.metrics: dict[int, tuple[int, str]] = {}   # id -> (type, full stat name)
        self.metric_ids: dict[tuple[int, str], int] = {}
        self.shared = shared_data(vm_id)
        self.queues = queues if queues is not None else WORKER_QUEUES
        self.queue_handlers: dict = {}             # root context id -> f(token): queue ready
        self.declared: dict = {}    # context id -> {property: readonly} (declare_property)
        self.tick_handlers: dict = {}              # root context id -> f(period ms)
        # proxy_http_call's I/O: f(root context, cluster, Request, body, timeout s) ->
        # (status, token), set by the plugin layer (worker/wasm/plugin.py)
        self.http_caller = None
        self.http_callers: dict = {}               # root context id -> its own http_caller
        self.call_response = None   # during proxy_on_http_call_response: (headers, body, trailers)
        # gRPC callouts (grpc_callout.py): root context id -> its GrpcCallouts; during the
        # callbacks the message, the metadata map and the close status
        self.grpc_io: dict = {}
        self.after_call: list = []  # run when the VM call returns (Envoy's after-VM-call actions)
        self.next_grpc_call, self.next_grpc_stream = 1, 2      # Envoy: calls odd, streams even
        self.grpc_receive: bytes | None = None
        self.grpc_metadata: dict = {}
        self.status: tuple[int, bytes] = (0, b"")
        self.unimplemented: dict[str, int] = {}    # hostcall -> calls answered UNIMPLEMENTED
        self.next_id = 1

    def new_context(self, plugin: Plugin, root: Context | None = None, stream=None,
                    request=None) -> Context:
        ctx = Context(self.next_id, plugin, root, stream, request)
        self.next_id += 1
        self.contexts[ctx.id] = ctx
        return ctx

    def log_level(self) -> int:
        """proxy_get_log_level: the lowest level the logger would write (SDKs skip the rest)."""
        effective = self.log.getEffectiveLevel()
        for level, threshold in enumerate(LOG_LEVELS):
            if threshold >= effective:
                return level
        return 5

    def log_enabled(self, level: int) -> bool:
        return self.log.isEnabledFor(LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS)
                                     else logging.ERROR)

    def proxy_log(self, level: int, message: bytes) -> int:
        py_level = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else logging.ERROR
        if self.log.isEnabledFor(py_level):
            plugin = self.current.plugin if self.current is not None else None
            self.log.log(py_level, "wasm log %s %s %s: %s",
                         plugin.name if plugin else "", plugin.root_id if plugin else "",
                         self.vm_id, message.decode("utf-8", "replace"))
        return OK

    # -- buffers ----------------------------------------------------------------------------
    def get_buffer(self, kind: int) -> tuple[int, bytes]:
        if kind == VM_CONFIGURATION:
            return OK, self.vm_config
        if kind == PLUGIN_CONFIGURATION:
            ctx = self.current
            return (OK, ctx.plugin.configuration) if ctx is not None else (NOT_FOUND, b"")
        if kind == CALL_RESPONSE_BODY and self.call_response is not None:
            return OK, self.call_response[1]
        if kind == GRPC_RECEIVE_BUFFER and self.grpc_receive is not None:
            return OK, self.grpc_receive
        body = self._body(kind)
        if body is not None:
            return OK, bytes(body)
        return NOT_FOUND, b""

    def _body(self, kind: int):
        """The stream's body buffer of this type while the plugin may see it (buffers.py)."""
        if kind != REQUEST_BODY and kind != RESPONSE_BODY:
            return None
        ctx = self.current
        bodies = ctx.bodies if ctx is not None else None
        return bodies.get(kind) if bodies is not None else None

    def set_buffer(self, kind: int, start: int, length: int, data: bytes) -> int:
        """proxy_set_buffer_bytes: Envoy's edits of a body (buffers.replace); a buffer that
        is not a body, or a body not there now, is NOT_FOUND."""
        body = self._body(kind)
        if body is None:
            return NOT_FOUND
        return OK if buffers.replace(body, start, length, data) else BAD_ARGUMENT

    # -- header maps --------------------------------------------------------------------------
    def _map(self, kind: int):
        if kind in self.grpc_metadata:      # during a gRPC callout's metadata callback
            return self.grpc_metadata[kind]
        if kind in (CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS):
            response = self.call_response
            return None if response is None else \
                response[0] if kind == CALL_RESPONSE_HEADERS else response[2]
        ctx = self.current
        if ctx is None or kind < 0 or kind > RESPONSE_TRAILERS:
            return None
        found = ctx.maps.get(kind)
        if found is None and ctx.request is not None and kind not in ctx.maps and \
                kind == RESPONSE_HEADERS:
            found = ctx.maps[kind] = PairsMap()       # not there yet: an empty map
        # (None kept in maps: gone on, worker/proxy/http/wasm.py.) Trailers not there yet
        # are no map: get and add BAD_ARGUMENT, the pairs empty (Envoy 1.40, measured:
        # tests/integration/test_differential_wasm_log_phase.py).
        return found

    def _stream_map(self, kind: int) -> bool:
        """`kind` is one of the current stream's four maps (there or not)."""
        ctx = self.current
        return ctx is not None and ctx.request is not None and \
            REQUEST_HEADERS <= kind <= RESPONSE_TRAILERS and kind not in self.grpc_metadata

    def get_header(self, kind: int, key: bytes) -> tuple[int, bytes]:
        m = self._map(kind)
        if m is None:
            # In the log phase a map the stream does not have is NOT_FOUND (Envoy's
            # Context::getHeaderMapValue, access_log_phase_), else BAD_ARGUMENT.
            logging = self._stream_map(kind) and self.current.logging
            return (NOT_FOUND if logging else BAD_ARGUMENT), b""
        value = m.get(key)
        return (NOT_FOUND, b"") if value is None else (OK, value)

    def get_pairs(self, kind: int) -> tuple[int, bytes]:
        m = self._map(kind)
        if m is None:
            # A stream's map that has gone on, or is not there yet, is no pairs (Envoy's
            # getHeaderMapPairs of a null map).
            return (OK, b"") if self._stream_map(kind) else (BAD_ARGUMENT, b"")
        return OK, serialize_pairs(m.pairs())

    def _writable(self, kind: int):
        """The map `kind` if the plugin may change it now: in the log phase none (Envoy's
        getMap has no access-log maps: BAD_ARGUMENT, measured)."""
        ctx = self.current
        if ctx is not None and ctx.logging and self._stream_map(kind):
            return None
        return self._map(kind)

    def set_pairs(self, kind: int, data: bytes) -> int:
        m = self._writable(kind)
        if m is None:
            return BAD_ARGUMENT
        try:
            m.set_pairs(parse_pairs(data))
        except ValueError:
            return PARSE_FAILURE
        return OK

    def _edit(self, kind: int, edit: str, *args) -> int:
        m = self._writable(kind)
        if m is None:
            return BAD_ARGUMENT
        getattr(m, edit)(*args)
        return OK

    def add_header(self, kind: int, key: bytes, value: bytes) -> int:
        return self._edit(kind, "add", key, value)

    def replace_header(self, kind: int, key: bytes, value: bytes) -> int:
        return self._edit(kind, "replace", key, value)

    def remove_header(self, kind: int, key: bytes) -> int:
        return self._edit(kind, "remove", key)

    # -- stream control -------------------------------------------------------------------------
    def send_local_response(self, status: int, details: bytes, body: bytes, headers: bytes,
                            grpc_status: int) -> int:
        ctx = self.current
        if ctx is None or ctx.request is None:
            return BAD_ARGUMENT
        try:
            pairs = parse_pairs(headers)
        except ValueError:
            return PARSE_FAILURE
        # The grpc_status a gRPC request gets; -1 is none, and so is anything past gRPC's
        # last code (16, UNAUTHENTICATED): the HTTP status maps then (measured on Envoy 1.40:
        # 17 and 72 answer 14 for a 503; tests/integration/test_differential_wasm_host.py).
        ctx.local_reply = (status, _text(details), body,
                           [(_text(k).lower(), _text(v)) for k, v in pairs],
                           grpc_status if 0 <= grpc_status <= GRPC_STATUS_LAST else None)
        if ctx.resume is not None:      # a paused stream (answered from a callout, say)
            ctx.resume()
        return OK

    def http_call(self, cluster: bytes, headers: bytes, body: bytes, trailers: bytes,
                  timeout_ms: int) -> tuple[int, int]:
        """proxy_http_call, on behalf of the current context's root (Envoy's cpp-host makes
        the root context the caller: its proxy_on_http_call_response gets the answer).
        Envoy's BAD_ARGUMENT: no :method, :path or :authority; an unknown cluster."""
        ctx = self.current
        if ctx is None:
            return BAD_ARGUMENT, 0
        try:
            pairs = parse_pairs(headers)
            parse_pairs(trailers)
        except ValueError:
            return PARSE_FAILURE, 0
        pseudo = {k: _text(v) for k, v in pairs if k[:1] == b":"}
        if not all(pseudo.get(name) for name in (b":method", b":path", b":authority")):
            return BAD_ARGUMENT, 0
        request = Request(pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"],
                          Headers([(_text(k).lower(), _text(v)) for k, v in pairs
                                   if k[:1] != b":"]),
                          pseudo.get(b":scheme") or "http")
        # What Envoy 1.40's AsyncClient and router add to the call (measured:
        # tests/integration/test_differential_wasm_http_call_request.py): the call is
        # internal, and its timeout is announced.
        request.headers.set("x-envoy-internal", "true")
        if timeout_ms:
            request.headers.set("x-envoy-expected-rq-timeout-ms", str(timeout_ms))
        root = ctx.root or ctx
        caller = self.http_callers.get(root.id, self.http_caller)
        if caller is None:
            return UNIMPLEMENTED, 0
        return caller(root, _text(cluster), request, body,
                      timeout_ms / 1000 if timeout_ms else None)

    # -- gRPC callouts (grpc_callout.py) ---------------------------------------------------------
    def _grpc_open(self, service: bytes, service_name: bytes, method: bytes, metadata: bytes,
                   timeout_ms: int, unary: bool):
        """(status, token, Callout or None) of a new call or stream of the current root."""
        ctx = self.current
        if ctx is None:
            return BAD_ARGUMENT, 0, None
        try:
            pairs = [(_text(k).lower(), _text(v)) for k, v in parse_pairs(metadata)]
        except ValueError:      # cpp-host's toPairs gives no pairs for a bad map: no metadata
            pairs = []
        token = self.next_grpc_call if unary else self.next_grpc_stream
        callouts = self.grpc_io.get((ctx.root or ctx).id)
        if callouts is None:                # a check's VM: accepted, never answered
            return OK, token, None
        try:
            status, call = callouts.open(token, service, _text(service_name), _text(method),
                                         pairs, timeout_ms / 1000 if timeout_ms else None, unary)
        except Exception:   # noqa: BLE001 - a fault of ours must not trap the guest
            self.log.exception("Wasm: proxy_grpc_%s", "call" if unary else "stream")
            return INTERNAL_FAILURE, 0, None
        if call is None:
            return status, 0, None
        if unary:               # the token is taken (by a call that failed at once too)
            self.next_grpc_call += 2
        else:
            self.next_grpc_stream += 2
        return status, token, call

    def grpc_call(self, service: bytes, service_name: bytes, method: bytes, metadata: bytes,
                  message: bytes, timeout_ms: int) -> tuple[int, int]:
        status, token, call = self._grpc_open(service, service_name, method, metadata,
                                              timeout_ms, True)
        if call is not None:
            call.send(message, True)
        return status, token

    def grpc_stream(self, service: bytes, service_name: bytes, method: bytes,
                    metadata: bytes) -> tuple[int, int]:
        status, token, _ = self._grpc_open(service, service_name, method, metadata, 0, False)
        return status, token

    def _grpc_token(self, operation: str, token: int, *args) -> int:
        ctx = self.current
        callouts = None if ctx is None else self.grpc_io.get((ctx.root or ctx).id)
        return NOT_FOUND if callouts is None else getattr(callouts, operation)(token, *args)

    def grpc_send(self, token: int, message: bytes, end_stream: int) -> int:
        return self._grpc_token("send", token, message, bool(end_stream))

    def grpc_close(self, token: int) -> int:
        return self._grpc_token("close", token)

    def grpc_cancel(self, token: int) -> int:
        return self._grpc_token("cancel", token)

    def continue_stream(self, stream_type: int) -> int:
        ctx = self.current
        if ctx is None or ctx.request is None:
            return BAD_ARGUMENT
        ctx.continued = True
        if ctx.resume is not None:
            ctx.resume()
        return OK

    def set_tick_period(self, period_ms: int) -> int:
        """proxy_set_tick_period_milliseconds: for the current context's root (0 stops)."""
        ctx = self.current
        if ctx is None:
            return BAD_ARGUMENT
        handler = self.tick_handlers.get((ctx.root or ctx).id)
        if handler is not None:
            handler(period_ms)
        return OK

    def set_effective_context(self, context_id: int) -> int:
        ctx = self.contexts.get(context_id)
        if ctx is None:
            return BAD_ARGUMENT
        self.current = ctx
        return OK

    # -- properties ------------------------------------------------------------------------------
    def get_property(self, path: bytes) -> tuple[int, bytes]:
        ctx = self.current
        if ctx is None:
            return NOT_FOUND, b""
        if path in ctx.properties:
            return OK, ctx.properties[path]
        parts = tuple(_text(p) for p in path.rstrip(b"\0").split(b"\0"))
        if len(parts) == 1 and "." in parts[0]:     # "request.path" written as one segment
            parts = tuple(parts[0].split("."))
        value = encode_property(stream_property(ctx, self.node, parts))
        return (NOT_FOUND, b"") if value is None else (OK, value)

    def set_property(self, path: bytes, value: bytes) -> int:
        ctx = self.current
        if ctx is None:
            return NOT_FOUND
        # A property the root declared readonly (foreign.py) is set once per stream.
        if path in ctx.properties and \
                self.declared.get((ctx.root or ctx).id, {}).get(path):
            return BAD_ARGUMENT
        ctx.properties[path] = value
        return OK

    def call_foreign_function(self, name: bytes, arguments: bytes) -> tuple[int, bytes]:
        return foreign.call(self, name, arguments)

    # -- metrics ---------------------------------------------------------------------------------
    def define_metric(self, kind: int, name: bytes) -> tuple[int, int]:
        if kind not in (COUNTER, GAUGE, HISTOGRAM):
            return BAD_ARGUMENT, 0
        full = METRIC_PREFIX + name.decode("utf-8", "replace")
        key = (kind, full)
        metric_id = self.metric_ids.get(key)
        if metric_id is None:
            # Envoy's ids carry the type in their low bits; any unique number will do here.
            metric_id = self.metric_ids[key] = len(self.metrics) + 1
            self.metrics[metric_id] = key
            if self.stats is not None and kind == COUNTER:
                self.stats.counters[full] += 0
            elif self.stats is not None and kind == GAUGE:
                self.stats.gauges[full] += 0
        return OK, metric_id

    def _stat(self, metric_id: int):
        """(kind, the Stats table it counts in (None: a histogram), name), or None."""
        metric = self.metrics.get(metric_id)
        if metric is None:
            return None
        kind, name = metric
        table = self.stats.counters if kind == COUNTER else \
            self.stats.gauges if kind == GAUGE else None
        return kind, table, name

    def increment_metric(self, metric_id: int, delta: int) -> int:
        found = self._stat(metric_id)
        if found is None:
            return NOT_FOUND
        kind, table, name = found
        if table is None:
            return BAD_ARGUMENT
        if kind == GAUGE or delta > 0:      # a counter never goes down
            table[name] += delta
        return OK

    def record_metric(self, metric_id: int, value: int) -> int:
        found = self._stat(metric_id)
        if found is None:
            return NOT_FOUND
        kind, table, name = found
        if table is not None:               # a histogram's sample: not exported
            if kind == COUNTER:
                table[name] += value
            else:
                table[name] = value
        return OK

    def get_metric(self, metric_id: int) -> tuple[int, int]:
        found = self._stat(metric_id)
        if found is None:
            return NOT_FOUND, 0
        _, table, name = found
        return (BAD_ARGUMENT, 0) if table is None else (OK, table.get(name, 0))

    # -- shared data -----------------------------------------------------------------------------
    def get_shared_data(self, key: bytes) -> tuple[int, bytes, int]:
        found = self.shared.get(key)
        return (NOT_FOUND, b"", 0) if found is None else (OK, found[0], found[1])

    def set_shared_data(self, key: bytes, value: bytes, cas: int) -> int:
        current = self.shared.get(key)
        if cas and current is not None and current[1] != cas:
            return CAS_MISMATCH
        self.shared[key] = (value, current[1] + 1 if current else 1)
        return OK

    # -- shared queues (queues.py) -------------------------------------------------------------
    def register_shared_queue(self, name: bytes) -> tuple[int, int]:
        """The queue (vm_id, name), owned by the current context's root (Envoy: the root is
        the one proxy_on_queue_ready tells)."""
        ctx = self.current
        if ctx is None:
            return BAD_ARGUMENT, 0
        root = ctx.root or ctx
        handler = self.queue_handlers.get(root.id)
        notify = None if handler is None else lambda _context_id, token: handler(token)
        return OK, self.queues.register(self.vm_id, name, root.id, notify)

    def resolve_shared_queue(self, vm_id: bytes, name: bytes) -> tuple[int, int]:
        token = self.queues.resolve(_text(vm_id), name)
        return (OK, token) if token else (NOT_FOUND, 0)

    def enqueue_shared_queue(self, token: int, data: bytes) -> int:
        return self.queues.enqueue(token, data)

    def dequeue_shared_queue(self, token: int) -> tuple[int, bytes]:
        return self.queues.dequeue(token)

    # -- time, environment -----------------------------------------------------------------------
    @staticmethod
    def now_ns() -> int:
        return time.time_ns()

    def environ(self) -> list[bytes]:
        """WASI environ_get's entries: KEY=VALUE."""
        return [_raw(f"{k}={v}") for k, v in self.environment.items()]

    def unimplemented_call(self, name: str) -> int:
        self.unimplemented[name] = self.unimplemented.get(name, 0) + 1
        return UNIMPLEMENTED
