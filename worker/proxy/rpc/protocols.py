"""What differs between Dubbo and SOFA Bolt for the proxy: one object per protocol.

Each protocol says how to frame bytes (a decoder), what a request routes on, how to answer a
heartbeat, how to rewrite a request id, and how to write a local reply for each failure, with
the status and message that protocol's reference proxy uses:

Dubbo (Envoy's dubbo_proxy, router/router_impl.cc; the bytes checked against Envoy 1.40):
    no route              SERVICE_NOT_FOUND (60)  "dubbo router: no route for interface '<i>'"
    unknown cluster       SERVER_ERROR (80)       "dubbo router: unknown cluster '<c>'"
    no healthy upstream   SERVER_ERROR (80)       "dubbo router: no healthy upstream for '<c>'"
    overflow              SERVER_ERROR (80)       "dubbo upstream request: too many connections"
    connect/reset         SERVER_ERROR (80)       "dubbo upstream request: remote connection
                                                   failure '<host:port>'"
    connect timeout       SERVER_ERROR (80)       "... connection failure '<h:p>' due to timeout"
    request timeout       SERVER_TIMEOUT (31)     Envoy has no request timeout; Baton applies
                                                  the consumer's "timeout" attachment
Bolt (SOFA Bolt's ResponseStatus; no reference proxy: the closest status each):
    no route NO_PROCESSOR, upstream failures CONNECTION_CLOSED, overflow
    SERVER_THREADPOOL_BUSY, timeout TIMEOUT; the reply carries the status alone.
"""

from __future__ import annotations

from ...codecs import bolt, dubbo
from ...codecs.hessian2 import HessianError, JavaObject, Reader
from .routing import Request

NO_ROUTE = "no_route"
UNKNOWN_CLUSTER = "unknown_cluster"
NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
OVERFLOW = "overflow"
CONNECT_FAILURE = "connect_failure"
CONNECT_TIMEOUT = "connect_timeout"
RESET = "reset"
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
# What a route's retries try again: the request never reached a provider, or its connection
# broke (Envoy's retry_on connect-failure and reset).
RETRIABLE = frozenset((CONNECT_FAILURE, CONNECT_TIMEOUT, RESET))


class DecodeError(ValueError):
    """A frame or body this protocol cannot read: the connection it came on is closed."""


class Dubbo:
    name = "dubbo"
    stat_root = "dubbo"
    error = dubbo.DubboError

    @staticmethod
    def decoder():
        return dubbo.Decoder()

    @staticmethod
    def is_request(frame) -> bool:
        return frame.is_request

    @staticmethod
    def is_event(frame) -> bool:
        return frame.is_event

    @staticmethod
    def oneway(frame) -> bool:
        return not frame.two_way

    heartbeat_response = staticmethod(dubbo.heartbeat_response)
    with_request_id = staticmethod(dubbo.with_request_id)
    MAX_REQUEST_ID = (1 << 64) - 1

    @staticmethod
    def request(frame, arguments: bool) -> tuple[Request, float | None]:
        """-> (what it routes on, the consumer's own timeout in seconds or None)."""
        try:
            inv = dubbo.invocation(frame, arguments)
        except dubbo.DubboError as exc:
            raise DecodeError(str(exc)) from None
        headers = {k.lower(): v for k, v in inv.attachments.items() if isinstance(v, str)}
        return (Request(inv.service, inv.version, inv.group, inv.method, headers,
                        inv.arguments),
                _milliseconds(inv.attachments.get("timeout")))

    @staticmethod
    def response_properties(frame) -> None:
        """What %RESPONSE_PROPERTY(key)% reads of a response: a Dubbo response has none
        (Envoy's DubboResponse has no properties either)."""
        return None

    @staticmethod
    def response_outcome(frame) -> str:
        """"success", "business_exception" (an OK response carrying the provider's exception)
        or "error" (any other status), as Envoy counts responses."""
        if frame.status != dubbo.OK:
            return "error"
        first = frame.raw[dubbo.HEADER_SIZE:dubbo.HEADER_SIZE + 1]
        # Response types 0 and 3 (with exception, with exception and attachments).
        return "business_exception" if first in (b"\x90", b"\x93") else "success"

    @staticmethod
    def local_reply(frame, failure: str, detail: str) -> bytes:
        status, message = {
            NO_ROUTE: (dubbo.SERVICE_NOT_FOUND, "dubbo router: no route for interface '{}'"),
            UNKNOWN_CLUSTER: (dubbo.SERVER_ERROR, "dubbo router: unknown cluster '{}'"),
            NO_HEALTHY_UPSTREAM: (dubbo.SERVER_ERROR,
                                  "dubbo router: no healthy upstream for '{}'"),
            OVERFLOW: (dubbo.SERVER_ERROR, "dubbo upstream request: too many connections"),
            CONNECT_FAILURE: (dubbo.SERVER_ERROR,
                              "dubbo upstream request: remote connection failure '{}'"),
            RESET: (dubbo.SERVER_ERROR, "dubbo upstream request: remote connection failure '{}'"),
            CONNECT_TIMEOUT: (dubbo.SERVER_ERROR,
                              "dubbo upstream request: connection failure '{}' due to timeout"),
            TIMEOUT: (dubbo.SERVER_TIMEOUT, "baton: upstream request timeout after {}"),
            RATE_LIMITED: (dubbo.SERVER_THREADPOOL_EXHAUSTED, "baton: local rate limit{}"),
        }[failure]
        return dubbo.error_response(frame, status, message.format(detail))


class Bolt:
    name = "bolt"
    stat_root = "bolt"
    error = bolt.BoltError

    @staticmethod
    def decoder():
        return bolt.Decoder()

    @staticmethod
    def is_request(frame) -> bool:
        return frame.is_request

    @staticmethod
    def is_event(frame) -> bool:
        return frame.is_heartbeat

    @staticmethod
    def oneway(frame) -> bool:
        return frame.oneway

    heartbeat_response = staticmethod(bolt.heartbeat_response)
    with_request_id = staticmethod(bolt.with_request_id)
    MAX_REQUEST_ID = (1 << 32) - 1

    @staticmethod
    def request(frame, arguments: bool) -> tuple[Request, float | None]:
        try:
            header = frame.header()
            class_name = frame.class_name
        except bolt.BoltError as exc:
            raise DecodeError(str(exc)) from None
        service = header.get("sofa_head_target_service") or header.get("service")
        method = header.get("sofa_head_method_name")
        sofa = None
        if (service is None or method is None) and frame.codec == bolt.CODEC_HESSIAN2 \
                and class_name == "com.alipay.sofa.rpc.core.request.SofaRequest":
            sofa = _sofa_request(frame)
            service = service or _text(sofa.get("targetServiceUniqueName"))
            method = method or _text(sofa.get("methodName"))
        interface, version, group = _unique_name(service or "")
        headers = {k.lower(): v for k, v in header.items() if v is not None}
        return (Request(interface, version, group, method or "", headers),
                frame.timeout / 1000 if frame.timeout > 0 else None)

    @staticmethod
    def response_properties(frame) -> dict | None:
        """A Bolt response's header map (%RESPONSE_PROPERTY(key)%)."""
        try:
            return frame.header()
        except bolt.BoltError:
            return None

    @staticmethod
    def response_outcome(frame) -> str:
        if frame.status == bolt.SUCCESS:
            return "success"
        return "business_exception" if frame.status == bolt.SERVER_EXCEPTION else "error"

    LOCAL_STATUS = {NO_ROUTE: bolt.NO_PROCESSOR, UNKNOWN_CLUSTER: bolt.NO_PROCESSOR,
                    NO_HEALTHY_UPSTREAM: bolt.CONNECTION_CLOSED,
                    OVERFLOW: bolt.SERVER_THREADPOOL_BUSY,
                    CONNECT_FAILURE: bolt.CONNECTION_CLOSED, RESET: bolt.CONNECTION_CLOSED,
                    CONNECT_TIMEOUT: bolt.CONNECTION_CLOSED, TIMEOUT: bolt.TIMEOUT,
                    RATE_LIMITED: bolt.SERVER_THREADPOOL_BUSY}

    @classmethod
    def local_status(cls, failure: str) -> int:
        return cls.LOCAL_STATUS[failure]

    @classmethod
    def local_reply(cls, frame, failure: str, detail: str) -> bytes:
        return bolt.error_response(frame, cls.LOCAL_STATUS[failure])


PROTOCOLS = {"dubbo": Dubbo, "bolt": Bolt}


def _milliseconds(value) -> float | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value / 1000
    return None


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _sofa_request(frame) -> dict:
    """The leading fields of the SofaRequest that starts a Hessian content (what a client
    that puts no sofa_head_method_name header carries its method in).

    SOFA's Hessian is either the final Hessian 2.0 ('C' class definition, then the object) or
    the 2.0 draft of Hessian 3.x that sofa-hessian and sofa-rpc-node write by default: 'O',
    the type name's length and bytes, the field count and names, then 'o' and the definition's
    index. For the draft only the leading string fields are read (enough for methodName);
    the first field of another type ends the reading."""
    start = frame.header_size + frame.class_len + frame.header_len
    reader = Reader(frame.raw, start)
    try:
        if frame.raw[start:start + 1] != b"O":
            obj = reader.read()
            return obj.fields if isinstance(obj, JavaObject) else {}
        reader.read_raw(1)
        reader.read_raw(reader.read_int())              # the type name
        names = [reader.read_string() for _ in range(reader.read_int())]
        if reader.read_raw(1) != b"o":
            return {}
        reader.read_int()
        fields = {}
        for name in names:
            tag = frame.raw[reader.pos:reader.pos + 1]
            if not tag or not (tag[0] <= 0x1F or tag in (b"S", b"N") or 0x30 <= tag[0] <= 0x33):
                break
            fields[name] = reader.read_string()
        return fields
    except HessianError as exc:
        raise DecodeError(f"SofaRequest: {exc}") from None


def _unique_name(service: str) -> tuple[str, str | None, str | None]:
    """SOFARPC's "interface:version[:uniqueId]" -> (interface, version, group)."""
    parts = service.split(":")
    interface = parts[0]
    version = parts[1] if len(parts) > 1 and parts[1] else None
    group = parts[2] if len(parts) > 2 and parts[2] else None
    return interface, version, group
