"""A plaintext HTTP/2 (h2c, prior knowledge) upstream that answers each request with what it
received: its headers, body size and trailers, as JSON. Prints "ready <port>" once listening.

    python h2_trailer_upstream.py PORT      (0: any free port)
"""

from __future__ import annotations

import asyncio
import json
import sys


class TrailerEcho(asyncio.Protocol):
    def connection_made(self, transport):
        import h2.config
        import h2.connection
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        self.conn.initiate_connection()
        self.streams: dict[int, dict] = {}
        transport.write(self.conn.data_to_send())

    def data_received(self, data):
        import h2.events
        import h2.exceptions
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = {"headers": [list(h) for h in event.headers],
                                                 "body_length": 0, "trailers": []}
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id]["body_length"] += len(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.streams[event.stream_id]["trailers"] = [list(h) for h in event.headers]
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        body = json.dumps(self.streams.pop(stream_id)).encode()
        self.conn.send_headers(stream_id, [(":status", "200"),
                                           ("content-type", "application/json"),
                                           ("content-length", str(len(body)))])
        self.conn.send_data(stream_id, body, end_stream=True)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(TrailerEcho, "127.0.0.1", port)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
