"""generic_proxy's access_log through a real Baton: one line per RPC request (answered by the
provider, answered locally, timed out, oneway, abandoned), with generic_proxy's operators;
sofa-rpc-node's real Dubbo and Bolt peers; the line of a call answered across a reload; and
the same fields as Envoy 1.40's generic_proxy writes on the same bootstrap."""

from __future__ import annotations

import json

from baton.tests.integration.conftest import free_port
from baton.tests.integration.differential.proxies import Envoy
from baton.tests.integration.generic_proxy_config import action, input_, matcher_list, tree
from baton.tests.integration.rpc_peers.frames import dubbo_request
from baton.tests.integration.test_rpc_generic import SVC, generic_bootstrap
from baton.tests.integration.test_rpc_proxy import (SERVICE, RawClient, needs_node, node_client,
                                                    node_server, processes, provider)  # noqa: F401
from baton.tests.waiting import wait_until
from baton.worker.codecs import dubbo

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TEXT = ("%PROTOCOL% %HOST% %PATH% %METHOD% %REQUEST_PROPERTY(env)% %GENERIC_RESPONSE_CODE% "
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS%\n")
JSON = {"method": "%METHOD%", "code": "%GENERIC_RESPONSE_CODE%", "host": "%UPSTREAM_HOST%",
        "peer": "%DOWNSTREAM_REMOTE_ADDRESS%", "duration": "%DURATION%", "start": "%START_TIME%"}


def with_logs(bootstrap: dict, *logs: tuple) -> dict:
    """Each (path, text format or json dict) as a file access_log of every generic_proxy."""
    entries = []
    for path, fmt in logs:
        log_format = {"json_format": fmt} if isinstance(fmt, dict) else {
            "text_format_source": {"inline_string": fmt}}
        entries.append({"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(path), "log_format": log_format}})
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = entries
    return bootstrap


def lines(path, count: int, what: str) -> list[str]:
    """The file's lines once it has `count` (written within the 1 s flush interval)."""
    def read():
        return path.read_text().splitlines() if path.exists() else []
    wait_until(lambda: len(read()) >= count, 10, what)
    got = read()
    assert len(got) == count, got
    return got


ROUTES = {"name": "r", "virtual_hosts": [{"name": "users", "hosts": [SVC], "routes": tree(
    input_("method"), exact={"sleep": action("a", timeout="0.5s")},
    on_no_match={"matcher": matcher_list([], action("a"))})},
    {"name": "dead", "hosts": ["org.Dead"], "routes": matcher_list([], action("dead"))}]}


def test_one_line_per_request_answered_locally_timed_out_oneway_or_abandoned(
        baton, processes, tmp_path):
    port, text, js = free_port(), tmp_path / "rpc.log", tmp_path / "rpc.json"
    clusters = {"a": provider(processes, "dubbo", "A"), "dead": free_port()}
    b = baton(with_logs(generic_bootstrap(free_port(), {"dubbo": port}, clusters, ROUTES),
                        (text, TEXT), (js, JSON)), concurrency=1)
    client = RawClient("dubbo", port)
    peer = "127.0.0.1:%d" % client.sock.getsockname()[1]
    client.send(dubbo_request(1, SVC, "get", ["x"], {"env": "test"}))
    assert client.receive(1)[0].status == dubbo.OK
    client.send(dubbo_request(2, "org.Nowhere", "get", ["x"]))
    assert client.receive(1)[0].status == dubbo.SERVER_ERROR
    client.send(dubbo_request(3, "org.Dead", "get", ["x"]))
    assert client.receive(1)[0].status == dubbo.SERVER_ERROR
    client.send(dubbo_request(4, SVC, "sleep", ["2"]))
    assert client.receive(1)[0].status == dubbo.SERVER_ERROR
    client.send(dubbo_request(5, SVC, "echo", ["one"], two_way=False))
    client.send(dubbo_request(6, SVC, "sleep", ["0.3"]))     # abandoned: the client leaves
    wait_until(lambda: b.stats()["generic_proxy.gp.downstream_rq_active"] == 1, 10, "in flight")
    client.close()
    got = lines(text, 6, "six lines")
    assert got[:5] == [
        f"dubbo {SVC} {SVC} get test 20 20 - a via_upstream",
        "dubbo org.Nowhere org.Nowhere get - 80 80 NR - route_not_found",
        "dubbo org.Dead org.Dead get - 80 80 UF dead connection_failure",
        f"dubbo {SVC} {SVC} sleep - 80 80 UT a timeout",
        f"dubbo {SVC} {SVC} echo - - 0 - a -"], got
    assert got[5] == f"dubbo {SVC} {SVC} sleep - - 0 DC a -"
    records = [json.loads(line) for line in lines(js, 6, "six json lines")]
    assert [r["code"] for r in records] == [20, 80, 80, 80, None, None]
    assert records[0]["host"] == f"127.0.0.1:{clusters['a']}" and records[1]["host"] is None
    assert {r["peer"] for r in records} == {peer}
    assert 450 <= records[3]["duration"] < 2000             # the route's 0.5 s timeout
    assert records[0]["start"].endswith("Z")



def test_method_names_beyond_ascii_are_answered_and_logged_as_their_bytes(baton, tmp_path):
    """An unprivileged worker (the default under root) could not look up the UTF-16 codecs
    hessian2.py needs for any non-ASCII string (LookupError, the connection dropped with a
    traceback); and one name holding a lone surrogate (kept from the peer's CESU-8) stopped the
    worker's access log file, its batch and every later line (review R1). Each gets its local
    reply and its line, the surrogate as the three bytes the peer sent."""
    port, text = free_port(), tmp_path / "rpc.log"
    baton(with_logs(generic_bootstrap(free_port(), {"dubbo": port}, {"a": free_port(), "dead": free_port()},
                                      ROUTES), (text, "%METHOD%\n")), concurrency=1)
    client = RawClient("dubbo", port)
    for n, method in enumerate(("before", "café", "bad\ud800", "after")):
        client.send(dubbo_request(n + 1, "org.Nowhere", method, ["x"]))
        assert client.receive(1)[0].status == dubbo.SERVER_ERROR, method
    client.close()
    wait_until(lambda: text.exists() and text.read_bytes().count(b"\n") >= 4, 10, "four lines")
    assert text.read_bytes() == b"before\ncaf\xc3\xa9\nbad\xed\xa0\x80\nafter\n"


@needs_node
def test_real_sofa_peers_each_call_one_line(baton, processes, tmp_path):
    """sofa-rpc-node's Dubbo and Bolt clients and servers: 20 calls, 20 lines each."""
    for codec, name, ok in (("dubbo", "D", 20), ("bolt", "B", 0)):
        port, path = free_port(), tmp_path / f"{codec}.log"
        upstream = node_server(processes, codec, name)
        b = baton(with_logs(generic_bootstrap(free_port(), {codec: port}, {"up": upstream},
                                              {"name": "r", "routes": matcher_list(
                                                  [], action("up"))}),
                            (path, TEXT)), concurrency=1)
        results = node_client(codec, port, 20)
        assert len(results) == 20 and all("result" in r for r in results), results
        got = lines(path, 20, f"{codec}: 20 lines")
        assert set(got) == {f"{codec} {SERVICE} {SERVICE} hello - {ok} {ok} - up via_upstream"}
        b.stop()


def test_a_call_answered_across_a_reload_is_logged_once(baton, processes, tmp_path):
    port, path = free_port(), tmp_path / "rpc.log"
    b = baton(with_logs(generic_bootstrap(free_port(), {"dubbo": port},
                                          {"a": provider(processes, "dubbo", "P")},
                                          {"name": "r", "routes": matcher_list([], action("a"))}),
                        (path, "%METHOD% %GENERIC_RESPONSE_CODE% %REQUEST_PROPERTY(n)%\n")),
              concurrency=1)
    client = RawClient("dubbo", port)
    client.send(dubbo_request(1, SVC, "sleep", ["1.5"], {"n": "old"}))
    wait_until(lambda: b.stats()["generic_proxy.gp.downstream_rq_active"] == 1, 10, "in flight")
    old = b.master_pid()
    assert b.reload().returncode == 0
    client.send(dubbo_request(2, SVC, "echo", ["new"], {"n": "new"}))
    assert sorted(f.request_id for f in client.receive(2)) == [1, 2]
    b.wait_previous_gone(old)
    assert sorted(lines(path, 2, "two lines")) == ["echo 20 new", "sleep 20 old"]
    client.close()


DIFF = ("%PROTOCOL% %HOST% %PATH% %METHOD% %REQUEST_PROPERTY(env)% %GENERIC_RESPONSE_CODE% "
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% "
        "%UPSTREAM_HOST% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n")


def test_same_fields_as_envoy_generic_proxy(baton, processes, tmp_path):
    clusters = {"a": provider(processes, "dubbo", "A"), "dead": free_port()}
    got = {}
    for who in ("envoy", "baton"):
        port, path = free_port(), tmp_path / f"{who}.log"
        bootstrap = with_logs(generic_bootstrap(free_port(), {"dubbo": port}, clusters, ROUTES),
                              (path, DIFF))
        proxy = Envoy(tmp_path / "envoy", bootstrap).start() if who == "envoy" else \
            baton(bootstrap, concurrency=1)
        try:
            client = RawClient("dubbo", port)
            for i, (service, method, args, attachments) in enumerate((
                    (SVC, "get", ["x"], {"env": "test"}), ("org.Nowhere", "get", ["x"], {}),
                    ("org.Dead", "get", ["x"], {}), (SVC, "echo", ["x"], {}),
                    (SVC, "sleep", ["2"], {}))):
                client.send(dubbo_request(i, service, method, args, attachments,
                                          canonical=True))
                client.receive(1)
            client.close()
            got[who] = lines(path, 5, f"{who}: five lines")
        finally:
            proxy.stop()
    assert got["baton"] == got["envoy"], got
    assert got["envoy"][0].startswith(f"dubbo {SVC} {SVC} get test 20 20 - via_upstream a ")
