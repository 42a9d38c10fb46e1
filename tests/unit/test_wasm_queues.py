"""worker/wasm/queues.py and the host's queue calls (abi.py), no wasm: Envoy's shared queue
semantics (proxy-wasm-cpp-host's shared_queue.cc)."""

from __future__ import annotations

from baton.worker.stats import Stats
from baton.worker.wasm import abi
from baton.worker.wasm.queues import EMPTY, NOT_FOUND, OK, SharedQueues


def test_a_queue_is_one_token_per_vm_id_and_name_and_keeps_its_data():
    told = []
    queues = SharedQueues()
    token = queues.register("vm", b"q", 1, lambda ctx, tok: told.append(("first", ctx, tok)))
    assert token != 0
    assert queues.register("other", b"q", 1, None) != token
    assert queues.resolve("vm", b"q") == token and queues.resolve("vm", b"nope") == 0
    assert queues.enqueue(token, b"a") == OK and told == [("first", 1, token)]
    # Registering again: the same token, the data kept, the new registrant is told.
    assert queues.register("vm", b"q", 5, lambda ctx, tok: told.append(("second", ctx, tok))) \
        == token
    assert queues.enqueue(token, bytearray(b"b")) == OK and told[-1] == ("second", 5, token)
    assert queues.dequeue(token) == (OK, b"a")
    assert queues.dequeue(token) == (OK, b"b")
    assert queues.dequeue(token) == (EMPTY, b"")


def test_an_unknown_token_is_not_found():
    queues = SharedQueues()
    assert queues.enqueue(7, b"x") == NOT_FOUND
    assert queues.dequeue(7) == (NOT_FOUND, b"")


def test_the_host_registers_for_the_root_and_tells_its_handler():
    h = abi.AbiHost(vm_id="qvm", stats=Stats(), queues=SharedQueues())
    plugin = abi.Plugin("p", "", "qvm", b"")
    root = h.new_context(plugin)
    stream_ctx = h.new_context(plugin, root, object(), None)
    ready = []
    h.queue_handlers[root.id] = ready.append
    h.current = stream_ctx                  # a stream context registers for its root
    status, token = h.register_shared_queue(b"q")
    assert status == abi.OK
    assert h.resolve_shared_queue(b"qvm", b"q") == (abi.OK, token)
    assert h.resolve_shared_queue(b"", b"q") == (abi.NOT_FOUND, 0)
    assert h.enqueue_shared_queue(token, b"x") == abi.OK and ready == [token]
    assert h.dequeue_shared_queue(token) == (abi.OK, b"x")
    assert h.dequeue_shared_queue(token) == (abi.EMPTY, b"")
    h.current = None
    assert h.register_shared_queue(b"q") == (abi.BAD_ARGUMENT, 0)


def test_a_queue_holds_at_most_max_queue_bytes(monkeypatch):
    """Envoy takes data without a bound; a queue nobody drains grew the worker without one."""
    from baton.worker.wasm import queues as q
    monkeypatch.setattr(q, "MAX_QUEUE_BYTES", 10)
    told = []
    queues = SharedQueues()
    token = queues.register("vm", b"q", 1, lambda ctx, tok: told.append(tok))
    assert queues.enqueue(token, b"123456") == OK and queues.enqueue(token, b"1234") == OK
    assert queues.enqueue(token, b"x") == q.INTERNAL_FAILURE and len(told) == 2
    assert queues.dequeue(token) == (OK, b"123456")
    assert queues.enqueue(token, b"abcdef") == OK                 # room again
    assert queues.enqueue(token, b"y") == q.INTERNAL_FAILURE
    assert abi.INTERNAL_FAILURE == q.INTERNAL_FAILURE
