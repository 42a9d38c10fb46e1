"""CPU a batch of moved connections costs the sender's channel, in process.

    .venv/bin/python bench/handoff_batch_cost.py [BATCHES]
    PYTHONPATH=/tmp/tree .venv/bin/python bench/handoff_batch_cost.py   # another tree
                                           # (git archive REV into /tmp/tree/baton)

One batch is what worker/migration.py's _move asks of the channel: a `connections` request of
120 records with 120 descriptors sent as they are (dup=False), then its answer awaited. The
channel is stalled (its peer reads nothing), so the frame is queued and dropped, not sent:
what is timed is the Python around the send, where a change to the batch's bookkeeping shows;
the sendmsg itself is the same either way. Prints time.process_time per batch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

from baton.supervisor.handoff.channel import Channel


async def measure(batches: int) -> float:
    ours, theirs = socket.socketpair()
    channel = Channel(ours, lambda *args: None, name="bench")
    channel._writing = True             # stalled: frames queue, nothing is sent
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(120)]
    msg = {"type": "connections", "conns": [{"id": i} for i in range(120)]}
    request = getattr(channel, "request_frame", None)
    futures = []
    start = time.process_time()
    for _ in range(batches):
        if request is not None:
            future, _frame = request(msg, fds, timeout=60, dup=False)
        else:
            future = channel.request(msg, fds, timeout=60, dup=False)
        channel._out.clear()
        future.cancel()
        futures.append(future)
    await asyncio.gather(*futures, return_exceptions=True)
    spent = time.process_time() - start
    channel._writing = False
    channel._pending.clear()            # cancelled before they ran: their replies never came
    channel.close()
    theirs.close()
    for fd in fds:
        os.close(fd)
    return spent / batches


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    per_batch = asyncio.run(measure(batches))
    print(f"{per_batch * 1e6:.2f} us of CPU a batch ({batches} batches of 120 descriptors)")


if __name__ == "__main__":
    main()
