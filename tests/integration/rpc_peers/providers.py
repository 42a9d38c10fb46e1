"""Scriptable Dubbo and Bolt providers for the RPC tests (real processes, real sockets).

    python providers.py dubbo|bolt PORT NAME [heartbeat]

Answers every request with "NAME:<method>:<first argument>" (Dubbo; Bolt: "NAME:<method>").
Method "sleep" waits its first argument's seconds (Dubbo); a Bolt method named "sleep..." waits
its "delay" header's seconds, or 3. Method "seen"
answers with the number of requests this provider received so far, oneway ones included.
Heartbeats are answered. With "fail", a Dubbo provider answers every call with SERVER_ERROR
(the 5xx of Dubbo, for outlier detection). With "heartbeat", a Dubbo provider also sends a
heartbeat on each new connection, as Dubbo providers do on idle ones (Envoy 1.40's
dubbo_proxy then never answers that connection's call: the differential test leaves it out);
method "acks" answers how many were answered. Prints "ready PORT" once listening (port 0 picks one).
"""

from __future__ import annotations

import asyncio
import random
import sys


from baton.worker.codecs import bolt, dubbo
from baton.worker.codecs.hessian2 import Reader
from baton.tests.integration.rpc_peers.frames import dubbo_response
from baton.tests.integration.rpc_peers.hessian_writer import Writer


class Provider(asyncio.Protocol):
    seen = 0
    acks = 0

    def __init__(self, kind: str, name: str, heartbeat: bool, fail: bool = False):
        self.kind, self.name, self.heartbeat, self.fail = kind, name, heartbeat, fail
        self.decoder = dubbo.Decoder() if kind == "dubbo" else bolt.Decoder()

    def connection_made(self, transport):
        self.transport = transport
        if self.kind == "dubbo" and self.heartbeat:
            transport.write(dubbo.heartbeat_request(1 << 40))

    def data_received(self, data):
        for frame in self.decoder.feed(data):
            if self.kind == "dubbo":
                self.dubbo(frame)
            else:
                self.bolt(frame)

    def dubbo(self, frame):
        if not frame.is_request:
            Provider.acks += frame.is_event and frame.request_id == 1 << 40
            return
        if frame.is_event:
            self.transport.write(dubbo.heartbeat_response(frame))
            return
        Provider.seen += 1
        call = dubbo.invocation(frame)
        arg = call.arguments[0] if call.arguments else None
        answer = {"seen": Provider.seen, "acks": Provider.acks}.get(
            call.method, f"{self.name}:{call.method}:{arg}")
        delay = float(arg) if call.method == "sleep" else 0
        if frame.two_way and self.fail:
            self.write(dubbo.error_response(frame, dubbo.SERVER_ERROR, f"{self.name} fails"))
        elif frame.two_way:
            self.later(delay, dubbo_response(frame.request_id, answer))

    def bolt(self, frame):
        if frame.is_heartbeat:
            self.transport.write(bolt.heartbeat_response(frame))
            return
        Provider.seen += 1
        header = frame.header()
        method = header.get("sofa_head_method_name") or Reader(frame.content).read()
        answer = Provider.seen if method == "seen" else f"{self.name}:{method}"
        content = Writer(random.Random(0)).write(answer).bytes()
        delay = float(header.get("delay") or 3) if method.startswith("sleep") else 0
        if not frame.oneway:
            self.later(delay,
                       bolt.response(frame.request_id, bolt.SUCCESS,
                                     "com.alipay.sofa.rpc.core.response.SofaResponse", {},
                                     content))

    def later(self, delay, data):
        if delay:
            asyncio.get_running_loop().call_later(delay, self.write, data)
        else:
            self.write(data)

    def write(self, data):
        if not self.transport.is_closing():
            self.transport.write(data)


async def main(kind: str, port: str, name: str, *options: str) -> None:
    loop = asyncio.get_running_loop()
    heartbeat = "heartbeat" in options
    fail = "fail" in options
    server = await loop.create_server(lambda: Provider(kind, name, heartbeat, fail),
                                      "127.0.0.1", int(port))
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
