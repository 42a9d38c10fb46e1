"""worker/wasm/grpc_callout.py without sockets: the service argument, Envoy's close
messages, the token rules of send / close / cancel and the host's side (abi.py)."""

from __future__ import annotations

from baton.worker.stats import Stats
from baton.worker.wasm import abi, grpc_callout as g

SERVICE = b"\x0a\x0c\x0a\x04grpc\x12\x04auth"       # envoy_grpc{cluster_name, authority}


def test_the_service_is_a_grpc_service_or_a_cluster_name():
    exists = {"grpc", "nosuch-not"}.__contains__
    assert g.service_cluster(SERVICE, exists) == (g.OK, "grpc", "auth")
    assert g.service_cluster(b"\x0a\x06\x0a\x04gone", exists) == (g.OK, "gone", None)
    assert g.service_cluster(b"grpc", exists) == (g.OK, "grpc", None)     # not a message
    assert g.service_cluster(b"nosuch", exists) == (g.PARSE_FAILURE, None, None)
    assert g.service_cluster(b"", exists)[0] == g.BAD_ARGUMENT           # no envoy_grpc
    assert g.service_cluster(b"\x12\x00", exists)[0] == g.BAD_ARGUMENT   # google_grpc


def test_close_messages_carry_envoys_details():
    assert g.close_text("denied", "via_upstream") == "denied{via_upstream}"
    assert g.close_text("", "via_upstream") == "via_upstream"


class FakeCall:
    def __init__(self, unary):
        self.unary, self.finished, self.sent, self.cancelled, self.half = unary, False, [], 0, 0

    def send(self, message, end):
        self.sent.append((message, end))

    def cancel(self):
        self.cancelled += 1

    def half_close(self):
        self.half += 1


def callouts():
    class Loop:
        def call_soon(self, f, *args):
            f(*args)

    class Worker:
        loop = Loop()
    seen = []
    c = g.GrpcCallouts(Worker(), lambda token, kind, *args: seen.append((token, kind, args)), [])
    return c, seen


def test_tokens_send_close_and_cancel_as_envoy():
    c, seen = callouts()
    c.calls[1], c.calls[2] = FakeCall(True), FakeCall(False)
    assert c.send(1, b"x", False) == g.BAD_ARGUMENT         # a unary call's token
    assert c.send(4, b"x", False) == g.NOT_FOUND
    assert c.send(2, b"x", True) == g.OK and c.calls[2].sent == [(b"x", True)]
    assert c.close(2) == g.OK and 2 in c.calls              # half-closed, the server has not
    c._event(2, "close", (0, "via_upstream"))
    assert 2 not in c.calls and seen == [(2, "close", (0, "via_upstream"))]
    call = c.calls[1]
    assert c.cancel(1) == g.OK and call.cancelled == 1 and c.cancel(1) == g.NOT_FOUND
    c._event(1, "message", (b"late",))
    assert len(seen) == 1                                    # no callback after a cancel


def test_a_unary_answer_forgets_the_call_and_a_stream_waits_for_both_ends():
    c, seen = callouts()
    c.calls[3], c.calls[4] = FakeCall(True), FakeCall(False)
    c._event(3, "message", (b"answer",))
    assert 3 not in c.calls and seen[-1] == (3, "message", (b"answer",))
    c._event(4, "close", (0, "via_upstream"))
    assert 4 in c.calls                                      # our end is still open
    c.calls[4].finished = True
    assert c.close(4) == g.OK and 4 not in c.calls


def test_the_host_gives_odd_call_and_even_stream_tokens_and_the_check_vm_none():
    h = abi.AbiHost(vm_id="g", stats=Stats())
    plugin = abi.Plugin("p", "", "g", b"")
    h.current = h.new_context(plugin)
    opened = []

    class Callouts:
        def open(self, token, service, name, method, metadata, timeout, unary):
            opened.append((token, name, method, metadata, timeout, unary))
            return g.OK, FakeCall(unary)
    assert h.grpc_call(SERVICE, b"s", b"m", b"", b"hi", 0) == (abi.OK, 1)  # a check's VM
    h.grpc_io[h.current.id] = Callouts()
    metadata = abi.serialize_pairs([(b"X-Meta", b"v")])
    assert h.grpc_call(SERVICE, b"s", b"m", metadata, b"hi", 250) == (abi.OK, 1)
    assert h.grpc_call(SERVICE, b"s", b"m", b"", b"hi", 0) == (abi.OK, 3)
    assert h.grpc_stream(SERVICE, b"s", b"m", b"") == (abi.OK, 2)
    assert opened[0] == (1, "s", "m", [("x-meta", "v")], 0.25, True)
    assert opened[1][4] is None and opened[2][5] is False
    assert h.grpc_call(SERVICE, b"s", b"m", b"\x02\0\0\0", b"", 0) == (abi.OK, 5)
    assert opened[-1][3] == []              # a bad map: no metadata, as cpp-host's toPairs


def test_a_service_naming_no_cluster_fails_when_the_vm_call_returns():
    after = []

    class Worker:
        clusters = {}
    seen = []
    c = g.GrpcCallouts(Worker(), lambda token, kind, *args: seen.append((token, kind, args)),
                       after)
    status, call = c.open(5, b"\x0a\x06\x0a\x04nope", "s", "m", [], None, True)
    assert status == g.INTERNAL_FAILURE and call.finished and 5 not in c.calls and not seen
    after.pop()()
    assert seen == [(5, "close", (g.GRPC_UNAVAILABLE, "Cluster not available"))]


def unary_callout():
    class Cluster:
        buffer_limit = 1 << 20
    events = []
    call = g.Callout(object(), Cluster(), lambda kind, *args: events.append((kind, args)), True)
    return call, events


def test_a_unary_call_keeps_only_its_last_message():
    """Envoy's AsyncRequestImpl: each message replaces the one before, the last is the answer
    (a server that floods a unary call held every message: 3000 x 64 KiB, worker +189 MiB)."""
    import tracemalloc
    call, events = unary_callout()
    frame = b"\x00" + (65536).to_bytes(4, "big") + b"x" * 65536
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):                            # 12.5 MiB of messages
            call._body(frame)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1 << 20, held
    call._body(b"\x00\x00\x00\x00\x02m3")
    call._trailers({"grpc-status": "0"}, [], 200)
    assert events == [("message", (b"m3",))]


def test_grpc_status_is_read_as_envoys_get_grpc_status():
    call, events = unary_callout()
    call._trailers({"grpc-status": "\xb2"}, [], 200)        # latin-1 "²": str.isdigit() takes it
    assert events == [("close", (-1, "via_upstream"))]
    for value, code in (("7", 7), ("016", 16), ("17", -1), ("-1", -1)):
        call, events = unary_callout()
        call._trailers({"grpc-status": value}, [], 200)
        assert events == [("close", (code, "via_upstream"))], value
    call, events = unary_callout()
    call._trailers({}, [], 200)                              # none: UNKNOWN
    assert events == [("close", (g.GRPC_UNKNOWN, "via_upstream"))]


def test_grpc_timeout_is_written_as_envoys_to_grpc_timeout():
    from baton.worker.proxy.http.grpc_call import grpc_timeout
    assert grpc_timeout(0.2) == "200m" and grpc_timeout(99999.999) == "99999999m"
    assert grpc_timeout(200000) == "200000S"                 # 200,000,000 ms: 9 digits
    assert grpc_timeout(10 ** 12) == "99999999H"             # no larger unit: clipped


def test_headers_the_router_would_refuse():
    from baton.worker.wasm.header_check import invalid_header
    assert invalid_header([(":path", "/a"), ("x-a", "b c\t")]) is None
    assert invalid_header([("x-a", "ok"), ("x-b", "a\rb")]) == "invalid header value for: x-b"
    assert invalid_header([("", "v")]) == "invalid header name: "
    assert invalid_header([("x\x00", "v")]) == "invalid header name: x\x00"
