"""Plugins in VMs: the proxy-wasm lifecycle a filter config drives, and this worker's VMs.

    config (xds/http_filters_wasm.py) -> plugin_root(config, stats, node, worker) -> PluginRoot
    PluginRoot.new_stream / request_headers / response_headers / end_stream
    validate(config): the same start in a throwaway VM (translation's check)

A root also runs what the plugin asks of the worker: ticks (proxy_on_tick on the worker's
loop) and callouts (proxy_http_call over its pools, answered to proxy_on_http_call_response);
the check's VM has no worker: no ticks, callouts accepted and never answered.

As Envoy shares them, a worker has one VM per (vm_id, code hash, vm configuration,
environment) and, in it, one root context per plugin (name, root_id, configuration). The
first plugin of a VM starts it: proxy_on_context_create(root, 0), proxy_on_vm_start(root,
vm config size); each plugin then proxy_on_configure(root, plugin config size). A start
that returns false or traps fails the plugin ("Unable to create Wasm plugin", Envoy's
words for the xDS NACK).
"""

from __future__ import annotations

import gc
import logging
import weakref

from ..codecs.message import Headers
from ..stats import Stats
from . import abi, buffers, maps
from .grpc_callout import GrpcCallouts
from .header_check import refused_call
from .queues import SharedQueues
from .vm import VM, Trapped, WasmError, runtime

log = logging.getLogger("baton.wasm")

# This worker's VMs by vm_key, and their plugins by (vm_key, plugin_key), kept weakly: the
# filter factories of the live configs hold their roots, a root its VM, so a plugin no
# config uses any more (an old version of a WasmPlugin) is freed with its VM.
_vms: "weakref.WeakValueDictionary[tuple, VM]" = weakref.WeakValueDictionary()
_roots: "weakref.WeakValueDictionary[tuple, PluginRoot]" = weakref.WeakValueDictionary()


def _weakly(method, default=None):
    """`method` called through a weak reference to its object (the host's hooks must not
    keep a root alive), `default` once it is gone."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        return default if bound is None else bound(*args)
    return call


def vm_key(config: dict) -> tuple:
    return (config["vm_id"], config["sha256"], config["vm_config"],
            tuple(sorted(config["environment"].items())))


def plugin_key(config: dict) -> tuple:
    """Envoy 1.40's plugin identity is the whole PluginConfig but its vm_config (plugin.h's
    key; plugin_test.cc ConfigDifferencesProduceDistinctKeys): filters of one VM differing
    only in failure_policy, allow_on_headers_stop_iteration or reload_config get a root
    each. "identity" (xds/http_filters_wasm.py) is those other fields' bytes."""
    return (config["name"], config["root_id"], config["configuration"],
            config.get("identity", b""))


def _plugin(config: dict) -> abi.Plugin:
    return abi.Plugin(config["name"], config["root_id"], config["vm_id"],
                      config["configuration"])


def _new_vm(config: dict, stats, node, keep: bool = True) -> VM:
    module = runtime().compile(config["code"], config["sha256"], keep)
    # A check's VM (keep=False) gets queues of its own: it must not register in the
    # worker's (or, before the fork, the master's) queues.
    host = abi.AbiHost(config["vm_id"], config["vm_config"], stats, node, log,
                       config["environment"], None if keep else SharedQueues())
    vm = VM(module, host)
    if keep and stats is not None:
        _count_vm(vm, stats, config.get("runtime") or "envoy.wasm.runtime.v8")
    return vm


def _count_vm(vm: VM, stats, runtime: str) -> None:
    """Envoy 1.40's VM stats, as its /stats names them (measured): the counter
    wasm.<runtime>.created, the gauges wasm.<runtime>.active and wasm.wasm_vm_count. A
    worker's VMs are counted; the config check's throwaway VM is not (Envoy's main-thread
    VM, which it keeps, is)."""
    scope = f"wasm.{runtime}."
    stats.counters[scope + "created"] += 1
    gauges = stats.gauges
    gauges[scope + "active"] += 1
    gauges["wasm.wasm_vm_count"] += 1
    weakref.finalize(vm, _vm_gone, gauges, scope + "active")


def _vm_gone(gauges, active: str) -> None:
    gauges[active] -= 1
    gauges["wasm.wasm_vm_count"] -= 1


class PluginRoot:
    """One plugin's root context in a VM, and the calls of its streams."""

    def __init__(self, vm: VM, plugin: abi.Plugin, first: bool, worker=None):
        self.vm = vm
        self.host = vm.host
        self.plugin = plugin
        self.worker = worker            # ticks and callouts (None: a check, no I/O)
        self.loop = worker.loop if worker is not None else None
        self.tick_seconds = 0.0
        self._tick = None
        self.calls: dict = {}           # token -> UpstreamCall of proxy_http_call
        host = self.host
        if worker is None and host.http_caller is None:
            host.http_caller = _never_answered      # a check VM: no I/O
        root = self.root = host.new_context(plugin)
        if worker is not None:
            # Per root: plugins sharing a VM each answer their own callouts (one caller per
            # VM sent every plugin's to the newest, and none once that one was freed).
            host.http_callers[root.id] = _weakly(self.http_call, (abi.INTERNAL_FAILURE, 0))
        host.tick_handlers[root.id] = _weakly(self.set_tick_period)
        if worker is not None:
            host.queue_handlers[root.id] = _weakly(self.queue_ready)
            self.grpc = host.grpc_io[root.id] = GrpcCallouts(worker, _weakly(self.grpc_event),
                                                             host.after_call)
        host.current = root
        vm.call("proxy_on_context_create", root.id, 0)
        if first and vm.has("proxy_on_vm_start") and \
                not vm.call("proxy_on_vm_start", root.id, len(host.vm_config)):
            raise WasmError("proxy_on_vm_start failed")
        if vm.has("proxy_on_configure") and \
                not vm.call("proxy_on_configure", root.id, len(plugin.configuration)):
            raise WasmError("proxy_on_configure failed")
        self.has_response_headers = vm.has("proxy_on_response_headers")
        # Which body and trailer callbacks the module exports: only those make the stream
        # take the body path (proxy-wasm-cpp-host knows the same from the module).
        self.request_body_hooks = (vm.has("proxy_on_request_body"),
                                   vm.has("proxy_on_request_trailers"))
        self.response_body_hooks = (vm.has("proxy_on_response_body"),
                                    vm.has("proxy_on_response_trailers"))
        self.has_log = vm.has("proxy_on_log")

    @property
    def failed(self) -> str:
        return self.vm.failed

    def set_tick_period(self, period_ms: int) -> None:
        """The plugin asks for proxy_on_tick every `period_ms` (0: no more), on the loop."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.tick_seconds = period_ms / 1000
        if period_ms and self.loop is not None:
            self._tick = self.loop.call_later(self.tick_seconds, _weakly(self._on_tick))

    def __del__(self):
        tick = getattr(self, "_tick", None)
        if tick is not None:
            tick.cancel()
        grpc = getattr(self, "grpc", None)
        if grpc is not None:
            grpc.cancel_all()

    def _on_tick(self) -> None:
        self._tick = None
        if self.vm.failed:
            return
        self.host.current = self.root
        try:
            self.vm.call("proxy_on_tick", self.root.id)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.plugin.name, exc)
            return
        if self.tick_seconds and self._tick is None:        # not set again by the tick
            self._tick = self.loop.call_later(self.tick_seconds, _weakly(self._on_tick))

    def queue_ready(self, token: int) -> None:
        """An enqueue on a queue this root registered: proxy_on_queue_ready after the
        current call (Envoy posts it to the owner's dispatcher)."""
        self.loop.call_soon(_weakly(self._on_queue_ready), token)

    def _on_queue_ready(self, token: int) -> None:
        if self.vm.failed or not self.vm.has("proxy_on_queue_ready"):
            return
        self.host.current = self.root
        try:
            self.vm.call("proxy_on_queue_ready", self.root.id, token)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.plugin.name, exc)

    def grpc_event(self, token: int, kind: str, *args) -> None:
        """A gRPC callout's event (grpc_callout.py) to the root's proxy_on_grpc_*, with the
        message, metadata map or close status readable during the call."""
        host, vm, root = self.host, self.vm, self.root
        if vm.failed or root.id not in host.contexts:
            return
        if kind == "message":
            host.grpc_receive = args[0]
            name, size = "proxy_on_grpc_receive", len(args[0])
        elif kind == "close":
            host.status = (args[0], args[1].encode())
            name, size = "proxy_on_grpc_close", args[0]
        else:
            map_kind = abi.GRPC_RECEIVE_INITIAL_METADATA if kind == "initial" else \
                abi.GRPC_RECEIVE_TRAILING_METADATA
            host.grpc_metadata = {map_kind: abi.PairsMap(args[0])}
            name = "proxy_on_grpc_receive_initial_metadata" if kind == "initial" else \
                "proxy_on_grpc_receive_trailing_metadata"
            size = len(args[0])
        if not vm.has(name):
            return
        host.current = root
        try:
            vm.call(name, root.id, token, size)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.plugin.name, exc)
        finally:
            host.grpc_receive = None
            host.grpc_metadata = {}
            host.status = (host.status[0], b"")

    def http_call(self, root: abi.Context, cluster_name: str, request, body: bytes,
                  timeout: float | None):
        """proxy_http_call over the worker's pools to `cluster_name` (upstream_call.py);
        the answer, or its failure (no headers, as Envoy's onHttpCallFailure), goes to
        proxy_on_http_call_response of the calling root after the current VM call."""
        cluster = self.worker.clusters.get(cluster_name)
        if cluster is None:
            return abi.BAD_ARGUMENT, 0
        if refused_call(request):      # headers not valid HTTP: nothing goes upstream
            return abi.INTERNAL_FAILURE, 0
        token = self.host.next_id
        self.host.next_id += 1

        def answered(response, response_body, trailers, failure):
            if response is None:
                response, response_body = _local_answer(failure)
            self.loop.call_soon(self._answer, root, token, response, response_body, trailers)
        from ..proxy.http.upstream_call import UpstreamCall
        call = self.calls[token] = UpstreamCall(self.worker, cluster, answered)
        try:
            call.start(request, body, timeout, False)
        except Exception:   # noqa: BLE001 - a fault of ours must not trap the guest: its VM
            #                 would fail for good
            log.exception("Wasm plugin %s: proxy_http_call to %s", self.plugin.name, cluster_name)
            self.calls.pop(token, None)
            call.cancel()
            return abi.INTERNAL_FAILURE, 0
        return abi.OK, token

    def _answer(self, root, token, response, body, trailers) -> None:
        self.calls.pop(token, None)
        host, vm = self.host, self.vm
        if vm.failed or root.id not in host.contexts:
            return
        headers = abi.PairsMap([(":status", str(response.status)), *response.headers.items]
                               if response is not None else [])
        trailer_map = abi.PairsMap(list(trailers.items) if trailers is not None else [])
        host.call_response = (headers, bytes(body or b""), trailer_map)
        host.current = root
        try:
            vm.call("proxy_on_http_call_response", root.id, token, len(headers.items),
                    len(host.call_response[1]), len(trailer_map.items))
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.plugin.name, exc)
        finally:
            host.call_response = None

    def new_stream(self, stream, request) -> abi.Context:
        host = self.host
        ctx = host.current = host.new_context(self.plugin, self.root, stream, request)
        clear = getattr(stream, "clear_route_cache", None)
        if clear is not None:       # a change of the request headers routes it again
            ctx.maps[abi.REQUEST_HEADERS].changed = clear
        self.vm.call("proxy_on_context_create", ctx.id, self.root.id)
        return ctx

    def request_headers(self, ctx: abi.Context, end_stream: bool) -> int:
        self.host.current = ctx
        count = len(ctx.request.headers.items) + 4
        return self.vm.call("proxy_on_request_headers", ctx.id, count, int(end_stream)) or 0

    def response_headers(self, ctx: abi.Context, response, end_stream: bool) -> int:
        ctx.set_response(response)
        if not self.has_response_headers:
            return abi.CONTINUE
        self.host.current = ctx
        return self.vm.call("proxy_on_response_headers", ctx.id,
                            len(response.headers.items) + 1, int(end_stream)) or 0

    def body(self, ctx: abi.Context, kind: int, data: bytearray, end_stream: bool):
        """proxy_on_request_body / proxy_on_response_body (`kind`: abi.REQUEST_BODY or
        RESPONSE_BODY) with `data`, the chunk or all that was buffered: the body size and
        end_of_stream, as Envoy's Context::decodeData / encodeData. At the end of a stream
        without trailers the plugin may add some (Envoy's addDecodedTrailers /
        addEncodedTrailers): -> (FilterDataStatus, the trailers it added or None)."""
        bodies = ctx.bodies
        if bodies is None:
            bodies = ctx.bodies = buffers.Bodies()
        trailer_kind = abi.REQUEST_TRAILERS if kind == abi.REQUEST_BODY else \
            abi.RESPONSE_TRAILERS
        added = None
        if end_stream and trailer_kind not in ctx.maps:
            added = ctx.maps[trailer_kind] = maps.HeadersMap(Headers())
        bodies.enter(kind, data, end_stream)
        self.host.current = ctx
        status = abi.CONTINUE
        try:
            status = self.vm.call("proxy_on_request_body" if kind == abi.REQUEST_BODY else
                                  "proxy_on_response_body", ctx.id, len(data),
                                  int(end_stream)) or 0
        finally:
            bodies.leave(kind, status == abi.STOP_ITERATION)
            if added is not None:
                del ctx.maps[trailer_kind]
        return status, (added.headers if added is not None and added.items else None)

    def trailers(self, ctx: abi.Context, kind: int, trailers) -> int:
        """proxy_on_request_trailers / proxy_on_response_trailers (`kind`: the map type):
        the plugin sees and may change `trailers` (a Headers)."""
        ctx.maps[kind] = maps.HeadersMap(trailers)
        self.host.current = ctx
        return self.vm.call("proxy_on_request_trailers" if kind == abi.REQUEST_TRAILERS else
                            "proxy_on_response_trailers", ctx.id, len(trailers.items)) or 0

    def end_stream(self, ctx: abi.Context) -> None:
        """proxy_on_done, then (a plugin that is done) proxy_on_log and proxy_on_delete."""
        host, vm = self.host, self.vm
        try:
            if vm.failed:
                return
            host.current = ctx
            if vm.call("proxy_on_done", ctx.id) in (None, 1):
                if self.has_log:
                    # The headers that went on are there again, read-only (Envoy's access
                    # log phase: the access logger's maps); the request trailers are not.
                    ctx.logging = True
                    ctx.maps.pop(abi.REQUEST_TRAILERS, None)
                    if ctx.request is not None:
                        ctx.maps[abi.REQUEST_HEADERS] = maps.RequestMap(ctx.request)
                    if ctx.response is not None:
                        ctx.maps[abi.RESPONSE_HEADERS] = maps.ResponseMap(ctx.response)
                    else:
                        ctx.maps.pop(abi.RESPONSE_HEADERS, None)
                    vm.call("proxy_on_log", ctx.id)
                vm.call("proxy_on_delete", ctx.id)
        finally:
            host.contexts.pop(ctx.id, None)
            host.declared.pop(ctx.id, None)     # declare_property's, from this stream
            host.current = None


def _local_answer(failure: str):
    """What Envoy's AsyncClient answers a callout that got no response: its router's local
    reply (504 on a timeout, else 503 with the reason), not a failure (checked with Envoy
    1.40: a callout to a port nobody listens on gets :status 503)."""
    from ..codecs.message import Headers, Response
    body = b"upstream request timeout" if failure == "timeout" else \
        f"upstream connect error or disconnect/reset before headers. reset reason: {failure}" \
        .encode()
    headers = Headers([("content-length", str(len(body))), ("content-type", "text/plain")])
    return Response(504 if failure == "timeout" else 503, headers), body


def _never_answered(root, cluster, request, body, timeout):
    """proxy_http_call in a check's VM: accepted, never answered (no I/O there)."""
    return abi.OK, 0


def plugin_root(config: dict, stats, node, worker=None) -> PluginRoot:
    """This worker's root of the plugin `config` names (started on first use). Raises
    WasmError when the module or the plugin cannot start."""
    if config.get("failed"):            # remote code that could not be fetched
        raise WasmError(config["failed"])
    vkey = vm_key(config)
    key = (vkey, plugin_key(config))
    root = _roots.get(key)
    if root is not None and not root.failed:
        return root
    vm = _vms.get(vkey)
    first = vm is None or bool(vm.failed)
    if first:
        vm = _vms[vkey] = _new_vm(config, stats, node)
    try:
        root = PluginRoot(vm, _plugin(config), first, worker)
    except Trapped as exc:
        raise WasmError(str(exc)) from None
    _roots[key] = root
    return root


_validated: set = set()         # (vm_key, plugin_key) of the plugins that started


def validate(config: dict) -> None:
    """Start the plugin in a VM of its own and drop it; WasmError says why it cannot run.
    A plugin that started once is not started again (an xDS update translates every
    listener again: each check costs a compile, 20-70 ms for a 20 KB module)."""
    key = (vm_key(config), plugin_key(config))
    if key in _validated:
        return
    vm = None
    try:
        vm = _new_vm(config, Stats(), {}, keep=False)       # inside: the cleanup always runs
        PluginRoot(vm, _plugin(config), True)
        _validated.add(key)
    except Trapped as exc:
        raise WasmError(str(exc)) from None
    finally:
        if vm is not None:
            vm.close()
        del vm
        # The VM's hostcalls and the VM refer to each other: free it now, in this process,
        # not in a worker forked later (vm.py, _inherited).
        gc.collect()
