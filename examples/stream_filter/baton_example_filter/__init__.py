"""An example Baton stream filter: add a header, taken from the filter's config, to the
request on its way upstream and/or to the response on its way to the client.

Config (the `value` of the TypedStruct in the bootstrap):
    request_headers:  {name: value, ...}   set on the request before routing
    response_headers: {name: value, ...}   set on the response
    response_body_suffix: text             appended to the response body (a body hook)
Values are plain strings. A bad config raises ValueError when the factory is built.

Only a config with response_body_suffix makes filters with a body hook: the streams of the
others keep Baton's plain body path (the class says whether it has body hooks).
"""

from baton.worker.proxy.http.filter import BUFFER, FilterFactory, StreamFilter


def _headers(config, key):
    value = config.get(key, {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"add_header: {key} must map header names to string values")
    return [(name.lower(), text) for name, text in value.items()]


class AddHeaderFactory(FilterFactory):
    """Built once per config; shares the parsed header lists with every request."""

    def __init__(self, config, context):
        super().__init__(config, context)
        unknown = set(config) - {"request_headers", "response_headers", "response_body_suffix"}
        if unknown:
            raise ValueError(f"add_header: unknown config keys {sorted(unknown)}")
        self.request_headers = _headers(config, "request_headers")
        self.response_headers = _headers(config, "response_headers")
        suffix = config.get("response_body_suffix", "")
        if not isinstance(suffix, str):
            raise ValueError("add_header: response_body_suffix must be a string")
        self.suffix = suffix.encode()

    def create(self, stream):
        if self.suffix:
            return AddSuffixFilter(stream, self)
        if not self.request_headers and not self.response_headers:
            return None     # nothing to do: no per-request object at all
        return AddHeaderFilter(stream, self)


class AddHeaderFilter(StreamFilter):
    __slots__ = ("factory",)

    def __init__(self, stream, factory):
        super().__init__(stream)
        self.factory = factory

    def on_request_headers(self, request, end_stream):
        for name, value in self.factory.request_headers:
            request.headers.set(name, value)
        return None

    def on_response_headers(self, response, end_stream):
        for name, value in self.factory.response_headers:
            response.headers.set(name, value)
        return None


class AddSuffixFilter(AddHeaderFilter):
    """The headers as above, and the suffix after the response body: the body is buffered to
    its end (BUFFER), then changed in place; its length changes, so content-length goes."""

    __slots__ = ()

    def on_response_headers(self, response, end_stream):
        super().on_response_headers(response, end_stream)
        response.headers.remove("content-length")       # the body grows
        return None

    def on_response_body(self, data, end_stream):
        if not end_stream:
            return BUFFER       # the next call gets all of it so far
        data += self.factory.suffix
        return None
