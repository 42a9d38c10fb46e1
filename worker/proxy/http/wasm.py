"""envoy.extensions.filters.http.wasm.v3.Wasm: a proxy-wasm plugin as an HTTP filter.

Config: xds/http_filters_wasm.py. The plugin runs in this worker's VM for its vm_id, code
and vm configuration (worker/wasm/plugin.py); each request gets a stream context:

- proxy_on_request_headers: the plugin may change the request's headers (pseudo-headers
  included); a proxy_send_local_response answers the request (its status, body, headers and
  details, as Envoy's sendLocalReply: text/plain when there is a body); any other answer
  than Continue pauses the request until the plugin calls proxy_continue_stream.
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
reloads. A plugin's ticks (proxy_on_tick) and callouts
(proxy_http_call) run on the worker's loop and pools (worker/wasm/plugin.py); a stream the
plugin paused goes on, or gets its local reply, when the plugin says so from a callout's
answer. Not here yet: body and trailer callbacks, gRPC calls, shared queues; the reload
backoff does not grow after reloads that fail (Envoy's is exponential).
"""

from __future__ import annotations

import logging
import time

from ...wasm.plugin import WasmError, plugin_root      # wasmtime only when a VM starts
from ...wasm.vm import Trapped
from .filter import PAUSE, FilterFactory, LocalReply, StreamFilter, register

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
        return WasmStreamFilter(stream, self)

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
    __slots__ = ("factory", "root", "ctx", "paused")

    def __init__(self, stream, factory: WasmFilterFactory):
        self.stream = stream
        self.factory = factory
        self.root = factory.root            # this stream's, even if a reload replaces it
        self.ctx = None
        self.paused = False

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
        if action == 0 or ctx.continued:
            return None
        self.paused = True
        ctx.continued = False
        ctx.resume = self._resume
        return PAUSE

    def _resume(self) -> None:
        """proxy_continue_stream or proxy_send_local_response while paused: go on (or
        answer) after the current VM call."""
        if self.paused:
            self.paused = False
            self.stream.loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        ctx = self.ctx
        reply = ctx.local_reply if ctx is not None else None
        self.stream.resume_filters(_local_reply(reply) if reply is not None else None)

    def on_response_headers(self, response, end_stream: bool):
        ctx = self.ctx
        if ctx is None:
            return None
        try:
            self.root.response_headers(ctx, response, end_stream)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
        return None

    def on_log(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            try:
                self.root.end_stream(ctx)
            except Trapped as exc:
                log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
