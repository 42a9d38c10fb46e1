"""A real TLS upstream for the upstream TLS tests, run as its own process (Python ssl on
asyncio: OpenSSL on the server side, nothing of Baton's).

    python tls_upstream.py MODE PORT CERT KEY [--ca CA] [--alpn h2,http/1.1] [--tls13]

    echo    echo every byte; forward the end of the stream (close_notify, FIN) after it
    http    HTTP/1.1 keep-alive; each response's body is JSON of what the handshake
            settled: {"sni", "alpn", "version", "client_cert", "path", "connection"}
    h2      the same over HTTP/2 (the `h2` package), for ALPN h2

--ca makes a client certificate required (mTLS). Prints "ready <port>" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import ssl
import sys

_connection_ids = itertools.count(1)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        if self.transport.can_write_eof():
            self.transport.write_eof()
        return True


def facts(transport, names) -> dict:
    obj = transport.get_extra_info("ssl_object")
    peer = obj.getpeercert(binary_form=True)
    return {"sni": names.get(id(obj)), "alpn": obj.selected_alpn_protocol(),
            "version": obj.version(), "client_cert": peer is not None}


class Http1(asyncio.Protocol):
    names: dict = {}

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.id = next(_connection_ids)

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            body = json.dumps({**facts(self.transport, self.names), "path": path,
                               "connection": self.id}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))


class Http2(asyncio.Protocol):
    names: dict = {}

    def connection_made(self, transport):
        import h2.config
        import h2.connection
        self.transport = transport
        self.id = next(_connection_ids)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data):
        import h2.events
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                path = headers.get(b":path", b"/").decode()
                body = json.dumps({**facts(self.transport, self.names), "path": path,
                                   "connection": self.id}).encode()
                self.conn.send_headers(event.stream_id, [(":status", "200"),
                                                         ("content-type", "application/json"),
                                                         ("content-length", str(len(body)))])
                self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())


async def main(argv) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("echo", "http", "h2"))
    parser.add_argument("port", type=int)
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("--ca")
    parser.add_argument("--alpn")
    parser.add_argument("--tls13", action="store_true", help="TLS 1.3 only")
    args = parser.parse_args(argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.ca:
        ctx.load_verify_locations(args.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn.split(","))
    if args.tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    names: dict = {}
    ctx.sni_callback = lambda obj, name, _ctx: names.__setitem__(id(obj), name)
    protocol = {"echo": Echo, "http": Http1, "h2": Http2}[args.mode]
    protocol.names = names
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", args.port, ssl=ctx)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass


# -- used by the tests: the process above, and the cluster config that reaches it ---------------

UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


class TlsUpstream:
    """This file's server as a process, with `pair`'s certificate (tests/tls_certs.py)."""

    def __init__(self, workdir, mode: str, pair, *, client_ca=None, alpn=None, tls13=False):
        from pathlib import Path

        from .conftest import start_ready_process
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        cert, key = pair.write(workdir, f"upstream-{mode}")
        argv = [sys.executable, __file__, mode, "0", cert, key]
        if client_ca is not None:
            ca_path = workdir / "client-ca.pem"
            ca_path.write_bytes(client_ca.cert_pem)
            argv += ["--ca", str(ca_path)]
        if alpn:
            argv += ["--alpn", ",".join(alpn)]
        if tls13:
            argv.append("--tls13")
        self.proc, self.port = start_ready_process(argv)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def upstream_tls_socket(ca=None, *, sni=None, sans=None, client=None, alpn=None,
                        max_version=None, max_session_keys=None) -> dict:
    """An UpstreamTlsContext transport socket: verify against `ca` (with `sans` matchers),
    present `client` (mTLS), offer `alpn`."""
    common: dict = {}
    if ca is not None:
        common["validation_context"] = {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}
        if sans:
            common["validation_context"]["match_typed_subject_alt_names"] = sans
    if client is not None:
        common["tls_certificates"] = [{"certificate_chain": {"inline_string": client.cert_pem.decode()},
                                       "private_key": {"inline_string": client.key_pem.decode()}}]
    if alpn:
        common["alpn_protocols"] = alpn
    if max_version:
        common["tls_params"] = {"tls_maximum_protocol_version": max_version}
    context = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if sni:
        context["sni"] = sni
    if max_session_keys is not None:
        context["max_session_keys"] = max_session_keys
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
