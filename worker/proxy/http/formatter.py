"""Envoy's %-operator formatter: access log lines and header value templates.

A format string is compiled once (at config time, and again in the worker) into a callable
`f(info) -> str`, where `info` is a StreamInfo (stream_info.py). Compiling checks the
operators the way Envoy does, so a format that loads here loads in Envoy and the other way
round; FormatError's message is Envoy's where Envoy has one.

Rules of this file (all checked against Envoy 1.40):
- A command is %NAME%, %NAME(param)% or %NAME(param):N% (N truncates the value to N
  characters); "%%" is a literal "%". Any other "%" is an error.
- Each operator's getter returns a value (str or int) or None when the value is missing.
  A missing value renders "-" in an access log line ("" with omit_empty_values), "" in a
  header value, and null in JSON. A header that is present but empty renders "", not "-".
- JSON formats: a string that is exactly one command keeps the value's type (a number stays
  a number); anything else is rendered as text. Keys are sorted, as Envoy writes them.
"""

from __future__ import annotations

__all__ = ["FormatError", "DEFAULT_FORMAT", "compile_format", "compile_header_value",
           "compile_json_format", "OPERATORS"]

import json
import re
import socket
import time

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')


class FormatError(ValueError):
    pass


# --- parsing ---------------------------------------------------------------------------------

# NAME, then an optional (param) that may itself hold "%" (START_TIME's strftime format),
# then an optional :length, then the closing "%".
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
# A header name in REQ()/RESP()/TRAILER(): an HTTP token, or a pseudo-header.
_HEADER_NAME = re.compile(r":?[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _parse(fmt: str):
    """-> list of str literals and (name, param or None, length or None) commands."""
    parts, literal, i, n = [], [], 0, len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            literal.append(fmt[i:])
            break
        literal.append(fmt[i:j])
        if fmt.startswith("%%", j):
            literal.append("%")
            i = j + 2
            continue
        m = _COMMAND.match(fmt, j)
        if m is None:
            raise FormatError(f"Incorrect configuration: {fmt!r}. Couldn't find valid command "
                              f"at position {j}")
        text = "".join(literal)
        if text:
            parts.append(text)
        literal = []
        name, param, length = m.group(1), m.group(2), m.group(3)
        parts.append((name, param, int(length) if length is not None else None))
        i = m.end()
    text = "".join(literal)
    if text:
        parts.append(text)
    return parts


# --- operators -------------------------------------------------------------------------------

def _address(addr):
    if addr is None:
        return None
    if isinstance(addr, str):
        return addr
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_without_port(addr):
    if addr is None:
        return None
    if isinstance(addr, str):
        host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 or addr.startswith("[") else addr
        return host.strip("[]")
    return addr[0]


def _ms(start, end):
    """Whole milliseconds between two loop times (Envoy truncates), or None."""
    if start is None or end is None:
        return None
    return int((end - start) * 1000)


# %RESPONSE_FLAGS_LONG%: each short flag's long name, as Envoy 1.40 names them
# (StreamInfo's ResponseFlagUtils).
_LONG_FLAGS = {
    "LH": "FailedLocalHealthCheck", "UH": "NoHealthyUpstream", "UT": "UpstreamRequestTimeout",
    "LR": "LocalReset", "UR": "UpstreamRemoteReset", "UF": "UpstreamConnectionFailure",
    "UC": "UpstreamConnectionTermination", "UO": "UpstreamOverflow", "NR": "NoRouteFound",
    "DI": "DelayInjected", "FI": "FaultInjected", "RL": "RateLimited",
    "UAEX": "UnauthorizedExternalService", "RLSE": "RateLimitServiceError",
    "DC": "DownstreamConnectionTermination", "URX": "UpstreamRetryLimitExceeded",
    "SI": "StreamIdleTimeout", "IH": "InvalidEnvoyRequestHeaders",
    "DPE": "DownstreamProtocolError", "UMSDR": "UpstreamMaxStreamDurationReached",
    "RFCF": "ResponseFromCacheFilter", "NFCF": "NoFilterConfigFound", "DT": "DurationTimeout",
    "UPE": "UpstreamProtocolError", "NC": "NoClusterFound", "OM": "OverloadManagerTerminated",
    "DF": "DnsResolutionFailed", "DO": "DropOverload", "DR": "DownstreamRemoteReset",
    "UDO": "UnconditionalDropOverload",
}


def _or_none(value):
    return value if value else None


def _simple(getter, inline=None, slot=None):
    """An operator without parameter or length. `inline`: the getter's body as an expression
    of `info` (fixed text of this file, never config), which a generated render (_generate)
    writes in place of a call to the getter. `slot`: the field's text itself as such an
    expression, `_m` standing for the missing value's text (for a value never missing, the
    value): _generate writes it in the line's f-string, with no None test. Single quotes
    only (it goes inside an f-string's double quotes)."""
    if inline is not None:
        getter.inline = inline
    if slot is not None:
        assert '"' not in slot and "\\" not in slot, slot
        getter.slot = slot
    def make(name, param, length):
        if param is not None or length is not None:
            raise FormatError(f"{name} does not take any parameters or length")
        return getter
    return make


def _headers_getter(source):
    """REQ / RESP / TRAILER: one header by name, with an optional ?alternative."""
    def make(name, param, length):
        if not param:
            raise FormatError(f"{name} requires parameters")
        names = param.split("?")
        if len(names) > 2:
            raise FormatError(f"More than 1 alternative header specified in token: {param}")
        for header in names:
            if not _HEADER_NAME.fullmatch(header):
                raise FormatError("Invalid header configuration. Format string contains "
                                  "invalid characters.")
        first = names[0].lower()
        second = names[1].lower() if len(names) == 2 else None

        def get(info):
            value = source(info, first)
            if value is None and second is not None:
                value = source(info, second)
            return value
        if source is _request_header:
            get.request_names = (first, second)     # for _generate's one pass (see there)
        elif source is _response_header:
            get.response_names = (first, second)    # _generate writes its lookup in place
        return get
    return make


def _first_value(headers, name):
    """The first value of header `name`: a repeated header logs its first value alone, as
    Envoy's %REQ()%/%RESP()% read the header map's first entry (measured against Envoy 1.40,
    tests/integration/test_differential_access_log_headers.py)."""
    for key, value in headers.items:
        if key == name:
            return value
    return None


def _request_header(info, name):
    request = info.request
    if request is None:
        return None
    if name[0] == ":":
        return request.get(name)
    return _first_value(request.headers, name)


def _response_header(info, name):
    response = info.response
    if response is None:
        return None
    if name == ":status":
        return str(response.status)
    return _first_value(response.headers, name)


def _response_trailer(info, name):
    # StreamInfo has no trailers slot yet; a connection manager that keeps them sets
    # `response_trailers` (a Headers). Until then %TRAILER()% is "-", as for a response
    # without trailers.
    trailers = getattr(info, "response_trailers", None)
    return trailers.joined(name) if trailers is not None else None


def _micros(t: float, second: int) -> int:
    """The microseconds of a time.time() value. A double near 1.8e9 holds about 0.2 us, so
    anything finer is noise (Envoy's own clock shows microseconds too: 909592000 ns)."""
    return min(round((t - second) * 1e6), 999_999)


class _TimeFormat:
    """START_TIME(format): strftime plus Envoy's extensions, rendered in UTC.

    %s seconds since the epoch; %f and %1f..%9f fractional seconds (default 9 digits);
    %E1S..%E9S and %E*S seconds with that many fractional digits; %Ez the offset (+00:00).
    The strftime part is cached per whole second, as Envoy caches it.
    """

    __slots__ = ("pieces", "plain", "cache_second", "cache_text")

    _SPECIAL = re.compile(r"%([1-9]?)f|%E([1-9*])S|%Ez|%s|%%")

    def __init__(self, fmt: str):
        self.pieces = []    # str: strftime text; int n>0: n fractional digits; -n: %E<n>S
        pos = 0
        for m in self._SPECIAL.finditer(fmt):
            self.pieces.append(fmt[pos:m.start()])
            token = m.group(0)
            if token == "%%":
                self.pieces.append("%%")
            elif token == "%s":
                self.pieces.append(("epoch",))
            elif token == "%Ez":
                self.pieces.append("+00:00")
            elif token.endswith("f"):
                self.pieces.append(("frac", int(m.group(1) or 9)))
            else:
                digits = m.group(2)
                self.pieces.append(("sec", 9 if digits == "*" else int(digits)))
            pos = m.end()
        self.pieces.append(fmt[pos:])
        self.plain = all(isinstance(p, str) for p in self.pieces)
        self.cache_second = None
        self.cache_text = None

    def __call__(self, info):
        t = info.start_time
        second = int(t)
        if self.plain:
            if second != self.cache_second:
                self.cache_second = second
                self.cache_text = time.strftime("".join(self.pieces), time.gmtime(second))
            return self.cache_text
        tm = time.gmtime(second)
        nanos = _micros(t, second) * 1000
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(time.strftime(piece, tm) if piece else "")
            elif piece[0] == "epoch":
                out.append(str(second))
            elif piece[0] == "frac":
                out.append(f"{nanos:09d}"[:piece[1]])
            else:
                out.append(f"{tm.tm_sec:02d}.{f'{nanos:09d}'[:piece[1]]}")
        return "".join(out)


class _DefaultTime:
    """Envoy's default START_TIME: ISO 8601, UTC, milliseconds (2024-01-02T03:04:05.678Z).
    The text is kept per millisecond too: under load, requests that start in the same
    millisecond share it. [lo, hi) holds start times certain to give cache_line (the kept
    millisecond less 2 us at either end, where rounding to microseconds could tip it): a
    generated render (_generate) tests that range in place and calls only outside it."""

    __slots__ = ("cache_second", "cache_text", "cache_ms", "cache_line", "lo", "hi")

    def __init__(self):
        self.cache_second = None
        self.cache_text = ""
        self.cache_ms = -1
        self.cache_line = ""
        self.lo = self.hi = 0.0            # empty: no start time is in it

    def __call__(self, info):
        t = info.start_time
        second = int(t)
        micros = round((t - second) * 1e6)      # _micros, inline: this runs per request
        ms = (micros if micros < 999_999 else 999_999) // 1000
        if second != self.cache_second:
            self.cache_second = second
            self.cache_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        elif ms == self.cache_ms:
            return self.cache_line
        self.cache_ms = ms
        line = self.cache_line = f"{self.cache_text}.{ms:03d}Z"
        self.lo = second + (ms * 1000 + 2) / 1e6
        self.hi = second + (ms * 1000 + 998) / 1e6
        return line


def _start_time(name, param, length):
    if length is not None:
        raise FormatError(f"{name} does not take any parameters or length")
    return _TimeFormat(param) if param else _DefaultTime()


def _hostname(name, param, length):
    if param is not None or length is not None:
        raise FormatError(f"{name} does not take any parameters or length")
    host = socket.gethostname()
    return lambda info: host


OPERATORS = {
    "START_TIME": _start_time,
    "REQ": _headers_getter(_request_header),
    "RESP": _headers_getter(_response_header),
    "TRAILER": _headers_getter(_response_trailer),
    # A StreamInfo's response code and byte counts are ints from the start (0 until known):
    # never missing.
    "RESPONSE_CODE": _simple(lambda info: info.response_code, "info.response_code",
                             "info.response_code"),
    "RESPONSE_CODE_DETAILS": _simple(lambda info: _or_none(info.response_code_details),
                                     "(info.response_code_details or None)",
                                     "(info.response_code_details or _m)"),
    # Envoy writes "-" for no flags even where a missing value would be null (JSON).
    "RESPONSE_FLAGS": _simple(lambda info: ",".join(info.response_flags) or "-",
                              '(",".join(info.response_flags) or "-")',
                              "(','.join(info.response_flags) if info.response_flags else '-')"),
    "RESPONSE_FLAGS_LONG": _simple(lambda info: ",".join(
        [_LONG_FLAGS.get(flag, flag) for flag in info.response_flags]) or "-"),
    "BYTES_RECEIVED": _simple(lambda info: info.bytes_received, "info.bytes_received",
                              "info.bytes_received"),
    "BYTES_SENT": _simple(lambda info: info.bytes_sent, "info.bytes_sent", "info.bytes_sent"),
    "DURATION": _simple(lambda info: _ms(info.start_monotonic, info.last_downstream_byte),
                        "(None if info.start_monotonic is None or info.last_downstream_byte is "
                        "None else int((info.last_downstream_byte - info.start_monotonic) "
                        "* 1000))"),
    # last_request_byte: the body's end, or the start for a request whose head ended its
    # stream (Stream sets it: Envoy 1.40 logs 0 for a GET, "-" for an HTTP/2 request whose
    # HEADERS left the stream open, even with no content-length, and for a refused one).
    "REQUEST_DURATION": _simple(lambda info: _ms(info.start_monotonic, info.last_request_byte)),
    "RESPONSE_DURATION": _simple(lambda info: _ms(info.start_monotonic,
                                                  info.first_upstream_byte)),
    "RESPONSE_TX_DURATION": _simple(lambda info: _ms(info.first_upstream_byte,
                                                     info.last_downstream_byte)),
    "PROTOCOL": _simple(lambda info: _or_none(info.protocol), "(info.protocol or None)",
                        "(info.protocol or _m)"),
    "UPSTREAM_HOST": _simple(lambda info: info.upstream_host, "info.upstream_host"),
    # The address of the connection the request went out on: none when the connect failed
    # (UF), though UPSTREAM_HOST names the host tried (Envoy 1.40 sets it on pool ready).
    "UPSTREAM_REMOTE_ADDRESS": _simple(
        lambda info: info.upstream_host if info.upstream_local is not None else None,
        "(info.upstream_host if info.upstream_local is not None else None)"),
    "UPSTREAM_CLUSTER": _simple(lambda info: info.upstream_cluster, "info.upstream_cluster"),
    "UPSTREAM_LOCAL_ADDRESS": _simple(lambda info: _address(info.upstream_local)),
    # Envoy writes the reason with its spaces as underscores.
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _simple(
        lambda info: _or_none(info.upstream_failure.replace(" ", "_"))),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": _simple(lambda info: info.attempts),
    "DOWNSTREAM_REMOTE_ADDRESS": _simple(lambda info: _address(info.downstream_remote)),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _simple(
        lambda info: _address_without_port(info.downstream_remote)),
    # Baton does not take the client address from x-forwarded-for, so the direct peer and
    # the remote address are the same.
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _simple(lambda info: _address(info.downstream_remote)),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _simple(
        lambda info: _address_without_port(info.downstream_remote)),
    "DOWNSTREAM_LOCAL_ADDRESS": _simple(lambda info: _address(info.downstream_local)),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _simple(
        lambda info: _address_without_port(info.downstream_local)),
    "ROUTE_NAME": _simple(lambda info: _or_none(info.route_name)),
    "HOSTNAME": _hostname,
    "CONNECTION_ID": _simple(lambda info: info.connection_id),
    # Istio's access log format has both. The SNI the client sent, when a chain saw one; why
    # the connection was ended, when Baton ended it for a reason Envoy names (none yet).
    "REQUESTED_SERVER_NAME": _simple(lambda info: _or_none(
        getattr(info, "requested_server_name", None))),
    "CONNECTION_TERMINATION_DETAILS": _simple(lambda info: _or_none(
        getattr(info, "connection_termination_details", None))),
}


def _getter(command, operators=None):
    name, param, length = command
    make = (operators or OPERATORS).get(name)
    if make is None:
        raise FormatError(f"Not supported field in StreamInfo: {name}")
    get = make(name, param, length)
    if length is None:
        return get

    def truncated(info):
        value = get(info)
        return value if value is None else str(value)[:length]
    return truncated


# --- compiled forms --------------------------------------------------------------------------

def _compile_text(fmt: str, missing: str, operators=None):
    parts = _parse(fmt)
    if all(isinstance(p, str) for p in parts):
        text = "".join(parts)
        return lambda info: text
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        else:
            pieces.append(_getter(part, operators))

    if len(pieces) == 1:
        get = pieces[0]

        def render_one(info):
            value = get(info)
            return missing if value is None else str(value)
        return render_one
    return _generate(pieces, missing)


# The most pieces one f-string of a generated render holds: CPython's compiler builds a
# longer one through a list and str.join (STACK_USE_GUIDELINE in Python/compile.c).
_FSTRING_VALUES = 30

# A pseudo-header a generated render reads as the request's attribute (Request.get's names).
_PSEUDO_ATTRIBUTES = {":method": "method", ":path": "path", ":authority": "authority",
                      ":scheme": "scheme"}


def _first_value_lines(target, items, name, indent):
    """Source lines that set `target` (None before them) to the first value of header `name`
    (a parameter) in the pairs `items`, as _first_value reads it."""
    pad = " " * indent
    return [f"{pad}for _k, _v in {items}:",
            f"{pad}    if _k == {name}:",
            f"{pad}        {target} = _v",
            f"{pad}        break"]


def _response_lines(i, names, params):
    """RESP(name?alternative) written in place (what _response_header gives): :status is
    the response's status, any other name its header's first value."""
    lines = []
    for j, name in enumerate(names):
        if name is None:
            break
        params.append(f"_n{i}_{j}=_rnames[{i}][{j}]")
        pad = 4 if j == 0 else 8
        if name == ":status":
            step = [f"{' ' * pad}v{i} = None if _s is None else str(_s.status)"]
        else:
            step = [f"{' ' * pad}v{i} = None", f"{' ' * pad}if _s is not None:"] + \
                _first_value_lines(f"v{i}", "_s.headers.items", f"_n{i}_{j}", pad + 4)
        lines += step if j == 0 else [f"    if v{i} is None:"] + step
    return lines


def _generate(pieces, missing):
    """One function per format, written out: each field is read once into a local, and one
    f-string joins them. A loop over the pieces costs about twice as much per line, and this
    runs for every request. Config text goes into the source only as repr() literals (the
    format's literal text, which the f-string holds as constants: no load, no format step
    a piece); the getters and header names are bound as default arguments. The f-string is
    cut into groups of at most _FSTRING_VALUES pieces joined by `+`: CPython 3.11 compiles a
    longer one to a list, an append a piece and a str.join call (Envoy's default format has
    31 pieces).

    What a field reads is written in place where it is an attribute or a header: the
    operators with an `inline` expression, RESP() (_response_header's lookup), and, with two
    or more REQ() fields (Envoy's default format has five), the request's headers, read in
    one pass for all of them into one local per name (each its first value), the
    pseudo-headers as the request's attributes (as Request.get reads them). Envoy's default
    format is then rendered with one call (the f-string's) instead of fourteen: START_TIME
    is its kept text while the start time stays inside the kept millisecond (_DefaultTime),
    else a call; tests/unit/test_formatter_inline.py holds it to what the getters give."""
    params, lines, fields = [], [], []
    by_name = [getattr(piece, "request_names", None) for piece in pieces]
    one_pass = sum(names is not None for names in by_name) >= 2
    wanted = sorted({n for names in by_name if names for n in names if n and n[0] != ":"})
    if one_pass:
        lines.append("    _r = info.request")
        if wanted:
            params.append("_wanted_names=_wanted_names")
            lines.append(f"    {' = '.join(f'_w{k}' for k in range(len(wanted)))} = None")
            lines += ["    if _r is not None:",
                      "        for _k, _v in _r.headers.items:",
                      "            if _k in _wanted_names:"]
            for k, name in enumerate(wanted):
                params.append(f"_k{k}=_wanted_list[{k}]")
                lines += [f"                {'if' if k == 0 else 'elif'} _k == _k{k}:",
                          f"                    if _w{k} is None:",
                          f"                        _w{k} = _v"]
    if any(getattr(piece, "response_names", None) for piece in pieces):
        lines.append("    _s = info.response")
    for i, piece in enumerate(pieces):
        if piece.__class__ is str:
            fields.append(repr(piece))
            continue
        if piece.__class__ is _DefaultTime:  # the kept text, unless outside its range
            params.append(f"_t{i}=_pieces[{i}]")
            lines.append("    _t = info.start_time")
            fields.append(f'f"{{_t{i}.cache_line if _t{i}.lo <= _t < _t{i}.hi else _t{i}(info)}}"')
            continue
        slot = getattr(piece, "slot", None)
        if slot is not None:                # the text itself: no local, no None test
            fields.append(f'f"{{{slot}}}"')
            continue
        value = f"v{i}"
        inline = getattr(piece, "inline", None)
        response_names = getattr(piece, "response_names", None)
        names = by_name[i]
        if inline is not None:              # an attribute read: no call
            lines.append(f"    v{i} = {inline}")
        elif response_names is not None:
            lines += _response_lines(i, response_names, params)
        elif not one_pass or names is None:
            params.append(f"_g{i}=_pieces[{i}]")
            lines.append(f"    v{i} = _g{i}(info)")
        else:
            for j, name in enumerate(names):
                if name is None:
                    break
                if name[0] != ":":
                    lookup = f"_w{wanted.index(name)}"
                elif name in _PSEUDO_ATTRIBUTES:
                    lookup = f"(None if _r is None else _r.{_PSEUDO_ATTRIBUTES[name]})"
                else:
                    lookup = "None"             # a pseudo-header a request does not have
                if j == 0 and names[1] is None and lookup.startswith("_w"):
                    value = lookup              # the pass's own local, as it is
                    break
                lines.append(f"    v{i} = {lookup}" if j == 0 else
                             f"    if v{i} is None:\n        v{i} = {lookup}")
        fields.append(f'f"{{_m if {value} is None else {value}}}"')
    groups = [" ".join(fields[k:k + _FSTRING_VALUES])
              for k in range(0, len(fields), _FSTRING_VALUES)]
    source = (f"def render(info, _m=_missing, {', '.join(params)}):\n" + "\n".join(lines)
              + f"\n    return {' + '.join(groups)}\n")
    namespace = {"_pieces": pieces, "_missing": missing,
                 "_rnames": [getattr(piece, "response_names", None) for piece in pieces],
                 "_wanted_list": wanted, "_wanted_names": frozenset(wanted)}
    exec(compile(source, "<access log format>", "exec"), namespace)  # noqa: S102
    return namespace["render"]


def compile_format(fmt: str | None = None, omit_empty_values: bool = False, operators=None):
    """An access log text format (None: Envoy's default) -> f(info) -> the line.
    `operators`: another table than OPERATORS (an RPC chain's: proxy/rpc/access_log.py)."""
    return _compile_text(DEFAULT_FORMAT if fmt is None else fmt,
                         "" if omit_empty_values else "-", operators)


def compile_header_value(template: str):
    """A request/response_headers_to_add value -> f(info) -> str (missing values are "")."""
    return _compile_text(template, "")


def compile_json_format(spec: dict, omit_empty_values: bool = False, operators=None):
    """A json_format mapping -> f(info) -> one JSON line ending in "\\n"."""
    build = _compile_json_value(spec, operators)

    def render(info):
        value = build(info)
        if omit_empty_values:
            value = _without_nulls(value)
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False) + "\n"
    return render


def _compile_json_value(value, operators=None):
    if isinstance(value, dict):
        items = [(str(k), _compile_json_value(v, operators)) for k, v in value.items()]
        return lambda info: {k: build(info) for k, build in items}
    if isinstance(value, list):
        builders = [_compile_json_value(v, operators) for v in value]
        return lambda info: [build(info) for build in builders]
    if isinstance(value, str):
        parts = _parse(value)
        if len(parts) == 1 and not isinstance(parts[0], str):
            return _getter(parts[0], operators)  # typed: a number stays a number, missing is null
        return _compile_text(value, "-", operators)
    if isinstance(value, float) and value.is_integer():
        value = int(value)               # protobuf Struct numbers are doubles
    return lambda info: value


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
