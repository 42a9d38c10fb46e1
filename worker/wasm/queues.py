"""proxy-wasm shared queues, sans-IO: a FIFO of byte strings per (vm_id, name).

    register(vm_id, name, context_id, notify) -> token      proxy_register_shared_queue
    resolve(vm_id, name) -> token, 0 when there is none      proxy_resolve_shared_queue
    enqueue(token, data) -> status                           proxy_enqueue_shared_queue
    dequeue(token) -> (status, data)                         proxy_dequeue_shared_queue

Envoy's semantics (proxy-wasm-cpp-host src/shared_queue.cc): one token per (vm_id, name),
never 0; registering again keeps the token and the queued data and makes the new registrant
the owner (its root context is the one told); an enqueue tells the owner
(`notify(context_id, token)`: proxy_on_queue_ready, after the current call, on the owner's
loop); any context may dequeue by token; an unknown token is NOT_FOUND, an empty queue EMPTY.

Where Baton differs: Envoy's queues are per process, shared by every worker thread, and the
owner is the last thread whose VM registered; Baton's are per worker process (each worker
has its own VMs, as its shared data is per worker too): an enqueue reaches the queue of the
worker it runs in, and its owner is that worker's root. Envoy drops a vm_id's queues when
its last VM goes; here they live as long as the worker (a reloaded plugin registers again
and finds its data). Envoy's queues take data without a bound; here a queue holds at most
MAX_QUEUE_BYTES, and an enqueue past it is INTERNAL_FAILURE, nothing queued or told (a guest
of 1.25 MiB pushing into a queue nobody drains grew the worker to 1187 MiB).
"""

from __future__ import annotations

from collections import deque

OK, NOT_FOUND, EMPTY, INTERNAL_FAILURE = 0, 1, 7, 10      # proxy_status_t (abi.py)

MAX_QUEUE_BYTES = 64 << 20      # the data one queue may hold (Baton's bound; Envoy: none)


class Queue:
    __slots__ = ("items", "size", "context_id", "notify")

    def __init__(self):
        self.items: deque = deque()
        self.size = 0               # the bytes in items
        self.context_id = 0
        self.notify = None          # f(context_id, token), or None (a check's VM: no I/O)


class SharedQueues:
    """The shared queues of one worker (or of one check's VM)."""

    def __init__(self):
        self.tokens: dict[tuple[str, bytes], int] = {}
        self.queues: dict[int, Queue] = {}
        self.next_token = 1

    def register(self, vm_id: str, name: bytes, context_id: int, notify) -> int:
        token = self.tokens.get((vm_id, name))
        if token is None:
            token = self.tokens[(vm_id, name)] = self.next_token
            self.next_token += 1
            self.queues[token] = Queue()
        queue = self.queues[token]
        queue.context_id = context_id
        queue.notify = notify
        return token

    def resolve(self, vm_id: str, name: bytes) -> int:
        return self.tokens.get((vm_id, name), 0)

    def enqueue(self, token: int, data: bytes) -> int:
        queue = self.queues.get(token)
        if queue is None:
            return NOT_FOUND
        if queue.size + len(data) > MAX_QUEUE_BYTES:
            return INTERNAL_FAILURE
        queue.items.append(bytes(data))
        queue.size += len(data)
        if queue.notify is not None:
            queue.notify(queue.context_id, token)
        return OK

    def dequeue(self, token: int) -> tuple[int, bytes]:
        queue = self.queues.get(token)
        if queue is None:
            return NOT_FOUND, b""
        if not queue.items:
            return EMPTY, b""
        data = queue.items.popleft()
        queue.size -= len(data)
        return OK, data


WORKER = SharedQueues()         # this worker process's queues
