"""envoy.filters.http.buffer: hold a request until its body is whole, then let it go on.

As Envoy's BufferFilter (source/extensions/filters/http/buffer/buffer_filter.cc): a request
that ends with its headers passes; otherwise the filter stops the headers, raises the
stream's buffer limit to max_request_bytes (setDecoderBufferLimit), buffers the body
(StopIterationAndBuffer) until its end, and then, when the request has no content-length,
adds one with the body's size (maybeAddContentLength). A body over the limit is the
connection manager's 413 (body_filters.py). The route's, or else its virtual host's,
typed_per_filter_config[the filter's name] (a BufferPerRoute) disables the filter or
replaces max_request_bytes. Config: xds/http_filters_buffer.py. No stats of its own (Envoy
1.40 has none): downstream_rq_too_large counts the 413s.
"""

from __future__ import annotations

from .filter import BUFFER, CONTINUE, PAUSE, FilterFactory, StreamFilter, register

NAME = "envoy.filters.http.buffer"


@register(NAME)
class BufferFilterFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.max_bytes = config["max_request_bytes"]
        self.filter_name = config.get("filter_name") or NAME

    def create(self, stream) -> StreamFilter | None:
        max_bytes = self.max_bytes
        per_filter = getattr(stream.route, "per_filter", None) if stream.route is not None \
            else None
        for level in per_filter or ():          # (the route's, its virtual host's)
            settings = level.get(self.filter_name)
            if settings is not None:
                if settings["disabled"]:
                    return None
                max_bytes = settings["max_request_bytes"]
                break
        return BufferFilter(stream, max_bytes)


class BufferFilter(StreamFilter):
    __slots__ = ("max_bytes", "headers")

    def __init__(self, stream, max_bytes: int):
        self.stream = stream
        self.max_bytes = max_bytes
        self.headers = None

    def on_request_headers(self, request, end_stream: bool):
        if end_stream:
            return CONTINUE         # nothing to buffer
        self.stream.buffer_limit = self.max_bytes
        self.headers = request.headers
        return PAUSE

    def on_request_body(self, data, end_stream: bool):
        if end_stream:
            self._content_length(len(data))
            return CONTINUE
        return BUFFER

    def on_request_trailers(self, trailers):
        self._content_length(len(self.stream.body_chain.request_buffer))
        return CONTINUE

    def _content_length(self, size: int) -> None:
        headers = self.headers
        if headers is not None and "content-length" not in headers:
            headers.add("content-length", str(size))
