"""Runs inside the test container with the system python (stdlib only).

    python3 echo.py serve PORT    an echo server on 127.0.0.1:PORT (the proxy's upstream)
    python3 echo.py probe PORT    send a line through 127.0.0.1:PORT, print what comes back
"""

import socket
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        while chunk := self.request.recv(65536):
            self.request.sendall(chunk)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def probe(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello through baton\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    sys.stdout.write(reply.decode())


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "serve":
        Server(("127.0.0.1", port), Echo).serve_forever()
    else:
        probe(port)
