"""worker/proxy/http/body_filters.py without sockets: the filters' body and trailer hooks as
Envoy's FilterManager runs them (decodeData / encodeData statuses, the one buffer per
direction, a filter paused on its headers resumed by its body hook, the 413 / 500 at the
buffer limit), on a stand-in for the Stream that runs the header loop as stream.py does."""

from __future__ import annotations

from collections import Counter

from baton.worker.codecs.message import Headers
from baton.worker.proxy.http.body_filters import chain_for
from baton.worker.proxy.http.filter import (BUFFER, CONTINUE, PAUSE, STOP, WATERMARK,
                                            LocalReply, StreamFilter)


class Router:
    def __init__(self, stream):
        self.body = b"".join(stream.held_body)
        stream.held_body = []
        self.ended = stream.request_complete          # with the trailers, if any
        self.trailers = stream.trailers if stream.request_complete else None

    def request_body(self, data, end_stream):
        assert not self.ended
        self.body += bytes(data)
        self.ended = end_stream

    def request_trailers(self, trailers):
        self.trailers = trailers
        self.ended = True


class Codec:
    def __init__(self, multiplexed):
        self.multiplexed = multiplexed


class Conn:
    def __init__(self, multiplexed):
        self.codec = Codec(multiplexed)
        self.write_paused = False


class HCM:
    stat_rq_too_large = "http.x.downstream_rq_too_large"
    stat_rs_too_large = "http.x.rs_too_large"
    via = ""


class Info:
    def __init__(self):
        self.response_flags = []


class Stream:
    """The parts of stream.Stream the chain uses, its header loop included."""

    def __init__(self, filters, limit=1000, multiplexed=True):
        self.filters = [f(self) for f in filters]
        self.filter_index = 0
        self.router = None
        self.done = False
        self.held_body, self.held_bytes = (), 0      # as Stream: () until a chunk is held
        self.buffer_limit = limit
        self.response_started = False
        self.stats = Counter()
        self.hcm = HCM()
        self.info = Info()
        self.conn = Conn(multiplexed)
        self.body_watcher = None
        self.trailers = None
        self.request_complete = False
        self.end_at_head = False
        self.replies = []
        self.sent = []              # response body chunks that reached the codec
        self.sent_trailers = None
        self.paused_reading = False
        self.window_held = False
        self.heads = []
        self.request = None
        self.body_chain = chain_for(self, self.filters)

    def start(self):
        self._continue_filters()

    def _continue_filters(self, reply=None):
        while self.filter_index < len(self.filters) or reply is not None:
            if reply is not None:
                self.local_reply(reply.status, reply.body, reply.details)
                return
            result = self.filters[self.filter_index].on_request_headers(None, False)
            self.filter_index += 1
            if result is PAUSE:
                self.body_chain.headers_paused()
                return
        if self.body_chain is not None:
            self.body_chain.headers_advanced()
        if not self.done:
            self.router = Router(self)

    def resume_filters(self, reply=None):
        self._continue_filters(reply)

    def local_reply(self, status, body, details, extra=(), grpc_status=None):
        self.replies.append((status, details))
        self.done = True

    def pause_downstream(self, on):
        self.paused_reading = on

    def downstream_paused(self, on):
        self.paused_reading = on

    def upstream_response_body(self, data, end_stream, filtered=False):
        self.sent.append((bytes(data), end_stream))

    def upstream_response_trailers(self, trailers, filtered=False):
        self.sent_trailers = trailers

    def _send_head(self, response, end_stream, service_time=None):
        self.heads.append((response, end_stream, self.filter_index))
        self.response_started = True


class Log(StreamFilter):
    """Continues everything, noting what it saw."""
    __slots__ = ("seen",)

    def __init__(self, stream):
        super().__init__(stream)
        self.seen = []

    def on_request_body(self, data, end_stream):
        self.seen.append((bytes(data), end_stream))
        return CONTINUE

    def on_request_trailers(self, trailers):
        self.seen.append(("trailers", dict(trailers.items)))
        return CONTINUE


class BufferAll(StreamFilter):
    """The buffer filter's shape: pause the headers, buffer to the end, then go on."""
    __slots__ = ()

    def on_request_headers(self, request, end_stream):
        return PAUSE

    def on_request_body(self, data, end_stream):
        return CONTINUE if end_stream else BUFFER


class Upper(StreamFilter):
    """Buffers the whole body and replaces it (changes its size)."""
    __slots__ = ()

    def on_request_body(self, data, end_stream):
        if not end_stream:
            return BUFFER
        data[:] = bytes(data).upper() + b"!"
        return CONTINUE


class HeadersOnly(StreamFilter):
    __slots__ = ()


def test_a_chain_without_body_hooks_gets_no_body_chain():
    stream = Stream([HeadersOnly, HeadersOnly])
    assert stream.body_chain is None
    assert not HeadersOnly.request_body_hooks and not HeadersOnly.response_body_hooks
    assert Log.request_body_hooks and not Log.response_body_hooks


def test_streaming_filter_sees_each_chunk_and_the_router_gets_them():
    stream = Stream([Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"ab", False)
    chain.request_data(b"cd", True)
    assert stream.filters[0].seen == [(b"ab", False), (b"cd", True)]
    assert stream.router.body == b"abcd" and stream.router.ended
    assert stream.request_complete


def test_paused_headers_buffered_body_then_continue_resumes_the_headers():
    stream = Stream([BufferAll, Log])
    stream.start()
    assert stream.router is None and stream.filter_index == 1
    chain = stream.body_chain
    chain.request_data(b"one,", False)
    chain.request_data(b"two,", False)
    assert stream.router is None and stream.filters[1].seen == []
    chain.request_data(b"three", True)
    # The later filter got the body once, whole, after the headers went on.
    assert stream.filters[1].seen == [(b"one,two,three", True)]
    assert stream.router.body == b"one,two,three" and stream.router.ended


def test_buffered_body_replaced_by_the_filter():
    stream = Stream([Upper, Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"ab", False)
    chain.request_data(b"cd", True)
    assert stream.filters[1].seen == [(b"ABCD!", True)]
    assert stream.router.body == b"ABCD!"


def test_buffer_over_the_limit_is_413():
    stream = Stream([BufferAll], limit=5)
    stream.start()
    stream.body_chain.request_data(b"12345", False)
    assert not stream.replies
    stream.body_chain.request_data(b"6", False)
    assert stream.replies == [(413, "request_payload_too_large")]
    assert stream.stats["http.x.downstream_rq_too_large"] == 1


def test_http1_last_chunk_is_buffered_before_the_end_as_envoy_does():
    # Envoy's HTTP/1.1 codec: body with end_stream=false, then an empty end: the buffer
    # filter buffers the last bytes too, so over the limit is a 413.
    stream = Stream([BufferAll], limit=5, multiplexed=False)
    stream.start()
    stream.body_chain.request_data(b"123456", True)
    assert stream.replies == [(413, "request_payload_too_large")]


def test_http2_one_frame_with_end_stream_passes_the_limit_streaming():
    stream = Stream([BufferAll], limit=5, multiplexed=True)
    stream.start()
    stream.body_chain.request_data(b"123456", True)
    assert not stream.replies and stream.router.body == b"123456"


def test_watermark_stops_reading_instead_of_413():
    class Mark(StreamFilter):
        __slots__ = ()

        def on_request_body(self, data, end_stream):
            return CONTINUE if end_stream else WATERMARK
    stream = Stream([Mark], limit=3)
    stream.start()
    stream.body_chain.request_data(b"1234", False)
    assert stream.paused_reading and not stream.replies
    stream.body_chain.request_data(b"5", True)
    assert not stream.paused_reading and stream.router.body == b"12345"


def test_local_reply_from_a_body_hook():
    class Deny(StreamFilter):
        __slots__ = ()

        def on_request_body(self, data, end_stream):
            return LocalReply(403, "no", details="denied", flags="UAEX")
    stream = Stream([Deny])
    stream.start()
    stream.body_chain.request_data(b"x", False)
    assert stream.replies == [(403, "denied")] and stream.info.response_flags == ["UAEX"]


def test_trailers_follow_the_body_a_filter_buffered():
    stream = Stream([BufferAll, Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"body", False)
    chain.request_trailers(Headers([("grpc-status", "0")]))
    assert stream.filters[1].seen == [(b"body", False), ("trailers", {"grpc-status": "0"})]
    assert stream.router.body == b"body"
    assert stream.router.trailers is not None and stream.router.ended


def test_stop_drops_the_data_and_continue_request_goes_on():
    # Envoy's StopIterationNoBuffer: nothing kept (the filter would inject its own).
    class Hold(StreamFilter):
        __slots__ = ()

        def on_request_body(self, data, end_stream):
            return STOP
    stream = Stream([Hold, Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"abc", True)
    assert stream.filters[1].seen == []
    chain.continue_request(stream.filters[0])
    assert stream.filters[1].seen == [(b"", True)]
    assert stream.router.body == b"" and stream.router.ended


class RespUpper(StreamFilter):
    __slots__ = ()

    def on_response_body(self, data, end_stream):
        if not end_stream:
            return BUFFER
        data[:] = bytes(data).upper()
        return CONTINUE


def test_response_buffered_and_replaced():
    stream = Stream([RespUpper, HeadersOnly])
    stream.start()
    chain = stream.body_chain
    assert chain.encodes and not chain.decodes
    chain.response_data(b"ab", False)
    assert stream.sent == []
    chain.response_data(b"cd", True)
    assert stream.sent == [(b"ABCD", True)]


def test_response_buffer_over_the_limit_is_500():
    stream = Stream([RespUpper], limit=3)
    stream.start()
    stream.body_chain.response_data(b"abcd", False)
    assert stream.replies == [(500, "response_payload_too_large")]
    assert stream.stats["http.x.rs_too_large"] == 1


def test_response_trailers_release_the_buffer_first():
    stream = Stream([RespUpper])
    stream.start()
    chain = stream.body_chain
    chain.response_data(b"ab", False)
    chain.response_trailers(Headers([("x", "1")]))
    assert stream.sent == [(b"ab", False)] and stream.sent_trailers is not None


def test_a_pause_that_holds_the_body_keeps_it_from_the_filter_until_resumed():
    # Envoy's StopAllIterationAndWatermark (what its Wasm filter makes of a Pause).
    class HoldAll(Log):
        __slots__ = ()
        pause_holds_body = True

        def on_request_headers(self, request, end_stream):
            return PAUSE
    stream = Stream([HoldAll, Log])
    stream.start()
    stream.body_chain.request_data(b"ab", False)
    stream.body_chain.request_data(b"cd", True)
    assert stream.filters[0].seen == [] and stream.router is None
    stream.resume_filters()
    assert stream.filters[0].seen == [(b"abcd", True)]
    assert stream.filters[1].seen == [(b"abcd", True)]
    assert stream.router.body == b"abcd" and stream.router.ended


def test_the_example_filters_body_hook(monkeypatch):
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"
                                    / "stream_filter"))
    from baton_example_filter import AddHeaderFactory, AddHeaderFilter, AddSuffixFilter
    assert not AddHeaderFilter.body_hooks and AddSuffixFilter.response_body_hooks
    factory = AddHeaderFactory({"response_body_suffix": "!"}, None)
    stream = Stream([factory.create])
    stream.start()
    stream.body_chain.response_data(b"hello", False)
    stream.body_chain.response_data(b" world", True)
    assert stream.sent == [(b"hello world!", True)]


def test_a_response_head_held_by_a_filter_and_what_waits_behind_it():
    # Envoy's StopAllIterationAndWatermark from encodeHeaders, then continueEncoding.
    from baton.worker.codecs.message import Response
    from baton.worker.proxy.http.body_filters import replaced_by
    stream = Stream([HeadersOnly, HeadersOnly], limit=3)
    stream.start()
    assert stream.body_chain is None
    response = Response(200, Headers([]))
    assert replaced_by(stream, PAUSE, stream.filters[1], response, False)
    chain = stream.body_chain
    chain.response_data(b"abcd", False)
    assert stream.sent == [] and stream.paused_reading       # over the limit: upstream held
    chain.response_trailers(Headers([("t", "1")]))
    chain.continue_response_head(stream.filters[1])
    # The filters after the pausing one (index 0 here) see the head, then it goes out.
    assert stream.heads == [(response, False, 1)] and stream.filter_index == 2
    assert stream.sent == [(b"abcd", False)] and stream.sent_trailers is not None
    assert not stream.paused_reading


def test_a_local_reply_from_the_response_head_hook_bypasses_the_filters():
    from baton.worker.codecs.message import Response
    from baton.worker.proxy.http.body_filters import replaced_by
    stream = Stream([HeadersOnly])
    stream.start()
    reply = LocalReply(418, "no", details="nope")
    assert replaced_by(stream, reply, stream.filters[0], Response(200, Headers([])), True)
    assert stream.replies == [(418, "nope")] and stream.filter_index == 0


class PauseHeaders(StreamFilter):
    """PAUSEs its request headers (no body hook): the body waits on the stream."""
    __slots__ = ()

    def on_request_headers(self, request, end_stream):
        return PAUSE


def test_a_body_held_behind_paused_headers_stops_reading_past_the_limit():
    # A body-hook filter first, so the chain holds the body (review R2, item 1): over the
    # limit the client is not read (Envoy's watermark), and read again once it goes on.
    stream = Stream([Log, PauseHeaders], limit=3)
    stream.start()
    stream.body_chain.request_data(b"12", False)
    assert not stream.paused_reading
    stream.body_chain.request_data(b"34", False)
    assert stream.paused_reading and not stream.replies
    stream.resume_filters()
    assert not stream.paused_reading and stream.router.body == b"1234"


def test_a_buffer_over_the_limit_after_the_response_began_answers():
    # Envoy's requestDataTooLarge: counted, and its local reply (a reset by then).
    stream = Stream([BufferAll], limit=3)
    stream.start()
    stream.response_started = True
    stream.body_chain.request_data(b"1234", False)
    assert stream.replies == [(413, "request_payload_too_large")]
    assert stream.stats["http.x.downstream_rq_too_large"] == 1


def test_a_local_reply_from_a_trailer_hook_answers():
    # What the Wasm filter returns for a plugin's reply or trap (fail closed) there.
    class DenyTrailers(StreamFilter):
        __slots__ = ()

        def on_request_trailers(self, trailers):
            return LocalReply(503, b"", details="wasm_fail_stream")

        def on_response_trailers(self, trailers):
            return LocalReply(500, b"", details="late")
    stream = Stream([DenyTrailers])
    stream.start()
    stream.body_chain.request_data(b"abc", False)
    stream.body_chain.request_trailers(Headers([("x-t", "1")]))
    assert stream.replies == [(503, "wasm_fail_stream")] and stream.router.trailers is None
    stream = Stream([DenyTrailers])
    stream.start()
    stream.filter_index = 1
    stream.body_chain.response_trailers(Headers([("x-t", "1")]))
    assert stream.replies == [(500, "late")] and stream.sent_trailers is None


class AddAndPause(StreamFilter):
    """As WasmStreamFilter._body: trailers added at the body's end, then BUFFER (Pause)."""
    __slots__ = ()

    def on_request_body(self, data, end_stream):
        if end_stream:
            self.stream.body_chain.added_trailers = Headers([("x-added", "1")])
        return BUFFER

    def on_response_body(self, data, end_stream):
        return CONTINUE


def test_trailers_added_before_a_pause_go_on_with_the_request_only():
    # Review R2 item 5: they were lost upstream and went out as the response's trailers.
    stream = Stream([AddAndPause, Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"abc", True)
    chain.continue_request(stream.filters[0])          # proxy_continue_stream, later
    assert stream.filters[1].seen[-1] == ("trailers", {"x-added": "1"})
    assert stream.router.body == b"abc" and stream.router.trailers is not None
    chain.response_data(b"response", True)
    assert stream.sent == [(b"response", True)] and stream.sent_trailers is None


def test_trailers_added_before_a_pause_reach_the_router():
    stream = Stream([AddAndPause])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"abc", True)
    chain.continue_request(stream.filters[0])
    assert stream.router.body == b"abc" and stream.router.trailers.get("x-added") == "1"
    chain.response_data(b"response", True)
    assert stream.sent_trailers is None


def test_a_buffering_filter_keeps_one_copy_and_its_view_empties_on_continue():
    # A Wasm plugin's body after its pause stays readable (buffers.Bodies.kept: the
    # bytearray it was given); the chain buffers that same bytearray (no second copy),
    # and once passed on it is empty, not a stale body held for the stream's life.
    class Keep(StreamFilter):
        __slots__ = ("views",)

        def __init__(self, stream):
            super().__init__(stream)
            self.views = []

        def on_request_body(self, data, end_stream):
            self.views.append(data)
            return BUFFER
    stream = Stream([Keep, Log])
    stream.start()
    chain = stream.body_chain
    chain.request_data(b"abc", False)
    chain.request_data(b"def", False)
    views = stream.filters[0].views
    assert views[0] is views[1] is chain.request_buffer and views[1] == b"abcdef"
    chain.continue_request(stream.filters[0])
    assert stream.router.body == b"abcdef" and views[1] == b""


def test_a_response_watermark_released_keeps_the_hold_of_a_full_client_window():
    class Mark(StreamFilter):
        __slots__ = ()

        def on_response_body(self, data, end_stream):
            return CONTINUE if end_stream else WATERMARK
    stream = Stream([Mark], limit=3)
    stream.start()
    stream.filter_index = 1
    stream.body_chain.response_data(b"1234", False)
    assert stream.paused_reading
    stream.window_held = True           # meanwhile the HTTP/2 client's window filled
    stream.body_chain.response_data(b"5", True)
    assert stream.sent == [(b"12345", True)] and stream.paused_reading
