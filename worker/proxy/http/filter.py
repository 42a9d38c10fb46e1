"""Stream filters: the per-request extension point of the HTTP connection manager.

As in Envoy (and MOSN's stream filters), each HTTP connection manager has an ordered list of
filters; the last is always the router. Every request gets a fresh `StreamFilter` from each
filter's `FilterFactory`. The request head passes through the filters in order, the response
head in reverse order. A filter answers each call with one of:

    None / CONTINUE      go on to the next filter
    LocalReply(...)      stop here and answer the client (status, body, extra headers); later
                         filters and the router never see the request
    Delay(seconds)       go on after `seconds` (the fault filter's delay); the request stays
                         buffered meanwhile
    PAUSE                stop until the filter calls stream.resume_filters(result) (an answer
                         from another service: ext_authz); the body stays buffered meanwhile,
                         and on_log() tells the filter if the stream ended first

Body and trailers (Envoy's decodeData / decodeTrailers / encodeData / encodeTrailers): a
filter that overrides on_request_body, on_request_trailers, on_response_body or
on_response_trailers sees them (body_filters.py runs them); a chain where no filter does
keeps the plain body path, at no cost. A body hook answers (Envoy's FilterDataStatus):

    None / CONTINUE      pass this chunk on (with what this filter buffered before it)
    BUFFER               StopIterationAndBuffer: keep it; the next call gets everything kept
                         so far with the new chunk, as one bytearray (also
                         stream.body_chain.request_buffer / response_buffer, e.g. from a
                         trailer hook). Over the stream's buffer limit (the listener's
                         per_connection_buffer_limit_bytes, or stream.buffer_limit as a filter
                         sets it: Envoy's setDecoderBufferLimit) Envoy answers 413
                         request_payload_too_large, or 500 response_payload_too_large (a reset
                         once the response head went out)
    WATERMARK            StopIterationAndWatermark: keep it, but stop reading instead of
                         answering 413 at the limit
    STOP                 StopIterationNoBuffer: hold the stream here; the filter lets it go
                         on with stream.body_chain.continue_request(self) /
                         continue_response(self) (Envoy's continueDecoding / -Encoding)
    LocalReply(...)      answer here (request side; on the response side only before the
                         head went out, else the stream is reset)

A request body hook is called only once the filter's on_request_headers was (even if it
paused there: a filter that PAUSEd on headers and CONTINUEs from its body hook resumes the
headers too, as the buffer filter does; unless the class sets pause_holds_body). `data` is
always a bytearray the filter may change in place: what it leaves there goes on. Trailer hooks answer CONTINUE or PAUSE (Envoy's
StopIteration: the trailers wait until the filter calls continue_request / _response).

Filters shipped with Baton are registered here by their Envoy names; a user adds one through
the `baton.http_filters` entry point group (name -> FilterFactory subclass), and refers to it
in the bootstrap as an `http_filters` entry whose typed_config is an `xds.type.v3.TypedStruct`
(or `udpa.type.v1.TypedStruct`) with `type_url` naming the entry point and `value` its config.
See examples/stream_filter/.

Factories live as long as the config that made them (state such as a token bucket is shared
by every request through that listener on this worker); filters live for one request.
"""

from __future__ import annotations

__all__ = ["CONTINUE", "PAUSE", "BUFFER", "WATERMARK", "STOP", "LocalReply", "Delay",
           "StreamFilter", "FilterFactory", "registry", "register", "load_entry_points"]

import logging

log = logging.getLogger("baton.http.filter")

CONTINUE = None
PAUSE = "pause"
BUFFER = "buffer"           # FilterDataStatus::StopIterationAndBuffer
WATERMARK = "watermark"     # FilterDataStatus::StopIterationAndWatermark
STOP = "stop"               # FilterDataStatus::StopIterationNoBuffer

_REQUEST_HOOKS = ("on_request_body", "on_request_trailers")
_RESPONSE_HOOKS = ("on_response_body", "on_response_trailers")


class LocalReply:
    """Answer the request here. `details` goes to the access log (%RESPONSE_CODE_DETAILS%);
    `flags` to %RESPONSE_FLAGS% (e.g. "FI" fault injected, "RL" rate limited)."""

    __slots__ = ("status", "body", "headers", "details", "flags", "grpc_status")

    def __init__(self, status: int, body: str | bytes = b"", headers=(), details: str = "",
                 flags: str = "", grpc_status: int | None = None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = list(headers)         # [(name, value)] added to the reply
        self.details = details
        self.flags = flags
        self.grpc_status = grpc_status       # to a gRPC request (None: from the status)


class Delay:
    """Go on after `seconds`, or, with `then` (a LocalReply), answer with it then (the fault
    filter's delay followed by an abort)."""

    __slots__ = ("seconds", "flags", "then")

    def __init__(self, seconds: float, flags: str = "", then: "LocalReply | None" = None):
        self.seconds = seconds
        self.flags = flags
        self.then = then


class StreamFilter:
    """One request's filter. Every method may be left as is (continue).

    `stream` is the connection manager's stream: `stream.request` (worker/codecs/message.py
    Request), `stream.info` (downstream/upstream addresses, route, timing: what the access
    log sees), `stream.loop`.
    """

    __slots__ = ("stream",)

    # Whether the class overrides a request / response body or trailer hook: set for every
    # subclass as it is defined, so the stream decides once whether to take the body path.
    request_body_hooks = False
    response_body_hooks = False
    body_hooks = False          # either
    # PAUSE from on_request_headers is Envoy's StopIteration: the body still reaches this
    # filter's body hook. True: StopAllIterationAndWatermark, the body waits before this
    # filter until its headers go on (what Envoy's Wasm filter does with a Pause).
    pause_holds_body = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.request_body_hooks = any(getattr(cls, name) is not getattr(StreamFilter, name)
                                     for name in _REQUEST_HOOKS)
        cls.response_body_hooks = any(getattr(cls, name) is not getattr(StreamFilter, name)
                                      for name in _RESPONSE_HOOKS)
        cls.body_hooks = cls.request_body_hooks or cls.response_body_hooks

    def __init__(self, stream):
        self.stream = stream

    def on_request_headers(self, request, end_stream: bool):
        return CONTINUE

    def on_response_headers(self, response, end_stream: bool):
        """May change `response` in place. A LocalReply replaces the response (nothing of
        it has gone out yet), bypassing the filters as Envoy's direct local reply; PAUSE
        holds the head, and the body behind it, until the filter calls
        stream.body_chain.continue_response_head(self) (or body_filters.reply_instead)."""
        return CONTINUE

    def on_request_body(self, data, end_stream: bool):
        """A chunk of the request body (a bytes-like `data`; with end_stream the last).
        Answers CONTINUE, BUFFER, WATERMARK, STOP or a LocalReply."""
        return CONTINUE

    def on_request_trailers(self, trailers):
        """The request's trailers (worker/codecs/message.py Headers, changeable in place)."""
        return CONTINUE

    def on_response_body(self, data, end_stream: bool):
        return CONTINUE

    def on_response_trailers(self, trailers):
        return CONTINUE

    def on_log(self) -> None:
        """The stream is complete (after the access log's line is formatted)."""


class FilterFactory:
    """Built once per config from the filter's translated config (a plain dict)."""

    name = ""
    # Whether this factory's filters may call stream.clear_route_cache (Envoy's
    # clearRouteCache; the Wasm filter does): only a chain with one keeps, per request, the
    # record of the factories that made nothing which a re-route needs (route_again.py).
    # True unless the class says otherwise: a user's filter may.
    clears_route_cache = True
    # True when create() can only answer None, whatever the request and route (its config
    # gave it nothing to do): the stream does not call it (stream.FilterPlan).
    idle = False
    # The HCM entry's name (a route's typed_per_filter_config names the filter by it) when
    # it is not the class's `name`, and its `disabled` (HttpConfig sets both per entry).
    config_name = ""
    disabled_by_default = False

    def __init__(self, config: dict, context):
        """`context`: the worker (its loop, stats and the listener's stat prefix) the
        factory serves."""
        self.config = config
        self.context = context

    def create(self, stream) -> StreamFilter | None:
        """A filter for one request, or None when this filter has nothing to do for it."""
        raise NotImplementedError


def enabled_for(factory: FilterFactory, route) -> bool:
    """Whether `factory` makes filters for requests of `route` (Envoy 1.40's route based
    filter chain): the most specific level (the route's, then its virtual host's, which holds
    the route configuration's too: xds/http.py) whose typed_per_filter_config names the
    filter decides, on by a FilterConfig that is not disabled or by the filter's own
    per-route config there, off by a disabled FilterConfig; where none names it, the HCM
    entry's `disabled` does."""
    states = getattr(route, "filter_states", None)
    per_filter = getattr(route, "per_filter", None)
    if states is not None or per_filter is not None:
        name = getattr(factory, "config_name", "") or factory.name
        for level in range(2):
            state = states[level].get(name) if states is not None else None
            if state is not None:
                return state
            if per_filter is not None and name in per_filter[level]:
                return True
    return not getattr(factory, "disabled_by_default", False)


_PLANS_KEPT = 4096      # routes whose plan a chain keeps (RDS replaces routes)


def plan_for_route(chain, route) -> tuple:
    """The factories a request of `route` calls, of a chain's stream.FilterPlan (its `calls`
    those on for this route; one tuple per route in its `per_route`, decided at the route's
    first request, not per request)."""
    plans = chain.per_route
    plan = plans.get(route)
    if plan is None:
        if len(plans) >= _PLANS_KEPT:
            plans.clear()
        plan = plans[route] = tuple(f for f in chain.calls if enabled_for(f, route))
    return plan


registry: dict[str, type[FilterFactory]] = {}


def register(name: str):
    def decorate(cls):
        cls.name = name
        registry[name] = cls
        return cls
    return decorate


ENTRY_POINT_GROUP = "baton.http_filters"


def load_entry_points() -> dict[str, type[FilterFactory]]:
    """User filters installed as packages (entry point group `baton.http_filters`). Loaded
    in the master before it forks, so an import error is a config error, not a worker crash."""
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep
    return found
