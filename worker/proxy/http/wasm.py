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
(FAIL_OPEN): then the filter steps aside. A plugin's ticks (proxy_on_tick) and callouts
(proxy_http_call) run on the worker's loop and pools (worker/wasm/plugin.py); a stream the
plugin paused goes on, or gets its local reply, when the plugin says so from a callout's
answer. Not here yet: body and trailer callbacks, gRPC calls, shared queues, a VM reload
after a failure.
"""

from __future__ import annotations

import logging

from ...wasm.plugin import WasmError, plugin_root      # wasmtime only when a VM starts
from ...wasm.vm import Trapped
from .filter import PAUSE, FilterFactory, LocalReply, StreamFilter, register

NAME = "envoy.filters.http.wasm"
FAIL_DETAILS = "wasm_fail_stream"

log = logging.getLogger("baton.wasm")


def _local_reply(reply) -> LocalReply:
    """The plugin's proxy_send_local_response (abi.Context.local_reply) as Baton's."""
    status, details, body, headers, _ = reply
    return LocalReply(status, body, headers, details=details)


@register(NAME)
class WasmFilterFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.fail_open = config["fail_open"]
        self.root = None
        try:
            self.root = plugin_root(config, context.stats, context.worker.node, context.worker)
        except WasmError as exc:
            log.error("Wasm plugin %s failed to start: %s", config["name"], exc)

    def create(self, stream) -> StreamFilter | None:
        root = self.root
        if root is None or root.failed:
            return None if self.fail_open else FailedWasmFilter(stream)
        return WasmStreamFilter(stream, self)


class FailedWasmFilter(StreamFilter):
    __slots__ = ()

    def on_request_headers(self, request, end_stream: bool):
        return LocalReply(503, b"", details=FAIL_DETAILS)


class WasmStreamFilter(StreamFilter):
    __slots__ = ("factory", "ctx", "paused")

    def __init__(self, stream, factory: WasmFilterFactory):
        self.stream = stream
        self.factory = factory
        self.ctx = None
        self.paused = False

    def _failed(self, exc):
        log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
        return None if self.factory.fail_open else LocalReply(503, b"", details=FAIL_DETAILS)

    def on_request_headers(self, request, end_stream: bool):
        root = self.factory.root
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
            self.factory.root.response_headers(ctx, response, end_stream)
        except Trapped as exc:
            log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
        return None

    def on_log(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            try:
                self.factory.root.end_stream(ctx)
            except Trapped as exc:
                log.error("Wasm plugin %s: %s", self.factory.config["name"], exc)
