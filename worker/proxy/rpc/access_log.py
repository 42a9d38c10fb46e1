"""Access logs of RPC requests: generic_proxy's access_log, one line per request.

A line is written when the request's answer is written to the client (the provider's
response, or a local reply: no route, overflow, upstream failure, timeout), when a oneway
request is sent (nobody waits for its answer), and for a request still in flight when its
client connection closes (flag DC). After a reload move the old worker, which receives the
answer, writes the line to its own access log files (the same files).

The format is Envoy's, with generic_proxy's own operators
(source/extensions/filters/network/generic_proxy/access_log.cc) next to the common ones:

    %METHOD%                  the method name
    %HOST%, %PATH%            the service (interface) name, as Envoy's Dubbo codec gives both
    %PROTOCOL%                "dubbo" or "bolt"
    %REQUEST_PROPERTY(key)%   an attachment (Dubbo) or header (Bolt); "version" is the
                              service version, as generic_proxy's routing reads it
    %RESPONSE_PROPERTY(key)%  a header of a Bolt response (a Dubbo response has none)
    %GENERIC_RESPONSE_CODE%   the status written to the client (Dubbo 20, 80, ...; Bolt 0,
                              ...), a number in JSON; missing when nothing was answered
    %RESPONSE_CODE%           the same status (0 when nothing was answered)

%RESPONSE_CODE_DETAILS% is "via_upstream" for a provider's answer, else the local reply's
reason (DETAILS); %RESPONSE_FLAGS% Envoy's flag of a local reply (chain.FLAGS) or DC.
The HTTP-only operators (%REQ(...)%, %BYTES_SENT%, ...) render as missing.
"""

from __future__ import annotations

from ..http.config import _access_logs
from ..http.formatter import OPERATORS as COMMON, FormatError, compile_format, \
    compile_json_format
from ..http.stream_info import StreamInfo
from . import protocols as P
from .generic import _property

# The reason a local reply gives in %RESPONSE_CODE_DETAILS%, by failure (protocols.py).
DETAILS = {P.NO_ROUTE: "route_not_found", P.UNKNOWN_CLUSTER: "cluster_not_found",
           P.NO_HEALTHY_UPSTREAM: "no_healthy_upstream", P.OVERFLOW: "overflow",
           P.CONNECT_FAILURE: "connection_failure", P.CONNECT_TIMEOUT: "connection_timeout",
           P.RESET: "connection_reset", P.TIMEOUT: "timeout",
           P.RATE_LIMITED: "local_rate_limited"}


class RpcLogInfo(StreamInfo):
    """StreamInfo of one RPC request: the common slots, plus what generic_proxy's operators
    read (the routed Request, the answer's status and properties)."""

    __slots__ = ("rpc", "generic_code", "response_properties")

    def __init__(self, rpc_request, now: float, protocol: str, remote, local, conn_id: int):
        super().__init__(None, now, protocol, remote, local, conn_id)
        self.rpc = rpc_request
        self.generic_code = None
        self.response_properties = None


def _with_key(name, param, length):
    if not param:
        raise FormatError(f"{name} requires parameters")
    return param


def _request_property(name, param, length):
    key = _with_key(name, param, length)
    return lambda info: _property(info.rpc, key) if info.rpc is not None else None


def _response_property(name, param, length):
    key = _with_key(name, param, length)

    def get(info):
        properties = info.response_properties
        return properties.get(key) if properties is not None else None
    return get


def _simple(getter):
    def make(name, param, length):
        if param is not None:
            raise FormatError(f"{name} does not take any parameters")
        return getter
    return make


def _service(info):
    return info.rpc.service if info.rpc is not None else None


OPERATORS = {
    **COMMON,
    "METHOD": _simple(lambda info: info.rpc.method if info.rpc is not None else None),
    "HOST": _simple(_service),
    "PATH": _simple(_service),
    "REQUEST_PROPERTY": _request_property,
    "RESPONSE_PROPERTY": _response_property,
    "GENERIC_RESPONSE_CODE": _simple(lambda info: info.generic_code),
}


def compile_rpc_format(config: dict):
    """An access_log entry (xds/http_filters.py translate_access_logs) -> f(info) -> line."""
    omit = config.get("omit_empty_values", False)
    if config.get("json_format") is not None:
        return compile_json_format(config["json_format"], omit, OPERATORS)
    return compile_format(config.get("format"), omit, OPERATORS)


def build_access_logs(specs, worker) -> list:
    """A chain's access_log entries -> AccessLogs (files, batching, flag filter: HTTP's, on
    the worker's shared files) whose formats read OPERATORS."""
    if not specs:
        return []
    # HTTP's builder compiles against its own table: give it constants, then compile here.
    logs = _access_logs([{**spec, "format": "", "json_format": None} for spec in specs], worker)
    for log, spec in zip(logs, specs):
        log.format = compile_rpc_format(spec)
    return logs


# -- filled in and written by connection.py -----------------------------------------------------

def request_info(conn, request, now: float) -> RpcLogInfo:
    """The RpcLogInfo of a request as it arrives on RpcConnection `conn`."""
    local = conn.original
    if local is None and conn.transport is not None:
        local = conn.transport.get_extra_info("sockname")
    return RpcLogInfo(request, now, conn.protocol.name, conn.peer[:2] if conn.peer else None,
                      local[:2] if local else None, conn.id)


def write(logs, info: RpcLogInfo, now: float, code: int | None = None,
          details: str = "", flag: str | None = None, properties=None) -> None:
    """One line in each log: `code` the status written (None: nothing was)."""
    info.last_downstream_byte = now
    if code is not None:
        info.generic_code = info.response_code = code
    info.response_code_details = details
    info.response_properties = properties
    if flag is not None:
        info.response_flags.append(flag)
    for log in logs:
        log.log(info)
