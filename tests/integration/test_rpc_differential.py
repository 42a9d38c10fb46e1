"""Baton and Envoy 1.40's dubbo_proxy on the same bootstrap and the same Dubbo requests: the
same routing decisions (which provider answers), the same local replies (status and
message), the same heartbeat answer, the same dubbo.<stat_prefix>.* counts."""

from __future__ import annotations

from baton.tests.integration.conftest import free_port
from baton.tests.integration.differential.proxies import Envoy
from baton.tests.integration.rpc_peers.frames import dubbo_request, dubbo_value
from baton.tests.integration.test_rpc_proxy import RawClient, processes, provider, rpc_bootstrap  # noqa: F401
from baton.worker.codecs import dubbo
from baton.worker.codecs.hessian2 import Reader

SVC = "org.example.UserService"

ROUTES = [
    {"name": "canary", "interface": SVC, "group": "canary", "version": "2.0", "routes": [
        {"match": {"method": {"name": {"exact": "get"}}}, "route": {"cluster": "b"}}]},
    {"name": "users", "interface": SVC, "routes": [
        {"match": {"method": {"name": {"exact": "get"}},
                   "headers": [{"name": "env", "string_match": {"exact": "test"}}]},
         "route": {"cluster": "b"}},
        {"match": {"method": {"name": {"prefix": "get"}, "params_match": {
            "0": {"exact_match": "vip"}}}}, "route": {"cluster": "b"}},
        {"match": {"method": {"name": {"safe_regex": {"regex": "(get|list).*"}}}},
         "route": {"cluster": "a"}}]},
    {"name": "wild", "interface": "org.other.*", "routes": [
        {"match": {"method": {"name": {"exact": "ping"}}}, "route": {"cluster": "a"}}]},
]

# (service, method, args, attachments, body version)
CASES = [
    (SVC, "get", ["x"], {}, ""),
    (SVC, "get", ["x"], {"group": "canary"}, "2.0"),
    (SVC, "get", ["x"], {"group": "canary"}, "1.0"),
    (SVC, "get", ["x"], {"group": "blue"}, "2.0"),
    (SVC, "get", ["x"], {"env": "test"}, ""),
    (SVC, "get", ["x"], {"env": "prod"}, ""),
    (SVC, "getAll", ["vip"], {}, ""),
    (SVC, "getAll", ["basic"], {}, ""),
    (SVC, "listAll", [], {}, ""),
    (SVC, "delete", ["x"], {}, ""),
    ("org.other.Thing", "ping", [], {}, ""),
    ("org.other.", "ping", [], {}, ""),
    ("org.Unknown", "get", ["x"], {}, ""),
]


def outcome(frame):
    """What a client sees: the provider's answer, or the local reply's status and message."""
    if frame.status == dubbo.OK:
        return ("ok", dubbo_value(frame))
    reader = Reader(frame.raw, dubbo.HEADER_SIZE)
    first = reader.read()
    # Envoy puts the response type (0, with exception) before the message; Baton does not.
    message = reader.read() if first == 0 else first
    return (frame.status, message)


def call_cases(client, cases) -> list:
    """Each (service, method, args, attachments, body version) called in turn -> outcomes."""
    results = []
    for i, (service, method, args, attachments, version) in enumerate(cases):
        # Canonical Hessian (untyped maps): Envoy ignores attachments in a typed map.
        client.send(dubbo_request(100 + i, service, method, args, attachments, version=version,
                                  canonical=True))
        frame = client.receive(1)[0]
        assert frame.request_id == 100 + i
        results.append(outcome(frame))
    return results


def run_cases(port: int) -> tuple[list, bytes]:
    client = RawClient("dubbo", port)
    results = call_cases(client, CASES)
    client.send(dubbo_request(99, SVC, "get", ["one"], two_way=False))
    client.send(dubbo.heartbeat_request(7))
    heartbeat = client.receive(1)[0].raw
    client.close()
    return results, heartbeat


def dubbo_stats(stats: dict) -> dict:
    # request_twoway: Envoy 1.40 never counts it (Baton does; chain.py says why).
    return {k: v for k, v in stats.items()
            if k.startswith("dubbo.rpc_in.") and not k.endswith(("request_twoway",
                                                                 "request_timeout"))}


def test_same_routing_replies_and_stats_as_envoy(baton, processes, tmp_path):  # noqa: F811
    ports = {"a": provider(processes, "dubbo", "A"), "b": provider(processes, "dubbo", "B")}
    envoy_port, baton_port = free_port(), free_port()
    envoy = Envoy(tmp_path / "envoy", rpc_bootstrap(free_port(), {"dubbo": envoy_port}, ports,
                                                    routes={"dubbo": ROUTES})).start()
    try:
        expected, envoy_heartbeat = run_cases(envoy_port)
        b = baton(rpc_bootstrap(free_port(), {"dubbo": baton_port}, ports,
                                routes={"dubbo": ROUTES}), concurrency=1)
        got, baton_heartbeat = run_cases(baton_port)
        assert got == expected, "\n".join(f"{c} baton={g} envoy={e}" for c, g, e in zip(CASES, got, expected))
        assert baton_heartbeat == envoy_heartbeat
        # Enough variety to mean something: both providers answered, and local replies came.
        assert {o[1].split(":")[0] for o in got if o[0] == "ok"} == {"A", "B"}
        assert any(o[0] == dubbo.SERVICE_NOT_FOUND for o in got)
        with __import__("urllib.request").request.urlopen(
                f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=5) as r:
            envoy_stats = {n: int(v) for n, _, v in (line.partition(": ") for line in
                                                     r.read().decode().splitlines())
                           if v.strip().isdigit()}
        assert dubbo_stats(b.stats()) == dubbo_stats(envoy_stats)
    finally:
        envoy.stop()
