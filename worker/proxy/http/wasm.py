"""envoy.extensions.filters.http.wasm.v3.Wasm: a proxy-wasm plugin as an HTTP filter.

Config: xds/http_filters_wasm.py. The plugin runs in this worker's VM for its vm_id, code
and vm configuration (worker/wasm/plugin.py); each request gets a stream context:

- proxy_on_request_headers: the plugin may change the request's headers (pseudo-headers
  included); a proxy_send_local_response answers the request (its status, body, headers and
  details, as Envoy's sendLocalReply: text/plain when there is a body); Pause holds the
  request, its body too, until the plugin calls proxy_continue_stream; with the plugin
  config's allow_on_headers_stop_iteration the body still reaches the plugin, whose body
  callback's Continue lets the headers go on (headers_action); the same for the response.
- Once a callback's headers (or trailers) have gone on, the plugin can no longer read or
  change them: BAD_ARGUMENT, as Envoy's Context that forgot them (_gone); proxy_on_log
  reads them again.
- proxy_on_response_headers: on the upstream's response and on a local reply alike (this
  filter's own too: Envoy runs the encoder filters on its local replies).
- At the end of the stream: proxy_on_done, proxy_on_log, proxy_on_delete.

A VM that failed (it did not start, or trapped: its state is lost, as in Envoy) answers
every request 503 "wasm_fail_stream" (Envoy's Context::failStream), unless fail_open
(FAIL_OPEN): then the filter steps aside. With FAIL_RELOAD the next request starts the
plugin in a new VM and goes through it, unless the failed VM was started less than the
backoff's base interval ago (1 s unless reload_config says; Envoy jitters it up to 1.5 s):
then it fails closed. Envoy 1.40 counts these as wasm.<plugin>.vm_reload_backoff,
vm_reload_success, vm_reload_failure (its PluginConfigTest.FailReloadPolicy, and checked
against it: tests/integration/test_differential_wasm_safety.py); the default policy never
reloads. A plugin's ticks (proxy_on_tick), callouts (proxy_http_call; gRPC:
worker/wasm/grpc_callout.py) and shared queues (worker/wasm/queues.py) run on the worker's
loop and pools (worker/wasm/plugin.py); a stream the plugin paused goes on, or gets its local
reply, when the plugin says so from a callout's answer. Body and trailer callbacks run on the
filter API's body hooks (body_filters.py; the buffers: worker/wasm/buffers.py), only for a
module that exports them. Not here yet: the reload backoff does not grow after reloads that
fail (Envoy's is exponential).
"""

from __future__ import annotations

import logging
import time

from ...wasm import abi
from ...wasm.plugin import WasmError, plugin_root      # wasmtime only when a VM starts
from ...wasm.vm import Trapped
from .body_filters import reply_instead
from .filter import BUFFER, PAUSE, STOP, WATERMARK, FilterFactory, LocalReply, StreamFilter, \
    register

NAME = "envoy.filters.http.wasm"
FAIL_DETAILS = "wasm_fail_stream"

log = logging.getLogger("baton.wasm")


def _local_reply(reply) -> LocalReply:
    """The plugin's proxy_send_local_response (abi.Context.local_reply) as Baton's."""
    status, details, body, headers, grpc_status = reply
    return LocalReply(status, body, headers, details=details, grpc_status=grpc_status)


@register(NAME)
class WasmFilterFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.fail_open = config["fail_open"]
        self.allow_stop_iteration = config.get("allow_on_headers_stop_iteration", False)
        self.reload_after = config.get("reload_seconds")      # FAIL_RELOAD's backoff
        self.context = context
        self.root = None
        self.tried_at = 0.0                 # the last start that failed
        if self.reload_after is not None:
            prefix = f"wasm.{config['name']}."
            self.reload_stats = {event: prefix + "vm_reload_" + event
                                 for event in ("backoff", "success", "failure")}
            for name in self.reload_stats.values():
                context.stats.counters[name] += 0
        self._start()

    def _start(self) -> bool:
        context = self.context
        try:
            self.root = plugin_root(self.config, context.stats, context.worker.node,
                                    context.worker)
            return True
        except WasmError as exc:
            log.error("Wasm plugin %s failed to start: %s", self.config["name"], exc)
            self.tried_at = time.monotonic()
            return False

    def create(self, stream) -> StreamFilter | None:
        root = self.root
        if root is None or root.failed:
            if self.reload_after is None or not self._reload():
                return None if self.fail_open else FailedWasmFilter(stream)
        # With allow_on_headers_stop_iteration the body reaches the plugin even without a
        # body callback: its Continue lets headers paused there go on (Envoy).
        allow = self.allow_stop_iteration
        return _FILTERS[any(root.request_body_hooks) or allow,
                        any(root.response_body_hooks) or allow](stream, self)

    def _reload(self) -> bool:
        """FAIL_RELOAD: a new VM for the plugin (plugin_root starts one in place of a failed
        VM), unless the failed one started less than the backoff ago."""
        root, counters = self.root, self.context.stats.counters
        started = root.vm.started_at if root is not None else self.tried_at
        if time.monotonic() - started < self.reload_after:
            counters[self.reload_stats["backoff"]] += 1
            return False
        started = self._start()
        counters[self.reload_stats["success" if started else "failure"]] += 1
        return started


class FailedWasmFilter(StreamFilter):
    __slots__ = ()

    def on_request_headers(self, request, end_stream: bool):
        return LocalReply(503, b"", details=FAIL_DETAILS)


class WasmStreamFilter(StreamFilter):
    """A plugin that exports no body or trailer callback: the headers only (its streams
    keep the plain body path)."""

    __slots__ = ("factory", "root", "ctx", "paused", "pause_holds_body")

    def __init__(self, stream, factory: WasmFilterFactory):
        self.stream = stream
        self.factory = factory
        self.root = factory.root            # this stream's, even if a reload replaces it
        self.ctx = None
        self.paused = None                  # "headers", "request" or "response": waiting
        # A Pause from proxy_on_request_headers is StopAllIterationAndWatermark, the body
        # waiting before the plugin, unless allow_on_headers_stop_iteration (headers_action)
        self.pause_holds_body = True

    def _failed(self, exc):
        log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
        return None if self.factory.fail_open else LocalReply(503, b"", details=FAIL_DETAILS)

    def on_request_headers(self, request, end_stream: bool):
        root = self.root
        try:
            ctx = self.ctx = root.new_stream(self.stream, request)
            action = root.request_headers(ctx, end_stream)
        except Trapped as exc:
            return self._failed(exc)
        if ctx.local_reply is not None:
            return _local_reply(ctx.local_reply)
        action = headers_action(action, self.factory.allow_stop_iteration)
        if action is None or ctx.continued:
            _gone(ctx, abi.REQUEST_HEADERS)
            return None
        self.pause_holds_body = action is STOP_ALL
        self._pause(ctx, "headers")
        return PAUSE

    def _pause(self, ctx, phase: str) -> None:
        self.paused = phase
        ctx.continued = False
        ctx.resume = self._resume

    def _resume(self) -> None:
        """proxy_continue_stream or proxy_send_local_response while paused: go on (or
        answer) after the current VM call."""
        phase = self.paused
        ctx = self.ctx
        if ctx is not None:         # Envoy's continueStream forgets the request's maps
            _gone(ctx, abi.REQUEST_HEADERS, abi.REQUEST_TRAILERS)
        if phase is not None:
            self.paused = None
            self.stream.loop.call_soon(self._go_on, phase)

    def _go_on(self, phase: str) -> None:
        ctx = self.ctx
        stream = self.stream
        reply = ctx.local_reply if ctx is not None else None
        if reply is not None:
            reply = _local_reply(reply)
            if phase == "response_head":
                reply_instead(stream, reply)
            elif phase == "response":
                stream.local_reply(reply.status, reply.body, reply.details, extra=reply.headers,
                                   grpc_status=reply.grpc_status)
            else:
                stream.resume_filters(reply)
        elif phase == "response_head":
            stream.body_chain.continue_response_head(self)
        elif phase == "headers":
            stream.resume_filters(None)
        elif phase == "request":
            stream.body_chain.continue_request(self)        # Envoy's continueDecoding
        else:
            stream.body_chain.continue_response(self)       # Envoy's continueEncoding

    def _body(self, kind: int, data, end_stream: bool, phase: str):
        """proxy_on_request_body / proxy_on_response_body, its FilterDataStatus as Envoy's
        (Pause is StopIterationAndBuffer)."""
        ctx = self.ctx
        if ctx is None:
            return None
        ctx.continued = False       # (set again if the plugin continues during this call)
        try:
            status, added = self.root.body(ctx, kind, data, end_stream)
        except Trapped as exc:
            return self._failed(exc)
        if ctx.local_reply is not None:     # (response: a reset, the head went out)
            return _local_reply(ctx.local_reply)
        if added is not None:
            self.stream.body_chain.added_trailers = added
        if status == 0 or ctx.continued:
            return None
        self._pause(ctx, phase)
        return _DATA_STATUS.get(status, STOP)     # (cpp-host: past 3 StopIterationNoBuffer)

    def _trailers(self, kind: int, trailers, phase: str):
        ctx = self.ctx
        if ctx is None:
            return None
        ctx.continued = False
        try:
            status = self.root.trailers(ctx, kind, trailers)
        except Trapped as exc:
            return self._failed(exc)
        if ctx.local_reply is not None:
            return _local_reply(ctx.local_reply)
        if status == 0 or ctx.continued:
            _gone(ctx, kind)
            return None
        self._pause(ctx, phase)
        return PAUSE

    def on_response_headers(self, response, end_stream: bool):
        """A proxy_send_local_response here replaces the response (the head has not gone
        out: Envoy's sendDirectLocalReply); a Pause holds the head until
        proxy_continue_stream (Envoy's StopAllIterationAndWatermark)."""
        ctx = self.ctx
        if ctx is None:
            return None
        before = ctx.local_reply            # (the plugin's own reply passes here too)
        ctx.continued = False               # (a continue of the request is no answer here)
        try:
            action = self.root.response_headers(ctx, response, end_stream)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
            return None
        reply = ctx.local_reply
        if reply is not None and reply is not before:
            return _local_reply(reply)
        action = headers_action(action, self.factory.allow_stop_iteration)
        if action is None or ctx.continued:
            _gone(ctx, abi.RESPONSE_HEADERS)
            return None
        self.pause_holds_body = action is STOP_ALL      # (the body's hook, body_filters)
        self._pause(ctx, "response_head")
        return PAUSE

    def on_log(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            try:
                self.root.end_stream(ctx)
            except Trapped as exc:
                log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)


STOP_ALL = "stop_all"


def headers_action(result: int, allow_stop_iteration: bool) -> str | None:
    """A headers callback's answer as Envoy 1.40 takes it: None (Continue), PAUSE
    (StopIteration: the body still reaches the plugin) or STOP_ALL (the body waits too).
    proxy-wasm-cpp-host's convertVmCallResultToFilterHeadersStatus makes StopIteration (1)
    StopAllIterationAndWatermark unless allow_on_headers_stop_iteration, and anything past
    4 StopAllIterationAndWatermark; Envoy's convertFilterHeadersStatus then takes what it
    does not know (2, ContinueAndEndStream) as Continue."""
    if result == 0 or result == 2:
        return None
    if result == 1 and allow_stop_iteration:
        return PAUSE
    return STOP_ALL


def _gone(ctx, *kinds) -> None:
    """The maps `kinds` have gone on: Envoy's Context forgets them (request_headers_ = nullptr
    once decodeHeaders continues, and so on), the plugin's get, add, replace and remove of
    them answer BAD_ARGUMENT, its pairs are none (abi.AbiHost._map: None kept in maps)."""
    maps = ctx.maps
    for kind in kinds:
        maps[kind] = None


class _RequestBodyFilter(WasmStreamFilter):
    """A plugin that exports proxy_on_request_body or _trailers."""

    __slots__ = ()

    def on_request_body(self, data, end_stream: bool):
        if not self.root.request_body_hooks[0]:
            return None
        return self._body(abi.REQUEST_BODY, data, end_stream, "request")

    def on_request_trailers(self, trailers):
        if not self.root.request_body_hooks[1]:
            return None
        return self._trailers(abi.REQUEST_TRAILERS, trailers, "request")


class _ResponseBodyFilter(WasmStreamFilter):
    """A plugin that exports proxy_on_response_body or _trailers."""

    __slots__ = ()

    def on_response_body(self, data, end_stream: bool):
        if not self.root.response_body_hooks[0]:
            return None
        return self._body(abi.RESPONSE_BODY, data, end_stream, "response")

    def on_response_trailers(self, trailers):
        if not self.root.response_body_hooks[1]:
            return None
        return self._trailers(abi.RESPONSE_TRAILERS, trailers, "response")


class _BodyFilter(_RequestBodyFilter, _ResponseBodyFilter):
    __slots__ = ()


# (request body/trailer callbacks, response ones) -> the filter class: a plugin without
# them keeps its streams on the plain body path.
_FILTERS = {(False, False): WasmStreamFilter, (True, False): _RequestBodyFilter,
            (False, True): _ResponseBodyFilter, (True, True): _BodyFilter}
# proxy-wasm FilterDataStatus -> the filter API's (Envoy converts them one to one)
_DATA_STATUS = {1: BUFFER, 2: WATERMARK, 3: STOP}
