"""Differential: the access log's common fields across the ways a request ends (through to the
upstream, a connect failure, a timeout, no cluster, no route, a direct response, a request the
codec refuses), on one Envoy+Baton pair; every field as Envoy 1.40 writes it, with only what is
timing or an ephemeral port normalised away ("<ms>", "<port>")."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
import urllib.request

import pytest
from hpack import Encoder

from .differential.addresses import closed_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import diff, differential
from .differential.proxies import ONLY, PROXIES, module_pair
from ..waiting import wait_until

FIELDS = ["REQ(X-TEST-KEY)", "REQ(:METHOD)", "REQ(:PATH)", "PROTOCOL", "RESPONSE_CODE",
          "RESPONSE_FLAGS", "RESPONSE_CODE_DETAILS", "UPSTREAM_CLUSTER", "UPSTREAM_HOST",
          "UPSTREAM_REMOTE_ADDRESS", "UPSTREAM_LOCAL_ADDRESS", "UPSTREAM_TRANSPORT_FAILURE_REASON",
          "RESP(CONTENT-LENGTH)", "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "REQUEST_DURATION",
          "RESPONSE_DURATION", "RESPONSE_TX_DURATION", "UPSTREAM_REQUEST_ATTEMPT_COUNT", "ROUTE_NAME",
          "RESPONSE_FLAGS_LONG"]
TIMINGS = {"DURATION", "REQUEST_DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION"}
FORMAT = "\t".join(f"%{name}%" for name in FIELDS) + "\n"
ACCESS_LOG = [{"name": "envoy.access_loggers.stdout", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "log_format": {"text_format_source": {"inline_string": FORMAT}}}}]
DEAD = closed_port()
# The listeners whose cases wait for the proxy's close hold their FIN this long, not Envoy's
# default second (a delayed close the client does not end).
DELAYED_CLOSE = "0.3s"


def fields_bootstrap(upstreams: dict[str, int]):
    def route(name, prefix, action):
        return {"name": name, "match": {"prefix": prefix}, **action}
    routes = {"name": "fields", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        route("r-nc", "/nc", {"route": {"cluster_header": "x-cluster"}}),
        route("r-ufr", "/ufr", {"route": {"cluster": "dead", "retry_policy": {
            "retry_on": "connect-failure", "num_retries": 1}}}),
        route("r-uf", "/uf", {"route": {"cluster": "dead"}}),
        route("r-ut", "/ut", {"route": {"cluster": "a", "timeout": "0.3s"}}),
        route("r-urx", "/urx", {"route": {"cluster": "a", "retry_policy": {
            "retry_on": "5xx", "num_retries": 1}}}),
        route("r-dr", "/dr", {"direct_response": {"status": 418, "body": {"inline_string": "teapot"}}}),
        # A retry to the other host of "mix" (one of them dead): test_..._after_a_retry.
        route("r-rt", "/rt", {"route": {"cluster": "mix", "retry_policy": {
            "retry_on": "5xx,connect-failure", "num_retries": 1, "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                             "PreviousHostsPredicate"}}],
            "host_selection_retry_max_attempts": 5}}}),
        route("r-one", "/one", {"route": {"cluster": "mix"}}),
        route("r-u", "/u", {"route": {"cluster": "a"}})]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [
            http_listener("fields", ports["fields"], routes, access_log=ACCESS_LOG),
            # Closes Baton decides on a timer (short: each case waits them out).
            http_listener("timeouts", ports["timeouts"], routes, access_log=ACCESS_LOG,
                          common_http_protocol_options={"idle_timeout": "1s"},
                          request_headers_timeout="0.5s", drain_timeout="0.2s",
                          delayed_close_timeout=DELAYED_CLOSE),
            # The idle timeout shorter than the request-headers timeout.
            http_listener("idle_first", ports["idle_first"], routes,
                          common_http_protocol_options={"idle_timeout": "0.3s"},
                          request_headers_timeout="0.5s", delayed_close_timeout=DELAYED_CLOSE),
            http_listener("http10", ports["http10"], routes,
                          http_protocol_options={"accept_http_10": True}),
            # No request_headers_timeout (Envoy's default): the stream idle timeout times a
            # request head, and the idle timeout (shorter) does not.
            http_listener("slow_head", ports["slow_head"], routes,
                          common_http_protocol_options={"idle_timeout": "0.3s"},
                          stream_idle_timeout="1s", delayed_close_timeout=DELAYED_CLOSE),
            # Neither request_headers_timeout nor stream_idle_timeout: nothing times a head.
            http_listener("no_head_timer", ports["no_head_timer"], routes,
                          common_http_protocol_options={"idle_timeout": "0.3s"},
                          stream_idle_timeout="0s"),
            # The idle timeout's drain: idle 0.3 s, then drain_timeout, then the delayed close.
            http_listener("idle_drain", ports["idle_drain"], routes,
                          common_http_protocol_options={"idle_timeout": "0.3s"},
                          drain_timeout="0.6s", delayed_close_timeout="0.2s"),
            # A client that reads nothing: the proxy buffers the whole response (16 MiB), so
            # that it ends and the close begins however little the kernel takes.
            {**http_listener("unread", ports["unread"], routes),
             "per_connection_buffer_limit_bytes": 16 << 20}],
            [cluster("a", [upstreams["a"]]), cluster("dead", [DEAD]),
             cluster("mix", [upstreams["a"], DEAD])])
    return template


recorder, pair = module_pair("diff-al-fields", fields_bootstrap,
                              ["fields", "timeouts", "idle_first", "http10", "slow_head",
                               "no_head_timer", "idle_drain", "unread"])


def _normalised(line: str, upstream_port: int) -> dict:
    values = dict(zip(FIELDS, line.split("\t")))
    for name in TIMINGS:
        if values[name].isdigit():
            values[name] = "<ms>"
    for name, value in values.items():
        value = value.replace(f":{upstream_port}", ":<a>").replace(f":{DEAD}", ":<dead>")
        if name == "UPSTREAM_LOCAL_ADDRESS":
            value = re.sub(r":\d+$", ":<port>", value)
        values[name] = value
    return values


def _line(target, offset: int, wanted) -> str:
    """The first access log line after byte `offset` of the proxy's process log (its stdout)
    that `wanted(line)` accepts (flushed within about a second: waited for)."""
    path = target.process.log_path

    def find():
        with open(path, "rb") as f:
            f.seek(offset)
            for text in f.read().decode(errors="replace").splitlines():
                if text.count("\t") == len(FIELDS) - 1 and wanted(text):
                    return text
        return None
    return wait_until(find, 10, f"{target.name}'s access log line ({wanted.__doc__})")


def _curl(target, path: str, *args: str) -> None:
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", *args,
                    f"http://127.0.0.1:{target.port}{path}"], timeout=10)


def _answered(port: int, data: bytes, ending: bytes) -> socket.socket:
    """A connection of its own that sent `data` and read an answer ending in `ending`; the
    caller closes it (at once: a client that waited for the proxy's close would meet Envoy's
    delayed close, a second)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    _read_until(sock, ending)
    return sock


def _read_until(sock: socket.socket, ending: bytes) -> bytes:
    """What `sock` reads until it ends in `ending` or the proxy closes it."""
    seen = b""
    while not seen.endswith(ending):
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def _curl_case(path: str, *args: str):
    def send(target, key, recorder):
        _curl(target, path, "-H", f"x-test-key: {key}", *args)
        return _keyed(key)
    return send


def _keyed(key: str):
    def wanted(line: str) -> bool:
        return line.startswith(key + "\t")
    wanted.__doc__ = key
    return wanted


def _refused_case(data: bytes, ending: bytes, code: int):
    def send(target, key, recorder):
        _answered(target.port, data, ending).close()

        def wanted(line: str) -> bool:      # a refused request has no request headers
            return line.startswith(f"-\t-\t-\tHTTP/1.1\t{code}\t")
        wanted.__doc__ = f"a refused request's {code}"
        return wanted
    return send


def _in_flight(port: int, key: str, recorder, data: bytes) -> socket.socket:
    """A connection that sent `data` (a request with x-test-key `key` that the upstream holds)
    once the upstream has it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    wait_until(lambda: recorder.count(key) >= 1, 10, f"{key} at the upstream")
    return sock


def _client_gone_case(target, key, recorder):
    _in_flight(target.port, key, recorder, b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-key: " +
               key.encode() + b"\r\nx-test-delay-ms: 1000\r\n\r\n").close()
    return _keyed(key)


ROW = ("key", "method", "path", "protocol", "code", "flags", "details", "cluster", "host", "remote",
       "local", "failure", "content-length", "received", "sent", "duration", "request duration",
       "response duration", "response tx duration", "attempts", "route", "long flags")
BODY_10 = ("-H", "x-test-body-size: 10")
CASES = {
    "through": (_curl_case("/u", *BODY_10), (
        "through", "GET", "/u", "HTTP/1.1", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "0", "10",
        "<ms>", "<ms>", "<ms>", "<ms>", "1", "r-u", "-")),
    "post": (_curl_case("/u", "-d", "hello", *BODY_10), (
        "post", "POST", "/u", "HTTP/1.1", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "5", "10",
        "<ms>", "<ms>", "<ms>", "<ms>", "1", "r-u", "-")),
    "http2": (_curl_case("/u", "--http2-prior-knowledge", *BODY_10), (
        "http2", "GET", "/u", "HTTP/2", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "0", "10",
        "<ms>", "<ms>", "<ms>", "<ms>", "1", "r-u", "-")),
    # UF: the host tried is UPSTREAM_HOST; no connection, so no remote or local address.
    "connect-failure": (_curl_case("/uf"), (
        "connect-failure", "GET", "/uf", "HTTP/1.1", "503", "UF",
        "upstream_reset_before_response_started{remote_connection_failure|"
        "delayed_connect_error:_Connection_refused}", "dead", "127.0.0.1:<dead>", "-", "-",
        "delayed_connect_error:_Connection_refused", "98", "0", "98",
        "<ms>", "<ms>", "-", "-", "1", "r-uf", "UpstreamConnectionFailure")),
    # The retries ran out on connect failures: URX set first, then UF.
    "connect-failure-retried": (_curl_case("/ufr"), (
        "connect-failure-retried", "GET", "/ufr", "HTTP/1.1", "503", "URX,UF",
        "upstream_reset_before_response_started{remote_connection_failure|"
        "delayed_connect_error:_Connection_refused}", "dead", "127.0.0.1:<dead>", "-", "-",
        "delayed_connect_error:_Connection_refused", "121", "0", "121", "<ms>", "<ms>", "-", "-",
        "2", "r-ufr", "UpstreamRetryLimitExceeded,UpstreamConnectionFailure")),
    # NC: no cluster info, so no cluster name; an empty local reply has no content-length in
    # its headers (Envoy's HTTP/1.1 codec writes "content-length: 0" on the wire).
    "no-cluster": (_curl_case("/nc", "-H", "x-cluster: missing"), (
        "no-cluster", "GET", "/nc", "HTTP/1.1", "503", "NC", "cluster_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "<ms>", "-", "-", "0", "r-nc", "NoClusterFound")),
    "no-cluster-http2": (_curl_case("/nc", "--http2-prior-knowledge", "-H", "x-cluster: missing"), (
        "no-cluster-http2", "GET", "/nc", "HTTP/2", "503", "NC", "cluster_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "<ms>", "-", "-", "0", "r-nc", "NoClusterFound")),
    "no-route": (_curl_case("/nothing"), (
        "no-route", "GET", "/nothing", "HTTP/1.1", "404", "NR", "route_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "<ms>", "-", "-", "0", "-", "NoRouteFound")),
    "timeout": (_curl_case("/ut", "-H", "x-test-delay-ms: 1000"), (
        "timeout", "GET", "/ut", "HTTP/1.1", "504", "UT", "response_timeout", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "24", "0", "24",
        "<ms>", "<ms>", "-", "-", "1", "r-ut", "UpstreamRequestTimeout")),
    # The last try's 503 goes to the client, with URX: its retries ran out.
    "retries-exhausted": (_curl_case("/urx", "-H", "x-test-status: 503", *BODY_10), (
        "retries-exhausted", "GET", "/urx", "HTTP/1.1", "503", "URX", "via_upstream", "a",
        "127.0.0.1:<a>", "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "0", "10",
        "<ms>", "<ms>", "<ms>",
        "<ms>", "2", "r-urx", "UpstreamRetryLimitExceeded")),
    # The client goes with the request at the upstream: DC, no response (code 0).
    "client-gone": (_client_gone_case, (
        "client-gone", "GET", "/u", "HTTP/1.1", "0", "DC", "downstream_remote_disconnect", "a",
        "127.0.0.1:<a>", "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "-", "0", "0",
        "<ms>", "<ms>", "-", "-",
        "1", "r-u", "DownstreamConnectionTermination")),
    # A request the HTTP/1.1 codec refuses is a codec error (DPE) whose stream has no request:
    # Envoy's default format writes '"- - HTTP/1.1" 426 DPE' for HTTP/1.0.
    "http10-refused": (_refused_case(b"GET /u HTTP/1.0\r\nhost: x\r\n\r\n", b"Upgrade Required", 426), (
        "-", "-", "-", "HTTP/1.1", "426", "DPE", "low_version", "-", "-", "-", "-", "-", "16", "0",
        "16", "<ms>", "-", "-", "-", "0", "-", "DownstreamProtocolError")),
    "bad-request": (_refused_case(b"GET /u HTTP/1.1\r\nhost x\r\n\r\n", b"Bad Request", 400), (
        "-", "-", "-", "HTTP/1.1", "400", "DPE", "http1.codec_error", "-", "-", "-", "-", "-", "11",
        "0", "11", "<ms>", "-", "-", "-", "0", "-", "DownstreamProtocolError")),
    "direct-response": (_curl_case("/dr"), (
        "direct-response", "GET", "/dr", "HTTP/1.1", "418", "-", "direct_response", "-", "-", "-",
        "-", "-", "6", "0", "6", "<ms>", "<ms>", "-", "-", "0", "r-dr", "-")),
}


@pytest.fixture(scope="module")
def observed(pair, recorder) -> dict:
    """Every case sent to each proxy in turn, then its lines read: one wait for Baton's
    access log flush (a second) for all cases, not one each. {proxy: {case: row}}, or
    {proxy: the exception} when a proxy failed (each case reports it)."""
    seen = {}
    for name in PROXIES:
        try:
            target = pair.target(name)
            offset = target.process.log_path.stat().st_size
            starts = {case: send(target, target.key(case), recorder)
                      for case, (send, _) in CASES.items()}
            seen[name] = {case: _read(target, offset, wanted, recorder.ports["a"])
                          for case, wanted in starts.items()}
        except Exception as exc:        # a proxy that did not start, a line not written
            seen[name] = exc
    return seen


def _read(target, offset: int, wanted, upstream_port: int):
    """A case's row, or the AssertionError that says its line never came."""
    try:
        return _row(_line(target, offset, wanted), upstream_port)
    except AssertionError as exc:
        return exc


def _row(line: str, upstream_port: int) -> dict:
    values = _normalised(line, upstream_port)
    values["REQ(X-TEST-KEY)"] = values["REQ(X-TEST-KEY)"].rsplit("#", 1)[0]
    return dict(zip(ROW, values.values()))


@pytest.mark.parametrize("case", list(CASES))
def test_access_log_fields(observed, case):
    expected = dict(zip(ROW, CASES[case][1]))
    rows = {}
    for name, seen in observed.items():
        if isinstance(seen, Exception):
            raise AssertionError(f"{name}: {type(seen).__name__}: {seen}")
        rows[name] = seen[case]
        if isinstance(rows[name], Exception):
            raise AssertionError(f"{name}: {rows[name]}")
        if name == "envoy" or ONLY == "baton":
            _check(rows[name] == expected, rows[name])
    if len(rows) == 2:
        differences = diff(rows["envoy"], rows["baton"])
        assert not differences, "Baton differs from Envoy:\n  " + "\n  ".join(differences)


def _check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")


# ---- how a connection's end is counted -----------------------------------------------------

ENDS = ["downstream_cx_destroy", "downstream_cx_destroy_local", "downstream_cx_destroy_remote",
        "downstream_cx_destroy_active_rq", "downstream_cx_destroy_local_active_rq",
        "downstream_cx_destroy_remote_active_rq", "downstream_cx_delayed_close_timeout",
        "downstream_rq_rx_reset", "downstream_cx_protocol_error", "downstream_rq_tx_reset"]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + SETTINGS


def _h2_get(key: str) -> bytes:
    """HEADERS (END_STREAM, END_HEADERS) of a GET on stream 1 the upstream holds a second."""
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                              (":path", "/u"), ("x-test-key", key), ("x-test-delay-ms", "1000")])
    return struct.pack(">L", len(block))[1:] + bytes([1, 5]) + struct.pack(">L", 1) + block


def _once_destroyed(target, prefix: str, before: dict) -> dict:
    """`target`'s stats under `prefix` once downstream_cx_destroy went past `before`'s."""
    destroyed = prefix + "downstream_cx_destroy"

    def counted():
        now = target.stats(prefix)
        return now if now.get(destroyed, 0) > before.get(destroyed, 0) else None
    return wait_until(counted, 10, f"{target.name}: the connection's end counted")


def _keep_alive_then_close(port, key, recorder):
    _answered(port, b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-body-size: 2\r\n\r\n", b"\x00\x01").close()


def _connection_close(port, key, recorder):
    _answered(port, b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-test-body-size: 2\r\n\r\n",
              b"\x00\x01").close()


def _connection_close_then_a_request(port, key, recorder):
    """A request after the `Connection: close` one, in the same write: never served (Baton
    answered it with a 400 and counted a protocol error)."""
    _answered(port, b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-test-body-size: 2\r\n\r\n"
              b"GET /u HTTP/1.1\r\nhost: x\r\n\r\n", b"\x00\x01").close()


def _gone_in_flight(port, key, recorder):
    _in_flight(port, key, recorder, b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-key: " + key.encode() +
               b"\r\nx-test-delay-ms: 1000\r\n\r\n").close()


def _h2_gone_in_flight(port, key, recorder):
    _in_flight(port, key, recorder, H2_PREFACE + _h2_get(key)).close()


def _h2_connection_error_in_flight(port, key, recorder):
    """A DATA frame on stream 0 (PROTOCOL_ERROR) while stream 1 waits for the upstream; the
    client goes once it has the GOAWAY."""
    sock = _in_flight(port, key, recorder, H2_PREFACE + _h2_get(key))
    sock.sendall(bytes.fromhex("000001000000000000") + b"x")
    seen = b""
    while b"\x07\x00\x00\x00\x00\x00" not in seen:          # GOAWAY on stream 0
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    sock.close()


def _http10_refused(port, key, recorder):
    _answered(port, b"GET /u HTTP/1.0\r\nhost: x\r\n\r\n", b"Upgrade Required").close()


def _gone_mid_body(port, key, recorder):
    """A POST that announced 100 bytes, sent 10 and closed: its bytes come before the FIN, so
    the request is in flight when the close is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /u HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nx-test-key: " +
                     key.encode() + b"\r\n\r\n" + b"x" * 10)


@pytest.mark.parametrize("scenario, counted", [
    (_keep_alive_then_close, {"destroy": 1, "destroy_remote": 1}),
    # The request was read whole: Envoy closes at once, no delayed close (a local close).
    (_connection_close, {"destroy": 1, "destroy_local": 1}),
    (_connection_close_then_a_request, {"destroy": 1, "destroy_local": 1}),
    (_gone_in_flight, {"destroy": 1, "destroy_remote": 1, "destroy_active_rq": 1,
                       "destroy_remote_active_rq": 1, "rq_rx_reset": 1}),
    (_h2_gone_in_flight, {"destroy": 1, "destroy_remote": 1, "destroy_active_rq": 1,
                          "destroy_remote_active_rq": 1, "rq_rx_reset": 1}),
    # Envoy decides to close (local, a request in flight); the client closes first (remote).
    (_h2_connection_error_in_flight, {"destroy": 1, "destroy_remote": 1, "destroy_active_rq": 1,
                                      "destroy_local_active_rq": 1, "rq_rx_reset": 1,
                                      "protocol_error": 1}),
    # A codec error: its stream, never a whole request, ends in a reset.
    (_http10_refused, {"destroy": 1, "destroy_remote": 1, "rq_rx_reset": 1, "protocol_error": 1}),
    # The client's close cuts the request: no codec error, no reset sent (Baton counted
    # protocol_error and rq_tx_reset, as the codec's end of input).
    (_gone_mid_body, {"destroy": 1, "destroy_remote": 1, "destroy_active_rq": 1,
                      "destroy_remote_active_rq": 1, "rq_rx_reset": 1}),
], ids=["keep-alive-client-closes", "connection-close", "connection-close-then-a-request",
        "client-gone-in-flight",
        "http2-client-gone-in-flight", "http2-connection-error-in-flight", "http10-refused",
        "client-gone-mid-body"])
def test_a_connections_end_is_counted_as_envoy_counts_it(pair, recorder, scenario, counted):
    """http.<prefix>.downstream_cx_destroy* and downstream_rq_rx_reset after one connection's
    end, as Envoy 1.40 counts them; listed (at 0 too) on /stats and /stats/prometheus."""
    def run(target):
        prefix = "http.fields."
        before = target.stats(prefix)
        scenario(target.port, target.key(scenario.__name__), recorder)
        after = _once_destroyed(target, prefix, before)
        with urllib.request.urlopen(f"http://127.0.0.1:{target.admin_port}/stats/prometheus",
                                    timeout=5) as reply:
            prometheus = reply.read().decode()
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
        listed = all(prefix + name in after and f"envoy_http_{name}{{envoy_http_conn_manager_prefix="
                     f"\"fields\"}}" in prometheus for name in ENDS)
        return {"counted": {k: v for k, v in delta.items() if v}, "listed": listed}
    differential(pair, run, lambda obs: _check(obs == {"counted": counted, "listed": True}, obs))


def test_a_close_whose_response_is_not_read_ends_after_delayed_close_timeout(pair):
    """`Connection: close`, a 4 MB response, a client that does not read (4 KiB receive
    buffer): the close that follows the response waits for its bytes to be written only
    delayed_close_timeout long (1 s, the default), then closes the socket with the rest
    unsent, counting downstream_cx_delayed_close_timeout (Envoy's FlushWrite). Baton's close
    waited for the client to read, for ever, outside downstream_cx_active. The listener
    buffers the whole response: on the default 1 MiB the response ended only if the kernel
    took the other 3 MB (loopback autotuning, less so under load), else the proxy stopped
    reading the upstream and the route's 15 s timeout reset the stream (either proxy)."""
    size = 4_000_000

    def run(target):
        prefix = "http.unread."
        overdue = prefix + "downstream_cx_delayed_close_timeout"
        before = target.stats(prefix)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", target.ports["unread"]))
            sock.sendall(b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                         b"x-test-body-size: %d\r\n\r\n" % size)
            # A safety bound, not the expected time (a second after the response's end).
            after = wait_until(lambda: (lambda now: now if now.get(overdue, 0) > before.get(
                overdue, 0) else None)(target.stats(prefix)), 60, "the close given up")
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
        return {"counted": {k: v for k, v in delta.items() if v},
                "whole_body": len(data.partition(b"\r\n\r\n")[2]) == size}
    differential(pair, run, lambda obs: _check(obs == {
        "counted": {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1},
        "whole_body": False}, obs), at_once=True)


def _undecodable(enc: Encoder, continued: bool) -> bytes:
    """Stream 1's request headers that HPACK cannot decode (index 0), in its HEADERS frame or
    in a CONTINUATION behind it."""
    if not continued:
        return struct.pack(">L", 1)[1:] + bytes([1, 5]) + struct.pack(">L", 1) + b"\x80"
    block = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                        (":path", "/u")])
    return (struct.pack(">L", len(block))[1:] + bytes([1, 1]) + struct.pack(">L", 1) + block +
            struct.pack(">L", 1)[1:] + bytes([9, 4]) + struct.pack(">L", 1) + b"\x80")


@pytest.mark.parametrize("continued", [False, True], ids=["in-headers", "in-continuation"])
def test_an_undecodable_request_head_counts_as_a_request_reset(pair, continued):
    """HTTP/2 request headers that do not decode end the connection (COMPRESSION_ERROR); Envoy
    1.40's connection manager had made the stream at its HEADERS: downstream_rq_total,
    _http2_total and _rx_reset count it. (Envoy also counts the close as one with a request in
    flight, destroy_local_active_rq; Baton, whose codec makes no stream of it, does not.)"""
    names = ("downstream_rq_total", "downstream_rq_http2_total", "downstream_rq_rx_reset")

    def run(target):
        prefix = "http.fields."
        before = target.stats(prefix)
        with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
            sock.sendall(H2_PREFACE + _undecodable(Encoder(), continued))
            seen = b""
            while b"\x07\x00\x00\x00\x00\x00" not in seen:      # the GOAWAY
                data = sock.recv(65536)
                assert data, f"closed before a GOAWAY: {seen[:80]!r}"
                seen += data
        after = _once_destroyed(target, prefix, before)
        return {name: after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in names}
    differential(pair, run, lambda obs: _check(obs == dict.fromkeys(names, 1), obs))


# ---- closes Baton decides on a timer (the "timeouts" listener) -------------------------------

def _wait_for_close(sock: socket.socket) -> None:
    """Read until the proxy closes `sock` (what an HTTP client waiting for its answer does)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


def _idle_after_a_request(port):
    sock = _answered(port, b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-body-size: 2\r\n\r\n", b"\x00\x01")
    _wait_for_close(sock)


def _head_unfinished(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /u HTTP/1.1\r\nhost: x\r\n")
    _wait_for_close(sock)


def _h2_idle(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(H2_PREFACE)
    _wait_for_close(sock)


@pytest.mark.parametrize("scenario, counted", [
    (_idle_after_a_request, {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1,
                             "idle_timeout": 1}),
    # The 408 is no codec error (no protocol_error); its stream ends in a reset.
    (_head_unfinished, {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1,
                        "rq_header_timeout": 1, "rq_rx_reset": 1}),
    (_h2_idle, {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1,
                "idle_timeout": 1}),
], ids=["http1-idle-timeout", "request-headers-timeout", "http2-idle-timeout"])
def test_a_close_on_a_timeout_is_counted_as_envoy_counts_it(pair, scenario, counted):
    """Baton closes on its idle or request-headers timeout and the client waits for that
    close: a local close, as Envoy 1.40 counts it (Baton counted remote). After a request,
    the close holds its FIN for delayed_close_timeout, which this client meets
    (downstream_cx_delayed_close_timeout), as in Envoy (Baton sent its FIN at once)."""
    names = ENDS + ["downstream_cx_idle_timeout", "downstream_rq_header_timeout"]

    def run(target):
        prefix = "http.timeouts."
        before = target.stats(prefix)
        scenario(target.ports["timeouts"])
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in names}
        return {k: v for k, v in delta.items() if v}
    differential(pair, run, lambda obs: _check(obs == counted, obs), at_once=True)


def _fin(port: int, data: bytes, ending: bytes) -> float:
    """Seconds from the answer (ending in `ending`) to the proxy's FIN, the client holding its
    socket open and reading."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        seen = _read_until(sock, ending)
        assert seen.endswith(ending), f"closed before the answer: {seen[-80:]!r}"
        answered = time.monotonic()
        while sock.recv(65536):
            pass
        return time.monotonic() - answered


@pytest.mark.parametrize("listener, data, ending", [
    # A response to a whole request from the upstream.
    ("fields", b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-test-body-size: 2\r\n\r\n",
     b"\x00\x01"),
    # HTTP/1.0, a body without a length: the FIN is its end.
    ("http10", b"GET /u HTTP/1.0\r\nhost: x\r\nx-test-events: 2,10\r\n\r\n", b"data: 1\n\n"),
], ids=["upstream-response", "http10-close-delimited"])
def test_the_fin_comes_at_once_after_a_response_that_ends_the_connection(pair, listener, data,
                                                                          ending):
    """A response that ends the connection and leaves nothing unread: the proxy's FIN comes
    at once though the client holds its socket open (Envoy 1.40's FlushWrite: no delayed
    close, a local close)."""
    def run(target):
        prefix = f"http.{listener}."
        before = target.stats(prefix)
        took = _fin(target.ports[listener], data, ending)
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
        return {"fin": "at once" if took < 0.5 else took,
                "counted": {k: v for k, v in delta.items() if v}}
    differential(pair, run, lambda obs: _check(obs == {
        "fin": "at once", "counted": {"destroy": 1, "destroy_local": 1}}, obs))


HELD = {"destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1}


@pytest.mark.parametrize("data, ending, counted", [
    (b"GET /u HTTP/1.1\r\nhost x\r\n\r\n", b"Bad Request",
     {**HELD, "protocol_error": 1, "rq_rx_reset": 1}),
    (b"GET /u HTTP/1.0\r\nhost: x\r\n\r\n", b"Upgrade Required",
     {**HELD, "protocol_error": 1, "rq_rx_reset": 1}),
    (b"GET /dr HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", b"teapot", HELD),
    (b"POST /dr HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789", b"teapot",
     {**HELD, "rq_rx_reset": 1}),
], ids=["codec-error-400", "http10-426", "direct-response", "before-the-body"])
def test_the_fin_is_held_after_an_answer_made_before_the_request_was_read(pair, data, ending,
                                                                          counted):
    """An answer that ends the connection before its request was read whole (a codec error's
    reply, a direct response made while the head is read, one sent before the body came): the
    proxy holds its FIN for delayed_close_timeout (0.3 s on this listener) waiting for the
    client's close, then closes, counting downstream_cx_delayed_close_timeout and a local
    close (Envoy 1.40's FlushWriteAndDelay). Baton half-closed at once: the client that held
    its socket open got the FIN with the answer and closed first (destroy_remote, no timer)."""
    def run(target):
        prefix = "http.timeouts."
        before = target.stats(prefix)
        took = _fin(target.ports["timeouts"], data, ending)
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
        return {"fin": "after delayed_close_timeout" if 0.25 <= took < 0.9 else took,
                "counted": {k: v for k, v in delta.items() if v}}
    differential(pair, run, lambda obs: _check(obs == {
        "fin": "after delayed_close_timeout", "counted": counted}, obs), at_once=True)


@pytest.mark.parametrize("data, counted", [
    # A direct response, made while the request's head is read: Envoy's request is not yet
    # complete when the response ends, so it waits for the client's close (delayed close).
    (b"GET /dr HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
     {"destroy": 1, "destroy_remote": 1}),
    # Answered before the request's body came: a delayed close, and the request is reset.
    (b"POST /dr HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
     {"destroy": 1, "destroy_remote": 1, "rq_rx_reset": 1}),
], ids=["direct-response", "before-the-body"])
def test_a_delayed_close_the_client_ends_after_the_answer(pair, data, counted):
    """The client reads the answer and closes (what an HTTP client does with a delimited
    response) while the proxy's delayed close waits for it: a remote close, as Envoy 1.40
    counts it (Baton had closed these at once, a local close, and counted no reset)."""
    def run(target):
        prefix = "http.fields."
        before = target.stats(prefix)
        _answered(target.port, data, b"teapot").close()
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
        return {k: v for k, v in delta.items() if v}
    differential(pair, run, lambda obs: _check(obs == counted, obs))


def test_a_head_arriving_when_the_idle_timeout_passes_gets_the_header_timeouts_408(pair):
    """idle_timeout (0.3 s) below request_headers_timeout (0.5 s), a request's head begun and
    never finished: Envoy 1.40 made the request's stream at its first byte, so its idle timer
    is off and the request-headers timeout answers (408, downstream_rq_header_timeout, no
    idle timeout). Baton's idle timer closed the connection with no answer at 0.3 s."""
    names = ["downstream_cx_idle_timeout", "downstream_rq_header_timeout",
             "downstream_rq_rx_reset", "downstream_cx_destroy_local"]

    def run(target):
        prefix = "http.idle_first."
        before = target.stats(prefix)
        sock = socket.create_connection(("127.0.0.1", target.ports["idle_first"]), timeout=5)
        sock.sendall(b"GET /u HTTP/1.1\r\nhost: x\r\n")
        seen = _read_until(sock, b"request header timeout")
        _wait_for_close(sock)
        after = _once_destroyed(target, prefix, before)
        return {"status": seen.split(b"\r\n", 1)[0].decode(), "body": seen.rpartition(b"\r\n\r\n")[2].decode(),
                **{name: after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in names}}
    differential(pair, run, lambda obs: _check(obs == {
        "status": "HTTP/1.1 408 Request Timeout", "body": "request header timeout",
        "downstream_cx_idle_timeout": 0, "downstream_rq_header_timeout": 1,
        "downstream_rq_rx_reset": 1, "downstream_cx_destroy_local": 1}, obs), at_once=True)


def test_a_head_that_stops_arriving_gets_the_stream_idle_timeouts_408(pair):
    """No request_headers_timeout, a request's head begun and never finished: Envoy 1.40's
    stream exists from the first byte, so its stream_idle_timeout (1 s here; 5 min by
    default) answers 408 "stream timeout" (downstream_rq_idle_timeout) and the connection's
    idle timeout (0.3 s) does not apply. Baton closed silently at its idle timeout (1 h by
    default), counting downstream_cx_idle_timeout. The client waits for the close, which holds
    its FIN for delayed_close_timeout (downstream_cx_delayed_close_timeout), as in Envoy."""
    names = ENDS + ["downstream_cx_idle_timeout", "downstream_rq_idle_timeout",
                    "downstream_rq_header_timeout"]

    def run(target):
        prefix = "http.slow_head."
        before = target.stats(prefix)
        sock = socket.create_connection(("127.0.0.1", target.ports["slow_head"]), timeout=5)
        sock.sendall(b"GET /u HTTP/1.1\r\nhost: x\r\n")
        start = time.monotonic()
        seen = _read_until(sock, b"stream timeout")
        took = time.monotonic() - start
        _wait_for_close(sock)
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in names}
        return {"status": seen.split(b"\r\n", 1)[0].decode(),
                "body": seen.rpartition(b"\r\n\r\n")[2].decode(),
                "after_the_idle_timeout": took > 0.6, "counted": {k: v for k, v in delta.items() if v}}
    differential(pair, run, lambda obs: _check(obs == {
        "status": "HTTP/1.1 408 Request Timeout", "body": "stream timeout",
        "after_the_idle_timeout": True, "counted": {
            "destroy": 1, "destroy_local": 1, "delayed_close_timeout": 1, "rq_rx_reset": 1,
            "rq_idle_timeout": 1}}, obs),
        at_once=True)


@pytest.mark.parametrize("listener", ["slow_head", "no_head_timer"])
def test_a_slow_head_is_not_cut_by_the_idle_timeout(pair, listener):
    """A head that takes longer than the idle timeout (0.3 s) to arrive, but less than the
    stream idle timeout (1 s), or with no timer on heads at all (no request_headers_timeout,
    stream_idle_timeout 0): served by Envoy 1.40 (its stream, made at the first byte, turned
    the idle timer off); Baton closed at the idle timeout, no answer."""
    def run(target):
        with socket.create_connection(("127.0.0.1", target.ports[listener]), timeout=5) as sock:
            sock.sendall(b"GET /u HTTP/1.1\r\nhost: x\r\n")
            time.sleep(0.6)             # (the idle timeout passes: what the test is about)
            try:
                sock.sendall(b"connection: close\r\nx-test-body-size: 2\r\n\r\n")
            except OSError:
                pass
            seen = _read_until(sock, b"\x00\x01")
        return {"status": seen.split(b"\r\n", 1)[0].decode()}
    differential(pair, run, lambda obs: _check(obs == {"status": "HTTP/1.1 200 OK"}, obs),
                 at_once=True)


@pytest.mark.parametrize("asks_again", [False, True], ids=["silent", "a-request-in-the-drain"])
def test_an_idle_keep_alive_connection_is_drained_before_it_closes(pair, asks_again):
    """An HTTP/1.1 connection idle after a request (idle_timeout 0.3 s, drain_timeout 0.6 s,
    delayed_close_timeout 0.2 s): Envoy 1.40 drains it, sending nothing; a request within
    drain_timeout is served, with `connection: close`, and its idle timer, armed again, counts
    a second idle timeout before the drain's end; at drain_timeout the connection closes with
    its FIN held for the delayed close, 1.1 s after the first answer either way. Baton closed
    at the idle timeout."""
    names = ENDS + ["downstream_cx_idle_timeout"]
    request = b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-body-size: 2\r\n\r\n"

    def run(target):
        prefix = "http.idle_drain."
        before = target.stats(prefix)
        second = None
        with socket.create_connection(("127.0.0.1", target.ports["idle_drain"]), timeout=5) as sock:
            sock.sendall(request)
            _read_until(sock, b"\x00\x01")
            answered = time.monotonic()
            if asks_again:
                idle = prefix + "downstream_cx_idle_timeout"
                wait_until(lambda: target.stats(prefix).get(idle, 0) > before.get(idle, 0), 5,
                           "the idle timeout")
                sock.sendall(request)
                head = _read_until(sock, b"\x00\x01").partition(b"\r\n\r\n")[0].split(b"\r\n")
                second = [head[0].decode()] + [line.decode() for line in head[1:]
                                               if line.lower().startswith(b"connection:")]
            while sock.recv(65536):
                pass
            took = time.monotonic() - answered
        after = _once_destroyed(target, prefix, before)
        delta = {name.removeprefix("downstream_").removeprefix("cx_"):
                 after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in names}
        return {"fin": "after the drain and the delayed close" if 0.95 <= took < 1.6 else took,
                "second": second, "counted": {k: v for k, v in delta.items() if v}}
    differential(pair, run, lambda obs: _check(obs == {
        "fin": "after the drain and the delayed close",
        "second": ["HTTP/1.1 200 OK", "connection: close"] if asks_again else None,
        "counted": {**HELD, "idle_timeout": 2 if asks_again else 1}}, obs), at_once=True)


IDLE_DRAIN_REQUEST = b"GET /u HTTP/1.1\r\nhost: x\r\nx-test-body-size: 2\r\n\r\n"


def _past_the_idle_timeout(target, before: dict) -> tuple[socket.socket, float]:
    """A connection to the idle_drain listener answered once and left idle until its idle
    timeout was counted (the drain window open): the socket, and when the answer came."""
    sock = socket.create_connection(("127.0.0.1", target.ports["idle_drain"]), timeout=5)
    sock.sendall(IDLE_DRAIN_REQUEST)
    _read_until(sock, b"\x00\x01")
    answered = time.monotonic()
    idle = "http.idle_drain.downstream_cx_idle_timeout"
    wait_until(lambda: target.stats("http.idle_drain.").get(idle, 0) > before.get(idle, 0), 5,
               "the idle timeout")
    return sock, answered


def _answer_head(sock: socket.socket) -> list[str]:
    """The status line and any connection: header of the next answer (its 2-byte body read)."""
    head = _read_until(sock, b"\x00\x01").partition(b"\r\n\r\n")[0].split(b"\r\n")
    return [head[0].decode()] + [line.decode() for line in head[1:]
                                 if line.lower().startswith(b"connection:")]


def _ends_counted(target, before: dict) -> dict:
    """The idle_drain listener's ENDS counters that moved since `before`, once the connection's
    end was counted."""
    prefix = "http.idle_drain."
    after = _once_destroyed(target, prefix, before)
    delta = {name.removeprefix("downstream_").removeprefix("cx_"):
             after.get(prefix + name, 0) - before.get(prefix + name, 0) for name in ENDS}
    return {k: v for k, v in delta.items() if v}


def _closed_after(sock: socket.socket, since: float) -> float:
    """Seconds from `since` until the proxy's FIN, what comes before it read and dropped."""
    while sock.recv(65536):
        pass
    return time.monotonic() - since


def _held_after_the_drain(took: float):
    return "after the drain and the delayed close" if 0.95 <= took < 1.6 else took


def test_every_request_in_the_idle_drain_window_is_answered(pair):
    """The idle timeout's drain (idle 0.3 s, drain 0.6 s, delayed close 0.2 s): two more
    requests in the window, the second sent once the first is answered. Envoy 1.40 answers
    both, each with `connection: close` (its drain window keeps the connection Draining, not
    Closing), and closes at drain_timeout with its FIN held, 1.1 s after the first answer.
    Baton answered the first and dropped the second (its codec stopped reading after the first
    `connection: close`): EOF with no answer. (The two pipelined in one write: Envoy answered
    the second in 3 runs of 4, so no case here; Baton answers both.)"""
    def run(target):
        before = target.stats("http.idle_drain.")
        sock, answered = _past_the_idle_timeout(target, before)
        with sock:
            answers = []
            for _ in range(2):
                sock.sendall(IDLE_DRAIN_REQUEST)
                answers.append(_answer_head(sock))
            took = _closed_after(sock, answered)
        return {"answers": answers, "fin": _held_after_the_drain(took),
                "counted": _ends_counted(target, before)}
    differential(pair, run, lambda obs: _check(obs == {
        "answers": [["HTTP/1.1 200 OK", "connection: close"]] * 2,
        "fin": "after the drain and the delayed close", "counted": HELD}, obs), at_once=True)


def test_a_request_asking_to_close_in_the_idle_drain_window_waits_for_the_drain(pair):
    """The idle timeout's drain (idle 0.3 s, drain 0.6 s, delayed close 0.2 s): a request with
    `connection: close` in the window is answered, and Envoy 1.40, Draining already, does not
    close after it: the close comes at drain_timeout, its FIN held for the delayed close, 1.1 s
    after the first answer (as with no request)."""
    def run(target):
        before = target.stats("http.idle_drain.")
        sock, answered = _past_the_idle_timeout(target, before)
        with sock:
            sock.sendall(IDLE_DRAIN_REQUEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
            status = _answer_head(sock)[0]
            took = _closed_after(sock, answered)
        return {"status": status, "fin": _held_after_the_drain(took),
                "counted": _ends_counted(target, before)}
    differential(pair, run, lambda obs: _check(obs == {
        "status": "HTTP/1.1 200 OK", "fin": "after the drain and the delayed close",
        "counted": HELD}, obs), at_once=True)


def test_a_response_in_flight_when_the_idle_drain_ends_is_followed_by_the_delayed_close(pair):
    """The idle timeout's drain (idle 0.3 s, drain 0.6 s, delayed close 0.2 s) with a request
    whose response (0.9 s late upstream) is still in flight at drain_timeout: the answer says
    `connection: close`, and Envoy 1.40, Closing since its drain timeout, holds the FIN for
    delayed_close_timeout after it (downstream_cx_delayed_close_timeout), though the request
    was read whole. Baton sent its FIN at once (destroy_local alone)."""
    def run(target):
        before = target.stats("http.idle_drain.")
        sock, _ = _past_the_idle_timeout(target, before)
        with sock:
            sock.sendall(IDLE_DRAIN_REQUEST.replace(b"\r\n\r\n",
                                                    b"\r\nx-test-delay-ms: 900\r\n\r\n"))
            answer = _answer_head(sock)
            answered = time.monotonic()
            took = _closed_after(sock, answered)
        return {"answer": answer,
                "fin": "after delayed_close_timeout" if 0.15 <= took < 0.7 else round(took, 2),
                "counted": _ends_counted(target, before)}
    differential(pair, run, lambda obs: _check(obs == {
        "answer": ["HTTP/1.1 200 OK", "connection: close"], "fin": "after delayed_close_timeout",
        "counted": HELD}, obs), at_once=True)


def test_the_log_lines_of_a_client_gone_mid_body_and_a_header_timeout(pair, recorder):
    """A client's close in the middle of a request body: code 0, DC, downstream_remote_disconnect
    (Baton: -, downstream_closed_mid-request, the codec's end of input). A request-headers
    timeout: 408 with no flag (Baton: DPE)."""
    def run(target):
        offsets = {name: target.process.log_path.stat().st_size for name in ("fields", "timeouts")}
        key = target.key("gone-mid-body")
        _gone_mid_body(target.port, key, recorder)
        _head_unfinished(target.ports["timeouts"])

        def timeout_line(line: str) -> bool:
            return line.startswith("-\t-\t-\tHTTP/1.1\t408\t")
        timeout_line.__doc__ = "the 408"
        rows = {"gone-mid-body": _line(target, offsets["fields"], _keyed(key)),
                "header-timeout": _line(target, offsets["timeouts"], timeout_line)}
        return {case: line.split("\t")[4:7] for case, line in rows.items()}
    differential(pair, run, lambda obs: _check(obs == {
        "gone-mid-body": ["0", "DC", "downstream_remote_disconnect"],
        "header-timeout": ["408", "-", "request_header_timeout"]}, obs), at_once=True)


def test_upstream_addresses_after_a_retry_that_failed_to_connect(pair, recorder):
    """The first try reaches host a (a 503, retried), the second the dead host (UF): the line
    names the dead host, with no remote or local address, as Envoy 1.40's new UpstreamInfo per
    try (Baton kept the first try's local address, so it logged the dead host as reached).
    /one between rounds moves the round robin, so that some rounds start on a."""
    def run(target):
        rows = set()
        offset = target.process.log_path.stat().st_size
        keys = [target.key(f"retried-{i}") for i in range(6)]
        for i, key in enumerate(keys):
            if i % 2:
                _curl(target, "/one")
            _curl(target, "/rt", "-H", f"x-test-key: {key}", "-H", "x-test-status: 503")
        for key in keys:        # (the lines read once all are sent: one wait for the flush)
            values = _normalised(_line(target, offset, _keyed(key)), recorder.ports["a"])
            if values["UPSTREAM_HOST"].endswith(":<dead>"):
                rows.add(tuple(values[name] for name in (
                    "UPSTREAM_REQUEST_ATTEMPT_COUNT", "RESPONSE_FLAGS", "UPSTREAM_HOST",
                    "UPSTREAM_REMOTE_ADDRESS", "UPSTREAM_LOCAL_ADDRESS")))
        return sorted(rows)
    differential(pair, run, lambda obs: _check(
        ("2", "URX,UF", "127.0.0.1:<dead>", "-", "-") in obs, obs))


def test_request_duration_of_an_http2_request_its_headers_left_open(pair):
    """HTTP/2 HEADERS without END_STREAM (no content-length, no DATA) answered at once by a
    direct response: the request never completed, Envoy 1.40 logs %REQUEST_DURATION% "-"
    (Baton logged 0, taking the missing content-length for a request that ended with its head)."""
    def run(target):
        key = target.key("http2-open-post")
        block = Encoder().encode([(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                  (":path", "/dr"), ("x-test-key", key)])
        headers = struct.pack(">L", len(block))[1:] + bytes([1, 4]) + struct.pack(">L", 1) + block
        offset = target.process.log_path.stat().st_size
        with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
            sock.sendall(H2_PREFACE + headers)         # END_HEADERS, no END_STREAM
            seen = b""
            while b"teapot" not in seen:               # the direct response's body
                chunk = sock.recv(65536)
                if not chunk:
                    break
                seen += chunk
        values = dict(zip(FIELDS, _line(target, offset, _keyed(key)).split("\t")))
        return {name: values[name] for name in ("RESPONSE_CODE", "REQUEST_DURATION")}
    differential(pair, run, lambda obs: _check(obs == {"RESPONSE_CODE": "418",
                                                       "REQUEST_DURATION": "-"}, obs))


def _head_lines(port: int, request: bytes) -> list:
    """The status line and header lines of the answer to `request` (date's value masked)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        seen = b""
        while b"\r\n\r\n" not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
    head = seen.split(b"\r\n\r\n")[0].decode().split("\r\n")
    return [head[0]] + ["date: <d>" if line.lower().startswith("date:") else line
                        for line in head[1:]]


@pytest.mark.parametrize("request_bytes", [
    b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n",
    b"HEAD /nothing HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /nc HTTP/1.1\r\nhost: x\r\nx-cluster: missing\r\n\r\n",
    b"GET /nothing HTTP/1.0\r\nhost: x\r\n\r\n",
], ids=["no-route", "no-route-head", "no-cluster", "no-route-http10"])
def test_an_empty_local_reply_on_the_wire(pair, request_bytes):
    """An empty local reply's head as Envoy 1.40 writes it, names in order: date before server
    (Baton wrote server first), and on a HEAD request "transfer-encoding: chunked" with no
    body (Envoy's codec names chunked framing on a HEAD response without a length; Baton
    wrote no framing header)."""
    differential(pair, lambda target: _head_lines(target.port, request_bytes), at_once=True)
