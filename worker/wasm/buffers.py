"""A stream's HTTP bodies as a proxy-wasm plugin sees them, sans-IO.

    Bodies: what proxy_get_buffer_bytes / _status and proxy_set_buffer_bytes reach for
    REQUEST_BODY and RESPONSE_BODY on one stream context.
    replace(buffer, start, length, data) -> bool: proxy_set_buffer_bytes' edit

As Envoy's Wasm Context (source/extensions/common/wasm/context.cc, getBuffer and
Buffer::copyFrom): during proxy_on_request_body / proxy_on_response_body the body is the
chunk the callback was given, or, after the plugin paused the body (StopIterationAndBuffer),
everything buffered so far with that chunk; after a continue it is gone. An edit may only
replace the start (start 0: the first `length` bytes, 0 to prepend) or append (start at or
past the end); anything else is BAD_ARGUMENT. What the plugin leaves in the buffer is what
goes on (body_filters.py passes the filter a bytearray it keeps).
"""

from __future__ import annotations


def replace(buffer: bytearray, start: int, length: int, data: bytes) -> bool:
    """Envoy's Buffer::copyFrom on a body: False where it answers BAD_ARGUMENT."""
    if start == 0:
        del buffer[:length]
        buffer[:0] = data
        return True
    if start >= len(buffer):
        buffer += data
        return True
    return False


class Bodies:
    """One stream context's request and response bodies, while the plugin may see them."""

    __slots__ = ("current", "end_of_stream", "kept")

    def __init__(self):
        self.current: dict = {}         # buffer type -> the bytearray in the callback
        self.end_of_stream = False      # the current body callback's end_of_stream
        self.kept: dict = {}            # buffer type -> the buffered body after a pause

    def enter(self, kind: int, data: bytearray, end_stream: bool) -> None:
        self.current[kind] = data
        self.end_of_stream = end_stream

    def leave(self, kind: int, buffered: bool) -> None:
        """The callback returned; `buffered`: it paused the body, which stays readable."""
        data = self.current.pop(kind, None)
        if buffered and data is not None:
            self.kept[kind] = data
        else:
            self.kept.pop(kind, None)

    def get(self, kind: int):
        found = self.current.get(kind)
        return self.kept.get(kind) if found is None else found
