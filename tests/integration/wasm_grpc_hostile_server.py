"""A gRPC server that answers as a well-behaved one would not (raw h2, for
test_differential_wasm_grpc_hostile.py). What it answers depends on the unary request's message
(grpc.wat sends the downstream path): 'b2' -> grpc-status b'\\xb2' (not a number, though latin-1
"²" passes str.isdigit); 'many' -> three messages then grpc-status 0; 'tmo' -> the grpc-timeout
it got, as the message; 'meta' -> the metadata whose name has "meta" in it, as it came
("meta=x-meta=a\r\nb": headers are not checked); otherwise "plain". Prints "ready PORT" once
listening."""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    bodies, heads = {}, {}
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    heads[event.stream_id] = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    answer(conn, event.stream_id, bodies.pop(event.stream_id, b""),
                           heads.pop(event.stream_id, {}))
            sock.sendall(conn.data_to_send())
    except Exception as exc:  # noqa: BLE001 -- a client gone; the test sees it from its side
        print("server:", type(exc).__name__, exc, file=sys.stderr, flush=True)
    finally:
        sock.close()


def answer(conn, sid, body, head):
    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    if b"tmo" in body:
        messages, status = [head.get(b"grpc-timeout", b"none")], b"0"
    elif b"b2" in body:
        messages, status = [b"hi"], b"\xb2"
    elif b"meta" in body:
        messages, status = [b"meta=" + b";".join(
            name + b"=" + value for name, value in head.items() if b"meta" in name)], b"0"
    elif b"many" in body:
        messages, status = [b"m1", b"m2", b"m3"], b"0"
    else:
        messages, status = [b"plain"], b"0"
    for message in messages:            # small: within the stream's first window
        conn.send_data(sid, frame(message))
    conn.send_headers(sid, [(b"grpc-status", status)], end_stream=True)


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("ready", listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
