"""The body and trailer hooks of a stream's filters (filter.py): Envoy's decodeData /
decodeTrailers / encodeData / encodeTrailers iteration, for the streams whose chain has a
filter that overrides one. Other streams never build a BodyChain and keep the plain body
path (stream.py checks `stream.body_chain is not None`).

Semantics follow Envoy's FilterManager (source/common/http/filter_manager.cc,
commonHandleAfterDataCallback / commonHandleBufferData / requestDataTooLarge /
responseDataTooLarge):

- Request data goes through the filters, in order, whose on_request_headers was called (a
  filter paused on its headers still sees the body: Envoy's StopIteration). Past them it
  goes to the router, or is held on the stream (stream.held_body) until the headers go on,
  then continues through the filters they reached.
- BUFFER / WATERMARK keep the chunk in the direction's one buffer (Envoy's decodingBuffer /
  encodingBuffer: one per stream and direction); the filter's next CONTINUE passes the
  buffer and its chunk on as one. A BUFFER over stream.buffer_limit is Envoy's 413
  request_payload_too_large (downstream_rq_too_large) or 500 response_payload_too_large
  (rs_too_large; a reset once the head went out); a WATERMARK stops reading instead.
- A filter that CONTINUEs from its body hook while its headers are paused resumes them
  (Envoy's commonContinue), as the buffer filter relies on.
- Trailers pass the same filters; a filter holding a buffer passes it on before them.

Response data goes through the filters whose on_response_headers was called, in reverse.
"""

from __future__ import annotations

from .filter import BUFFER, PAUSE, STOP, WATERMARK, LocalReply
from .held_chunks import with_chunk

_NOWHERE = -1


class _Side:
    """One direction's buffer: what the filter at `stop` keeps (Envoy's one decodingBuffer
    / encodingBuffer per stream), and whether that stop holds the stream's end."""

    __slots__ = ("buffer", "stop", "end", "watermark", "streaming", "pause", "too_large",
                 "added")

    def __init__(self, pause, too_large):
        self.buffer = bytearray()
        self.stop = _NOWHERE
        self.end = False
        self.watermark = False          # reading stopped for a WATERMARK over the limit
        # Envoy's decoder_filters_streaming_: whether the last stop was not a BUFFER. Data
        # buffered past a filter that continued is then over the limit without a 413 (Envoy
        # raises a watermark instead): a body that ends in one HTTP/2 DATA frame passes the
        # buffer filter whatever its size.
        self.streaming = True
        self.pause = pause              # stop / resume reading what fills the buffer
        self.too_large = too_large      # the answer to a BUFFER over the limit
        self.added = {}                 # {filter index: trailers it added at the end}

    def gather(self, data) -> bytearray:
        """The filter that buffered gets all of it, the new chunk included, as one bytearray
        it may change in place (proxy-wasm's body_buffer_length is this size)."""
        buffer = self.buffer
        if data is not buffer:
            buffer += data
        return buffer

    def keep(self, i: int, data, end_stream: bool, watermark: bool, limit: int) -> None:
        self.stop = i
        self.end = end_stream
        self.streaming = watermark
        if not self.buffer and type(data) is bytearray:
            self.buffer = data      # the filter's own bytearray (_step's): kept, not copied
        if len(self.gather(data)) > limit:
            if watermark:
                self.watermark = True
                self.pause(True)
            else:
                self.too_large()

    def release(self, data) -> bytes:
        """The stopped filter goes on: its buffer and `data`, as one chunk. The buffer is
        emptied: a view a filter kept of it (a Wasm plugin's body after its pause,
        worker/wasm/buffers.py) is gone too, as Envoy drains the buffer it passes on."""
        buffer = self.gather(data)
        out = bytes(buffer)
        buffer.clear()
        self.buffer = bytearray()
        self.stop = _NOWHERE
        if self.watermark:
            self.watermark = False
            self.pause(False)
        return out


class BodyChain:
    """One stream's body/trailer iteration, both directions."""

    __slots__ = ("stream", "decodes", "encodes", "request", "response", "held_at",
                 "trailers_at", "headers_paused_at", "holding_at", "waiting_trailers",
                 "added_trailers", "held_head", "behind_head", "held_over",
                 "remote_end")

    def __init__(self, stream, decodes: bool, encodes: bool):
        self.stream = stream
        self.decodes = decodes              # some filter has a request body/trailer hook
        self.encodes = encodes              # ... a response one
        self.request = _Side(stream.pause_downstream, self._request_too_large)
        self.response = _Side(self._hold_upstream, self._response_too_large)
        self.held_at = 0                    # stream.held_body has passed filters < held_at
        self.trailers_at = _NOWHERE         # request trailers wait at this filter
        self.headers_paused_at = _NOWHERE   # the filter whose on_request_headers PAUSEd
        self.holding_at = _NOWHERE          # ... and holds the body before it (StopAll)
        self.added_trailers = None          # set by a body hook: trailers it added at the
                                            # body's end (_step files them by side and filter)
        self.held_head = None               # (filter index, response, end_stream) PAUSEd
        self.behind_head = []               # what came from upstream meanwhile
        self.waiting_trailers = None        # (filter index, trailers) a filter PAUSEd
        self.held_over = False              # stream.held_body past the limit paused reading
        self.remote_end = False             # the codec delivered the request's end

    def _hold_upstream(self, on: bool) -> None:
        """Stop (or resume) reading the upstream for the response side's buffer or held
        head; not resumed while the client still cannot take more (its HTTP/2 window, its
        socket) or a filter's WATERMARK still holds."""
        stream = self.stream
        if on or not (stream.window_held or stream.conn.write_paused or
                      self.response.watermark):
            stream.downstream_paused(on)

    @property
    def request_buffer(self) -> bytearray:
        return self.request.buffer

    @property
    def response_buffer(self) -> bytearray:
        return self.response.buffer

    def _step(self, side: _Side, i: int, hook, data, end_stream: bool):
        """Filter i's body hook on `data`: what goes on to the next filter, or None when the
        iteration stops here (buffered, held, answered)."""
        if side.stop == i:
            data = side.gather(data)
        elif type(data) is not bytearray:
            data = bytearray(data)          # the filter may change it in place
        result = hook(data, end_stream)
        added = self.added_trailers
        if added is not None:
            # Kept for this filter and direction, to follow its data when that goes on
            # (now, or at its continue): never to another filter or the other direction.
            self.added_trailers = None
            side.added[i] = added
        stream = self.stream
        if stream.done:
            return None
        if result is None:
            return side.release(data) if side.stop == i else bytes(data)
        if result is BUFFER or result is WATERMARK:
            side.keep(i, data, end_stream, result is WATERMARK, stream.buffer_limit)
        elif result is STOP:
            side.stop = i
            side.end = end_stream
        elif isinstance(result, LocalReply):
            _answer(stream, result)
        return None

    def _go_on(self, side: _Side, i: int, data, end_stream: bool) -> None:
        """Filter i's data goes on to the filters after it (the request's up, the
        response's down). With trailers it added at the body's end (Envoy's
        addDecodedTrailers / addEncodedTrailers): the data without the end, then they."""
        added = side.added.pop(i, None) if end_stream and side.added else None
        if side is self.request:
            self._decode(i + 1, data, end_stream and added is None)
            if added is not None and not self.stream.done:
                self._trailers(i + 1, added)
        else:
            self.response_data(data, end_stream and added is None, i - 1)
            if added is not None and not self.stream.done:
                self.response_trailers(added, i - 1)

    # -- request ----------------------------------------------------------------------------

    def request_data(self, data, end_stream: bool) -> None:
        """A chunk from the codec (stream.on_request_body)."""
        if end_stream and data and not self.stream.conn.codec.multiplexed:
            # Envoy's HTTP/1.1 codec hands the body over before the message's end, which
            # comes as an empty last frame: filters get the same calls here (a BUFFER of
            # the last bytes over the limit is a 413 there, before the request is complete).
            self._decode(0, data, False)
            if self.stream.done:
                return
            data = b""
        if end_stream:
            self.remote_end = True          # (Envoy: after the HTTP/1.1 body, at its end)
        self._decode(0, data, end_stream)

    def _reached(self) -> int:
        """The filters before this index have had their headers and take body."""
        holding = self.holding_at
        return self.stream.filter_index if holding == _NOWHERE else holding

    def _decode(self, start: int, data, end_stream: bool) -> None:
        stream = self.stream
        filters = stream.filters
        reached = self._reached()
        i = start
        while i < reached:
            stream_filter = filters[i]
            if stream_filter.request_body_hooks:
                data = self._step(self.request, i, stream_filter.on_request_body, data,
                                  end_stream)
                if data is None:
                    return
                if self.headers_paused_at == i:
                    self._resume_headers(i, data, end_stream)
                    return
                if end_stream and self.request.added:
                    self._go_on(self.request, i, data, True)
                    return
            i += 1
        if reached < len(filters) or stream.router is None:
            self._hold(data, end_stream, reached)
            return
        if end_stream:
            stream.request_complete = True
        stream.router.request_body(data, end_stream)

    def _request_too_large(self) -> None:
        # Once the response began too: Envoy's requestDataTooLarge counts and sends its local
        # reply, which is then a reset (Stream.local_reply).
        _too_large(self.stream)

    def _resume_headers(self, i: int, data, end_stream: bool) -> None:
        """Envoy's commonContinue: the filter paused on its headers and its body goes on:
        the headers go on first, then this data after them (and trailers it added)."""
        added = self.request.added.pop(i, None) if end_stream and self.request.added else None
        if added is not None:
            self.stream.trailers = added
            self._hold(data, False, i + 1)
            self.stream.request_complete = True
        else:
            self._hold(data, end_stream, i + 1)
        self.headers_paused_at = _NOWHERE
        self.stream.resume_filters()

    def _hold(self, data, end_stream: bool, at: int | None = None) -> None:
        """Past the filters the headers reached: wait on the stream (as the plain path's
        held body does), bounded by the buffer limit."""
        stream = self.stream
        if at is not None:
            self.held_at = at
        if end_stream:
            stream.request_complete = True
        if data:
            stream.held_body = with_chunk(stream.held_body, bytes(data))
            stream.held_bytes += len(data)
        if stream.held_bytes > stream.buffer_limit:
            if not self.request.streaming:
                _too_large(stream)      # (a reset once the response began)
                return
            # Envoy's watermark on a StopAllIteration or a streaming filter's buffer: over
            # the limit the client is not read until the held body goes on (filter_manager.cc
            # commonHandleBufferData: streaming -> requestDataTooLarge raises the watermark).
            if not self.held_over:
                self.held_over = True
                stream.pause_downstream(True)
        if stream.body_watcher is not None:
            stream.body_watcher()

    def _unwatermark(self) -> None:
        """The held body went on (or goes to the router with the headers): read again."""
        stream = self.stream
        if self.held_over and (stream.held_bytes <= stream.buffer_limit or
                               self._reached() >= len(stream.filters)):
            self.held_over = False
            stream.pause_downstream(False)

    def headers_paused(self) -> None:
        """The filter before stream.filter_index PAUSEd on its headers: body still reaches it
        (and, held, the filters before it that it has not passed yet), unless it holds the
        body before it (pause_holds_body)."""
        stream = self.stream
        i = stream.filter_index - 1
        if stream.filters[i].pause_holds_body:
            self.holding_at = i
        else:
            self.holding_at = _NOWHERE
            self.headers_paused_at = i
        self._push_held()
        self._unwatermark()

    def headers_advanced(self) -> None:
        """The headers reached more filters (stream._continue_filters): what was held for
        them goes through their body hooks before the router takes it."""
        self.holding_at = _NOWHERE          # the headers went on past any holding filter
        self._push_held()
        self._unwatermark()

    def _push_held(self) -> None:
        stream = self.stream
        start = self.held_at
        reached = self._reached()
        if start >= reached:
            return
        hooked = any(f.request_body_hooks for f in stream.filters[start:reached])
        self.held_at = reached
        if not hooked:
            return
        held, stream.held_body = stream.held_body, []
        stream.held_bytes = 0
        trailers = stream.trailers
        complete = stream.request_complete
        end = complete and trailers is None
        if held or (end and not stream.end_at_head):     # (no body: no body call)
            stream.request_complete = False
            self._decode(start, b"".join(held), end)
        if trailers is not None and complete and not stream.done:
            stream.trailers = None
            self._trailers(start, trailers)

    def request_trailers(self, trailers) -> None:
        """The request's trailers from the codec (stream.on_request_trailers)."""
        self.remote_end = True
        self._trailers(0, trailers)

    def _trailers(self, start: int, trailers) -> None:
        stream = self.stream
        filters = stream.filters
        reached = self._reached()
        side = self.request
        i = start
        while i < reached:
            stream_filter = filters[i]
            if stream_filter.request_body_hooks:
                # Envoy: decodeTrailers goes to a filter holding the body too, which passes
                # the body on before the trailers when it continues.
                result = stream_filter.on_request_trailers(trailers)
                if stream.done:
                    return
                if isinstance(result, LocalReply):
                    _answer(stream, result)
                    return
                if result is PAUSE:
                    self.trailers_at = i
                    stream.trailers = trailers
                    return
                data = side.release(b"") if side.stop == i else b""
                if self.headers_paused_at == i:
                    # The headers go on, then the body, then these trailers.
                    stream.trailers = trailers
                    self._hold(data, False, i + 1)
                    stream.request_complete = True
                    self.headers_paused_at = _NOWHERE
                    stream.resume_filters()
                    return
                if data:
                    self._decode(i + 1, data, False)
                    if stream.done:
                        return
            i += 1
        stream.trailers = trailers
        if reached < len(filters) or stream.router is None:
            self.held_at = reached
            stream.request_complete = True
            if stream.body_watcher is not None:
                stream.body_watcher()
            return
        stream.request_complete = True
        stream.router.request_trailers(trailers)

    def continue_request(self, stream_filter) -> None:
        """A filter that stopped the body (STOP or BUFFER) or the trailers lets them go on
        (Envoy's continueDecoding), with what it buffered."""
        stream = self.stream
        if stream.done:
            return
        side = self.request
        i = stream.filters.index(stream_filter)
        if side.stop == i:
            end = side.end
            data = side.release(b"")
            if self.headers_paused_at == i:
                self._resume_headers(i, data, end)
            else:
                self._go_on(side, i, data, end)
        if self.trailers_at == i and not stream.done:
            self.trailers_at = _NOWHERE
            trailers, stream.trailers = stream.trailers, None
            self._trailers(i + 1, trailers)

    # -- response ---------------------------------------------------------------------------

    def response_data(self, data, end_stream: bool, start: int | None = None) -> None:
        """Upstream response body (stream.upstream_response_body), through the filters that
        saw the response head, last to first."""
        if start is None and self.held_head is not None:
            self._held_head_data(data, end_stream)
            return
        filters = self.stream.filters
        i = self.stream.filter_index - 1 if start is None else start
        while i >= 0:
            stream_filter = filters[i]
            if stream_filter.response_body_hooks:
                data = self._step(self.response, i, stream_filter.on_response_body, data,
                                  end_stream)
                if data is None:
                    return
                if end_stream and self.response.added:
                    self._go_on(self.response, i, data, True)
                    return
            i -= 1
        self.stream.upstream_response_body(data, end_stream, True)

    def _response_too_large(self) -> None:
        stream = self.stream
        stream.stats[stream.hcm.stat_rs_too_large] += 1
        # A reset when the head went out already (Stream.local_reply does that).
        stream.local_reply(500, "Internal Server Error", "response_payload_too_large")

    def response_trailers(self, trailers, start: int | None = None) -> None:
        if start is None and self.held_head is not None:
            self._behind_head(trailers, None)
            return
        stream = self.stream
        filters = stream.filters
        side = self.response
        i = stream.filter_index - 1 if start is None else start
        while i >= 0:
            stream_filter = filters[i]
            if stream_filter.response_body_hooks:
                result = stream_filter.on_response_trailers(trailers)
                if stream.done:
                    return
                if isinstance(result, LocalReply):
                    _answer(stream, result)         # (a reset: the head went out)
                    return
                if result is PAUSE:
                    self.waiting_trailers = (i, trailers)
                    return
                if side.stop == i:
                    self.response_data(side.release(b""), False, i - 1)
                    if stream.done:
                        return
            i -= 1
        stream.upstream_response_trailers(trailers, True)

    def _held_head_data(self, data, end_stream: bool) -> None:
        """Body while a filter holds the response head: it waits behind the head (Envoy's
        StopAllIterationAndWatermark), unless the filter's PAUSE is StopIteration
        (pause_holds_body false: a Wasm plugin with allow_on_headers_stop_iteration): then
        the body reaches that filter, and its CONTINUE lets the head go on first, as Envoy's
        commonContinue."""
        i = self.held_head[0]
        holder = self.stream.filters[i]
        if holder.pause_holds_body or not holder.response_body_hooks:
            self._behind_head(bytes(data), end_stream)
            return
        data = self._step(self.response, i, holder.on_response_body, data, end_stream)
        if data is None:
            return
        self.continue_response_head(holder)
        if not self.stream.done:
            self._go_on(self.response, i, data, end_stream)

    def _behind_head(self, item, end_stream) -> None:
        """Body (or trailers: end_stream None) that came while a filter holds the head:
        kept, and past the buffer limit the upstream is not read (Envoy's
        StopAllIterationAndWatermark)."""
        stream = self.stream
        self.behind_head.append((item, end_stream))
        if sum(len(b) for b, end in self.behind_head if end is not None) > stream.buffer_limit:
            self._hold_upstream(True)

    def reply_body_behind_head(self, body: bytes) -> None:
        """A local reply's body while a filter holds its head: it goes out after the head
        (Envoy's local reply passes the encoder filters: encodeHeaders, then encodeData)."""
        self.behind_head.append((body, True))

    def drop_held_head(self) -> None:
        """A local reply replaces the head a filter holds, and what waited behind it."""
        self.held_head = None
        if self.behind_head:
            self.behind_head = []
            self._hold_upstream(False)

    def continue_response_head(self, stream_filter) -> None:
        """The filter that PAUSEd on the response head goes on (Envoy's continueEncoding):
        the filters after it see the head, it goes out, then what waited behind it."""
        stream = self.stream
        held = self.held_head
        if stream.done or held is None:
            return
        self.held_head = None
        i, response, end_stream = held
        reached = stream.filter_index
        headers = response.headers
        via = stream.hcm.via
        if via:                                     # _send_head adds it again
            value = headers.get("via") or ""
            if value == via:
                headers.remove("via")
            elif value.endswith(", " + via):
                headers.set("via", value[:-len(via) - 2])
        service = headers.get("x-envoy-upstream-service-time")
        stream.filter_index = i                     # the filters still to see the head
        stream._send_head(response, end_stream, None if service is None else
                          ("x-envoy-upstream-service-time", service))
        if stream.filter_index == i:                # (0: a local reply went out instead)
            stream.filter_index = reached
        if self.held_head is not None or stream.done:
            return
        behind, self.behind_head = self.behind_head, []
        self._hold_upstream(False)
        for item, end in behind:
            if stream.done:
                return
            if end is None:
                self.response_trailers(item)
            else:
                self.response_data(item, end)

    def continue_response(self, stream_filter) -> None:
        """Envoy's continueEncoding: a stopped filter lets the response go on."""
        if self.stream.done:
            return
        i = self.stream.filters.index(stream_filter)
        held = self.held_head
        if held is not None and held[0] == i:       # (StopIteration: the head goes first)
            self.continue_response_head(stream_filter)
            if self.stream.done:
                return
        side = self.response
        waiting = self.waiting_trailers
        if side.stop == i:
            self._go_on(side, i, side.release(b""), waiting is None and side.end)
        if waiting is not None and waiting[0] == i and not self.stream.done:
            self.waiting_trailers = None
            self.response_trailers(waiting[1], i - 1)


def _too_large(stream) -> None:
    """Envoy's requestDataTooLarge: 413 and downstream_rq_too_large."""
    stream.stats[stream.hcm.stat_rq_too_large] += 1
    stream.local_reply(413, "Payload Too Large", "request_payload_too_large")


def _answer(stream, reply: LocalReply) -> None:
    if reply.flags:
        stream.info.response_flags.append(reply.flags)
    stream.local_reply(reply.status, reply.body, reply.details, extra=reply.headers,
                       grpc_status=reply.grpc_status)


def replaced_by(stream, answer, stream_filter, response, end_stream: bool) -> bool:
    """A response head filter's answer (Stream._send_head); True: the head does not go out
    now. A LocalReply replaces the response, which has not gone out yet, as Envoy's
    sendLocalReply does while encoding the head (sendDirectLocalReply: the reply bypasses
    the filters, so none sees it again). PAUSE holds the head, and the body and trailers
    behind it, until the filter calls stream.body_chain.continue_response_head(filter)
    (Envoy's StopAllIterationAndWatermark, continueEncoding), or answers with a local reply
    (reply_instead). Anything else is CONTINUE."""
    if answer is PAUSE:
        chain = stream.body_chain
        if chain is None:
            chain = stream.body_chain = BodyChain(stream, False, True)
        chain.encodes = True            # the body comes to the chain, to wait
        chain.held_head = (stream.filters.index(stream_filter), response, end_stream)
        return True
    if not isinstance(answer, LocalReply):
        return False
    reply_instead(stream, answer)
    return True


def reply_instead(stream, reply: LocalReply) -> None:
    """A local reply before the response head went out: it replaces the response without
    passing the filters (Envoy's sendDirectLocalReply)."""
    stream.filter_index = 0             # no filter runs on the reply
    _answer(stream, reply)


def chain_for(stream, filters) -> BodyChain | None:
    """A BodyChain when a filter of `filters` has body or trailer hooks, else None (the
    plain path: nothing more per chunk than one attribute test). The stream calls it only
    once it saw a filter with StreamFilter.body_hooks (a per-request loop costs a mesh
    chain's request 0.46% in instructions)."""
    decodes = encodes = False
    for stream_filter in filters:
        if stream_filter.request_body_hooks:
            decodes = True
        if stream_filter.response_body_hooks:
            encodes = True
    if not (decodes or encodes):
        return None
    return BodyChain(stream, decodes, encodes)
