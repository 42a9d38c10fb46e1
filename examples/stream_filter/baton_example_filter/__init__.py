"""An example Baton stream filter: add a header, taken from the filter's config, to the
request on its way upstream and/or to the response on its way to the client.

Config (the `value` of the TypedStruct in the bootstrap):
    request_headers:  {name: value, ...}   set on the request before routing
    response_headers: {name: value, ...}   set on the response
Values are plain strings. A bad config raises ValueError when the factory is built.
"""

from baton.worker.proxy.http.filter import FilterFactory, StreamFilter


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
        unknown = set(config) - {"request_headers", "response_headers"}
        if unknown:
            raise ValueError(f"add_header: unknown config keys {sorted(unknown)}")
        self.request_headers = _headers(config, "request_headers")
        self.response_headers = _headers(config, "response_headers")

    def create(self, stream):
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
