"""An upstream that accepts a tunnel, then echoes every byte upper-cased.

    python tunnel_upstream.py websocket|connect     prints "ready PORT"

websocket: a request with `Upgrade: websocket` gets 101; connect: a CONNECT gets 200 and then
its own request line and "\\n", so the client can tell what the upstream saw. Anything else
gets 400 (websocket) or 405 (connect) and the connection closes. A thread per connection.
"""

import socket
import sys
import threading


def handle(conn: socket.socket, mode: str) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            return
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0]
    if mode == "websocket":
        if b"upgrade: websocket" not in head.lower():
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            conn.close()
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n")
    else:
        if not line.startswith(b"CONNECT "):
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            conn.close()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + line + b"\n")
    if rest:
        conn.sendall(rest.upper())
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data.upper())
    conn.close()


def main() -> None:
    mode = sys.argv[1]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    print("ready", server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
