"""Differential: the access log's common fields across the ways a request ends (through to the
upstream, a connect failure, a timeout, no cluster, no route, a direct response, a request the
codec refuses), on one Envoy+Baton pair; every field as Envoy 1.40 writes it, with only what is
timing or an ephemeral port normalised away ("<ms>", "<port>")."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from .differential.addresses import closed_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import diff
from .differential.proxies import ONLY, PROXIES, module_pair
from ..waiting import wait_until

FIELDS = ["REQ(X-TEST-KEY)", "REQ(:METHOD)", "REQ(:PATH)", "PROTOCOL", "RESPONSE_CODE",
          "RESPONSE_FLAGS", "RESPONSE_CODE_DETAILS", "UPSTREAM_CLUSTER", "UPSTREAM_HOST",
          "UPSTREAM_REMOTE_ADDRESS", "UPSTREAM_LOCAL_ADDRESS", "UPSTREAM_TRANSPORT_FAILURE_REASON",
          "RESP(CONTENT-LENGTH)", "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "RESPONSE_DURATION",
          "RESPONSE_TX_DURATION", "UPSTREAM_REQUEST_ATTEMPT_COUNT", "ROUTE_NAME"]
TIMINGS = {"DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION"}
FORMAT = "\t".join(f"%{name}%" for name in FIELDS) + "\n"
ACCESS_LOG = [{"name": "envoy.access_loggers.stdout", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "log_format": {"text_format_source": {"inline_string": FORMAT}}}}]
DEAD = closed_port()


def fields_bootstrap(upstreams: dict[str, int]):
    def route(name, prefix, action):
        return {"name": name, "match": {"prefix": prefix}, **action}
    routes = {"name": "fields", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        route("r-nc", "/nc", {"route": {"cluster_header": "x-cluster"}}),
        route("r-uf", "/uf", {"route": {"cluster": "dead"}}),
        route("r-ut", "/ut", {"route": {"cluster": "a", "timeout": "0.3s"}}),
        route("r-dr", "/dr", {"direct_response": {"status": 418, "body": {"inline_string": "teapot"}}}),
        route("r-u", "/u", {"route": {"cluster": "a"}})]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("fields", ports["fields"], routes, access_log=ACCESS_LOG)],
                         [cluster("a", [upstreams["a"]]), cluster("dead", [DEAD])])
    return template


recorder, pair = module_pair("diff-al-fields", fields_bootstrap, ["fields"])


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


def _line(target, offset: int, starts: str) -> str:
    """The first access log line after byte `offset` of the proxy's process log (its stdout)
    that starts with `starts` (flushed within about a second: waited for)."""
    path = target.process.log_path

    def find():
        with open(path, "rb") as f:
            f.seek(offset)
            for text in f.read().decode(errors="replace").splitlines():
                if text.startswith(starts) and text.count("\t") == len(FIELDS) - 1:
                    return text
        return None
    return wait_until(find, 10, f"{target.name}'s access log line {starts!r}")


def _curl(target, path: str, *args: str) -> None:
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", *args,
                    f"http://127.0.0.1:{target.port}{path}"], timeout=10)


def _raw(target, data: bytes) -> None:
    """Send `data` on a connection of its own and read the answer to the proxy's close."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=5) as sock:
        sock.sendall(data)
        while sock.recv(65536):
            pass


def _curl_case(path: str, *args: str):
    def send(target, key):
        _curl(target, path, "-H", f"x-test-key: {key}", *args)
        return key + "\t"
    return send


def _raw_case(data: bytes):
    def send(target, key):
        _raw(target, data)
        return "-\t"             # a request the codec refused logs no request header
    return send


ROW = ("key", "method", "path", "protocol", "code", "flags", "details", "cluster", "host", "remote",
       "local", "failure", "content-length", "received", "sent", "duration", "response duration",
       "response tx duration", "attempts", "route")
BODY_10 = ("-H", "x-test-body-size: 10")
CASES = {
    "through": (_curl_case("/u", *BODY_10), (
        "through", "GET", "/u", "HTTP/1.1", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "0", "10", "<ms>", "<ms>", "<ms>", "1", "r-u")),
    "post": (_curl_case("/u", "-d", "hello", *BODY_10), (
        "post", "POST", "/u", "HTTP/1.1", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "5", "10", "<ms>", "<ms>", "<ms>", "1", "r-u")),
    "http2": (_curl_case("/u", "--http2-prior-knowledge", *BODY_10), (
        "http2", "GET", "/u", "HTTP/2", "200", "-", "via_upstream", "a", "127.0.0.1:<a>",
        "127.0.0.1:<a>", "127.0.0.1:<port>", "-", "10", "0", "10", "<ms>", "<ms>", "<ms>", "1", "r-u")),
    # UF: the host tried is UPSTREAM_HOST; no connection, so no remote or local address.
    "connect-failure": (_curl_case("/uf"), (
        "connect-failure", "GET", "/uf", "HTTP/1.1", "503", "UF",
        "upstream_reset_before_response_started{remote_connection_failure|"
        "delayed_connect_error:_Connection_refused}", "dead", "127.0.0.1:<dead>", "-", "-",
        "delayed_connect_error:_Connection_refused", "98", "0", "98", "<ms>", "-", "-", "1", "r-uf")),
    # NC: no cluster info, so no cluster name; an empty local reply has no content-length in
    # its headers (Envoy's HTTP/1.1 codec writes "content-length: 0" on the wire).
    "no-cluster": (_curl_case("/nc", "-H", "x-cluster: missing"), (
        "no-cluster", "GET", "/nc", "HTTP/1.1", "503", "NC", "cluster_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "-", "-", "0", "r-nc")),
    "no-cluster-http2": (_curl_case("/nc", "--http2-prior-knowledge", "-H", "x-cluster: missing"), (
        "no-cluster-http2", "GET", "/nc", "HTTP/2", "503", "NC", "cluster_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "-", "-", "0", "r-nc")),
    "no-route": (_curl_case("/nothing"), (
        "no-route", "GET", "/nothing", "HTTP/1.1", "404", "NR", "route_not_found", "-", "-", "-",
        "-", "-", "-", "0", "0", "<ms>", "-", "-", "0", "-")),
    "direct-response": (_curl_case("/dr"), (
        "direct-response", "GET", "/dr", "HTTP/1.1", "418", "-", "direct_response", "-", "-", "-",
        "-", "-", "6", "0", "6", "<ms>", "-", "-", "0", "r-dr")),
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
            starts = {case: send(target, target.key(case)) for case, (send, _) in CASES.items()}
            seen[name] = {case: _row(_line(target, offset, start), recorder.ports["a"])
                          for case, start in starts.items()}
        except Exception as exc:        # a proxy that did not start, a line not written
            seen[name] = exc
    return seen


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
        if name == "envoy" or ONLY == "baton":
            _check(rows[name] == expected, rows[name])
    if len(rows) == 2:
        differences = diff(rows["envoy"], rows["baton"])
        assert not differences, "Baton differs from Envoy:\n  " + "\n  ".join(differences)


def _check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")
