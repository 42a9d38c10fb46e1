"""A plugin's header maps once they have gone on (worker/proxy/http/wasm.py _gone: Envoy's
Context forgets them) and a headers callback's answer as Envoy 1.40 takes it
(headers_action, allow_on_headers_stop_iteration); end to end against Envoy:
tests/integration/test_differential_wasm_headers_gone.py."""

from __future__ import annotations

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.filter import PAUSE
from baton.worker.proxy.http.wasm import STOP_ALL, _gone, headers_action
from baton.worker.stats import Stats
from baton.worker.wasm import abi


def test_a_map_gone_on_answers_bad_argument_and_no_pairs():
    h = abi.AbiHost(vm_id="t", stats=Stats())
    plugin = abi.Plugin("p", "root", "t", b"")
    root = h.new_context(plugin)
    ctx = h.current = h.new_context(plugin, root, None,
                                    Request("GET", "/", "h", Headers([("a", "1")])))
    _gone(ctx, abi.REQUEST_HEADERS)
    assert h.get_header(abi.REQUEST_HEADERS, b"a") == (abi.BAD_ARGUMENT, b"")
    assert h.get_pairs(abi.REQUEST_HEADERS) == (abi.OK, b"")
    assert h.add_header(abi.REQUEST_HEADERS, b"b", b"2") == abi.BAD_ARGUMENT
    assert h.replace_header(abi.REQUEST_HEADERS, b"a", b"2") == abi.BAD_ARGUMENT
    assert h.remove_header(abi.REQUEST_HEADERS, b"a") == abi.BAD_ARGUMENT
    assert h.set_pairs(abi.REQUEST_HEADERS, abi.serialize_pairs([])) == abi.BAD_ARGUMENT
    assert ctx.request.headers.items == [("a", "1")]
    # a map not there yet is still an empty one (the response headers during the request)
    assert h.get_pairs(abi.RESPONSE_HEADERS) == (abi.OK, abi.serialize_pairs([]))


def test_headers_callback_answers_as_envoy_takes_them():
    assert headers_action(0, False) is None and headers_action(2, True) is None
    assert headers_action(1, False) is STOP_ALL
    assert headers_action(1, True) is PAUSE
    for result in (3, 4, 5, 99):
        assert headers_action(result, True) is STOP_ALL
