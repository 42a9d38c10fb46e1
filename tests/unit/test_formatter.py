"""Envoy's %-operator formatter (worker/proxy/http/formatter.py).

Expected strings come from running Envoy 1.40 on the same formats: "-" for a missing value in
a log line, "" in a header value, null in JSON; a present but empty header is "".
"""

import json
import socket

import pytest

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.formatter import (DEFAULT_FORMAT, FormatError, compile_format,
                                               compile_header_value, compile_json_format)
from baton.worker.proxy.http.stream_info import StreamInfo

# 2026-11-22T02:54:26.909592Z
START = 1795316066.909592


def make_info(**fields):
    headers = Headers([("user-agent", "curl/8.0"), ("x-request-id", "rid-1"),
                       ("x-forwarded-for", "10.0.0.1"), ("x-empty", ""),
                       ("x-multi", "a"), ("x-multi", "b")])
    request = Request("GET", "/p?q=1", "example.com", headers)
    info = StreamInfo(request, 100.0, "HTTP/1.1", ("127.0.0.1", 40000), ("127.0.0.2", 10000),
                      connection_id=7)
    info.start_time = START
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def completed_info():
    info = make_info()
    info.response = Response(200, Headers([("content-type", "text/plain"),
                                           ("x-envoy-upstream-service-time", "3")]))
    info.response_code = 200
    info.response_code_details = "via_upstream"
    info.bytes_received = 5
    info.bytes_sent = 11
    info.upstream_host = "127.0.0.1:8080"
    info.upstream_local = ("127.0.0.1", 51000)
    info.upstream_cluster = "backend"
    info.route_name = "r1"
    info.attempts = 2
    info.first_upstream_byte = 100.0042
    info.last_downstream_byte = 100.0123
    return info


def render(fmt, info):
    return compile_format(fmt)(info)


# --- each operator ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, expected", [
    ("%RESPONSE_CODE%", "200"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%BYTES_RECEIVED%", "5"),
    ("%BYTES_SENT%", "11"),
    ("%DURATION%", "12"),                  # 12.3 ms, truncated as Envoy does
    ("%RESPONSE_DURATION%", "4"),
    ("%RESPONSE_TX_DURATION%", "8"),
    ("%PROTOCOL%", "HTTP/1.1"),
    ("%UPSTREAM_HOST%", "127.0.0.1:8080"),
    ("%UPSTREAM_REMOTE_ADDRESS%", "127.0.0.1:8080"),
    ("%UPSTREAM_CLUSTER%", "backend"),
    ("%UPSTREAM_LOCAL_ADDRESS%", "127.0.0.1:51000"),
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
    ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "127.0.0.1:40000"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "127.0.0.1"),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "127.0.0.1:40000"),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%", "127.0.0.1"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "127.0.0.2:10000"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "127.0.0.2"),
    ("%ROUTE_NAME%", "r1"),
    ("%CONNECTION_ID%", "7"),
    ("%REQ(:METHOD)%", "GET"),
    ("%REQ(:path)%", "/p?q=1"),
    ("%REQ(:AUTHORITY)%", "example.com"),
    ("%REQ(USER-AGENT)%", "curl/8.0"),
    ("%REQ(User-Agent):4%", "curl"),
    ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/p?q=1"),
    ("%REQ(X-MULTI)%", "a"),               # the first value, as Envoy
    ("%REQ(X-EMPTY)%", ""),                # present but empty: "", not "-"
    ("%REQ(X-NONE)%", "-"),
    ("%RESP(CONTENT-TYPE)%", "text/plain"),
    ("%RESP(:status)%", "200"),
    ("%RESP(X-NONE)%", "-"),
    ("%TRAILER(GRPC-STATUS)%", "-"),
    ("%%", "%"),
    ("a%%b %RESPONSE_CODE%%%", "a%b 200%"),
    ("plain text", "plain text"),
])
def test_operator(fmt, expected):
    assert render(fmt, completed_info()) == expected


def test_upstream_transport_failure_reason_has_underscores_for_spaces():
    # Envoy 1.40 logs a refused connect as delayed_connect_error:_Connection_refused.
    info = completed_info()
    info.upstream_failure = "delayed connect error: Connection refused"
    assert render("%UPSTREAM_TRANSPORT_FAILURE_REASON%", info) == \
        "delayed_connect_error:_Connection_refused"


def test_hostname():
    assert render("%HOSTNAME%", make_info()) == socket.gethostname()


def test_request_duration():
    # A request whose head ended its stream (Stream records its start as its end): 0, as
    # Envoy logs a GET.
    assert render("%REQUEST_DURATION%", make_info(last_request_byte=100.0)) == "0"
    # Not ended (a body announced or not, read in part or not; an HTTP/2 request's HEADERS
    # without END_STREAM has no content-length to tell), or refused (no request): "-".
    assert render("%REQUEST_DURATION%", make_info()) == "-"
    assert render("%REQUEST_DURATION%", make_info(bytes_received=3)) == "-"
    assert render("%REQUEST_DURATION%", make_info(request=None)) == "-"
    # The body's end, when the stream recorded it.
    assert render("%REQUEST_DURATION%", make_info(bytes_received=5, last_request_byte=100.0021)) == "2"


def test_response_flags_long():
    assert render("%RESPONSE_FLAGS_LONG%", make_info()) == "-"
    assert render("%RESPONSE_FLAGS_LONG%", make_info(response_flags=["UF", "URX"])) == \
        "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"


def test_missing_values_are_dashes_in_a_log_line():
    info = make_info(protocol="")
    info.request = None
    line = render("%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %DURATION% "
                  "%RESPONSE_DURATION% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% "
                  "%UPSTREAM_LOCAL_ADDRESS% %ROUTE_NAME% %PROTOCOL% %REQ(:METHOD)% "
                  "%RESP(X-A)% %UPSTREAM_REQUEST_ATTEMPT_COUNT%", info)
    assert line == "0 - - - - - - - - - - - 0"


def test_omit_empty_values_renders_missing_as_empty():
    info = make_info()
    assert compile_format("[%UPSTREAM_HOST%][%RESPONSE_FLAGS%]", True)(info) == "[][-]"


def test_response_flags_are_comma_separated():
    assert render("%RESPONSE_FLAGS%", make_info(response_flags=["DI", "FI"])) == "DI,FI"


def test_ipv6_addresses():
    info = make_info(downstream_remote=("::1", 4000), upstream_local=("fe80::1", 5))
    assert render("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                  "%UPSTREAM_LOCAL_ADDRESS%", info) == "[::1]:4000 ::1 [fe80::1]:5"


# --- START_TIME ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, expected", [
    ("%START_TIME%", "2026-11-22T02:54:26.909Z"),
    ("%START_TIME()%", "2026-11-22T02:54:26.909Z"),
    ("%START_TIME(%s)%", "1795316066"),
    ("%START_TIME(%s.%3f)%", "1795316066.909"),
    ("%START_TIME(%f)%", "909592000"),
    ("%START_TIME(%9f)%", "909592000"),
    ("%START_TIME(%1f)%", "9"),
    ("%START_TIME(%Y-%m-%dT%H:%M:%S.%6fZ)%", "2026-11-22T02:54:26.909592Z"),
    ("%START_TIME(%E3S)%", "26.909"),
    ("%START_TIME(%Ez)%", "+00:00"),
    ("%START_TIME(%d/%b/%Y:%H:%M:%S %z)%", "22/Nov/2026:02:54:26 +0000"),
    ("%START_TIME(100%% %H)%", "100% 02"),
])
def test_start_time(fmt, expected):
    assert render(fmt, make_info()) == expected


def test_start_time_cache_follows_the_second():
    f = compile_format("%START_TIME%")
    assert f(make_info()) == "2026-11-22T02:54:26.909Z"
    assert f(make_info(start_time=START + 1.05)) == "2026-11-22T02:54:27.959Z"
    g = compile_format("%START_TIME(%H:%M:%S)%")
    assert g(make_info()) == "02:54:26"
    assert g(make_info(start_time=START + 60)) == "02:55:26"


# --- the default format ----------------------------------------------------------------------

def test_default_format_is_envoys():
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')


def test_default_format_line():
    line = compile_format(None)(completed_info())
    assert line == ('[2026-11-22T02:54:26.909Z] "GET /p?q=1 HTTP/1.1" 200 - 5 11 12 3 '
                    '"10.0.0.1" "curl/8.0" "rid-1" "example.com" "127.0.0.1:8080"\n')


def test_default_format_line_of_a_local_reply():
    # Envoy, fault abort: ... 503 FI 0 18 0 - "-" "curl/7.88.1" "<id>" "127.0.0.1:19080" "-"
    info = make_info(response_code=503, response_flags=["FI"], bytes_sent=18,
                     last_downstream_byte=100.0)
    info.request.headers.remove("x-forwarded-for")
    line = compile_format(None)(info)
    assert line == ('[2026-11-22T02:54:26.909Z] "GET /p?q=1 HTTP/1.1" 503 FI 0 18 0 - "-" '
                    '"curl/8.0" "rid-1" "example.com" "-"\n')


def test_original_path_wins_when_present():
    info = completed_info()
    info.request.headers.add("x-envoy-original-path", "/before")
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", info) == "/before"


# --- header values ---------------------------------------------------------------------------

def test_header_value_renders_missing_as_empty():
    f = compile_header_value("%DOWNSTREAM_REMOTE_ADDRESS%|%REQ(x-none)%|%RESPONSE_CODE%")
    assert f(make_info()) == "127.0.0.1:40000||0"        # what Envoy sent on its 429


def test_header_value_literal():
    assert compile_header_value("true")(make_info()) == "true"


# --- JSON ------------------------------------------------------------------------------------

def test_json_format_keeps_types_and_sorts_keys():
    spec = {"code": "%RESPONSE_CODE%", "f": "%RESPONSE_FLAGS%", "s": "x %RESPONSE_CODE%",
            "n": {"nested": "%PROTOCOL%", "l": 5.0}, "up": "%UPSTREAM_HOST%",
            "e": "%REQ(X-EMPTY)%", "lit": "abc", "bo": True, "rd": "%RESPONSE_DURATION%"}
    line = compile_json_format(spec)(make_info(response_code=200))
    assert line.endswith("\n")
    assert line == ('{"bo":true,"code":200,"e":"","f":"-","lit":"abc",'
                    '"n":{"l":5,"nested":"HTTP/1.1"},"rd":null,"s":"x 200","up":null}\n')
    omitted = json.loads(compile_json_format(spec, omit_empty_values=True)(make_info()))
    assert "up" not in omitted and "rd" not in omitted and omitted["e"] == ""


# --- errors, with Envoy's messages -----------------------------------------------------------

@pytest.mark.parametrize("fmt, message", [
    ("%FOO_BAR%", "Not supported field in StreamInfo: FOO_BAR"),
    ("%REQUEST_ID%", "Not supported field in StreamInfo: REQUEST_ID"),
    ("%REQ%", "REQ requires parameters"),
    ("%REQ()%", "REQ requires parameters"),
    ("%REQ(A?B?C)%", "More than 1 alternative header specified in token: A?B?C"),
    ("%RESP(a b)%", "Invalid header configuration. Format string contains invalid characters."),
    ("%DURATION:3%", "DURATION does not take any parameters or length"),
    ("%PROTOCOL(x)%", "PROTOCOL does not take any parameters or length"),
    ("%DOWNSTREAM_REMOTE_ADDRESS(x)%",
     "DOWNSTREAM_REMOTE_ADDRESS does not take any parameters or length"),
    ("x %START_TIME y", "Couldn't find valid command at position 2"),
    ("abc% d", "Couldn't find valid command at position 3"),
    ("%REQ(X)", "Couldn't find valid command at position 0"),
])
def test_refused(fmt, message):
    with pytest.raises(FormatError) as exc:
        compile_format(fmt)
    assert message in str(exc.value)


def test_header_values_and_json_are_checked_too():
    with pytest.raises(FormatError):
        compile_header_value("%NOPE%")
    with pytest.raises(FormatError):
        compile_json_format({"a": {"b": "%NOPE%"}})
