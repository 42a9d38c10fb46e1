"""An asyncio transport that speaks TLS with Baton's record layer, for protocols written
against plain transports (the HTTP connection manager).

    acceptor = TlsAcceptor(loop, sock, server, on_done, on_refused, initial)
    acceptor.start()            # OpenSSL's handshake (accept.py) on this loop, bounded in time
    ...on_done(transport)       # a TlsTransport; transport.start(protocol) runs the protocol

Why not asyncio's own SSL transport: its session lives inside OpenSSL and can never leave
the process, while this one's whole state after the handshake is the socket and the record
layer (layer.py, state.py), so it can move at a reload like a plain socket. The protocol sees
what asyncio would show it, in the same order and with uvloop's backpressure rules (what
HttpConnection relies on):

- connection_made once, after the handshake (as asyncio's SSL transport: a refused
  handshake never reaches the protocol); then data_received with plaintext only.
- eof_received on the peer's close_notify or a bare FIN; a falsy answer closes the transport.
- pause_writing when the bytes buffered pass the high-water mark (set_write_buffer_limits,
  64 KiB by default, low = high / 4), resume_writing once they are at or below low.
- connection_lost(exc) once, from a later turn of the loop, after close() has flushed (or at
  once for abort() and errors; exc is None for a clean close).

TLS shows in three places: write_eof() sends close_notify before the FIN (the HTTP
connection manager's delayed close relies on can_write_eof()); close() sends close_notify
unless one went already; a bad record from the peer gets the layer's alert, the plaintext
before it is still delivered, then the connection is lost with the TLSAlert.
get_extra_info("ssl_object") is a `Session`: the handshake's facts (ALPN, peer certificate,
version, cipher) under SSLObject's own method names.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .accept import HandshakeRefused, ServerAccept
from .records import TLSAlert
from .state import export_state, import_state

log = logging.getLogger("baton.tls")

RECV_SIZE = 65536
DEFAULT_HIGH_WATER = 64 * 1024          # uvloop's default write buffer limit


class Session:
    """What a finished handshake settled, read with SSLObject's names; `cache` keeps what is
    derived from it (the XFCC pieces) for the connection's life."""

    __slots__ = ("alpn", "peer_der", "_version", "_cipher", "server_name", "local_uris",
                 "trusted_cas", "cache", "server")

    def __init__(self, layer, version: str | None = None, server=None) -> None:
        info = layer.info
        self.server = server                # the TlsServer that counts its errors, if known
        self.local_uris = server.local_uris if server is not None else []     # XFCC By=
        self.trusted_cas = server.trusted_cas if server is not None else []   # XFCC Chain=
        self.alpn = info.get("alpn")
        self.peer_der = info.get("peer_certificate")
        self.server_name = info.get("server_name")
        self._version = version or layer.suite.version
        self._cipher = layer.suite.name
        self.cache: dict = {}

    def selected_alpn_protocol(self) -> str | None:
        return self.alpn

    def getpeercert(self, binary_form: bool = False):
        if not binary_form:
            raise ValueError("only the DER form (binary_form=True) is kept")
        return self.peer_der

    def version(self) -> str:
        return self._version

    def cipher(self) -> tuple:
        return (self._cipher, self._version, None)


class TlsAcceptor:
    """Runs the server side of one handshake over a non-blocking socket."""

    __slots__ = ("loop", "sock", "fd", "server", "accept", "on_done", "on_refused", "initial",
                 "timer", "out", "reading", "writing", "done")

    def __init__(self, loop, sock: socket.socket, server, on_done, on_refused,
                 initial: tuple[bytes, bool] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.server = server
        self.accept = ServerAccept(server)
        self.on_done = on_done              # on_done(TlsTransport)
        self.on_refused = on_refused        # on_refused(reason): the socket is closed already
        self.initial = initial              # (bytes, eof) the listener's inspectors read first
        self.timer = None
        self.out = bytearray()
        self.reading = self.writing = False
        self.done = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.timer = self.loop.call_later(self.server.handshake_timeout, self._on_timeout)
        self.loop.add_reader(self.fd, self._on_readable)
        self.reading = True
        if self.initial is not None:
            (data, eof), self.initial = self.initial, None
            self._input(data, eof)

    def cancel(self, reason: str = "cancelled") -> None:
        """Give up (the worker drains or stops): close without counting a failure."""
        if not self.done:
            self._finish()
            _close(self.sock)
            log.debug("TLS handshake abandoned: %s", reason)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refused("connection_error", f"read: {exc.strerror}")
            return
        self._input(data, not data)

    def _input(self, data: bytes, eof: bool) -> None:
        try:
            out = self.accept.receive(data, eof)
        except HandshakeRefused as exc:
            self.out += exc.data            # OpenSSL's alert, or ours: best effort
            self._refused(exc.counter, str(exc))
            return
        self.out += out
        if not self._flush():
            return
        layer = self.accept.layer
        if layer is not None:
            version = self.accept.handshake.ssl_object.version()
            transport = TlsTransport(self.loop, self.sock, layer, self.out,
                                     Session(layer, version, self.server), self.server.context)
            self._finish(transport)
            self.on_done(transport)

    def _flush(self) -> bool:
        out = self.out
        if out:
            try:
                del out[:self.sock.send(out)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._refused("connection_error", f"write: {exc.strerror}")
                return False
        if out and not self.writing:
            self.loop.add_writer(self.fd, self._flush)
            self.writing = True
        elif not out and self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        return True

    def _on_timeout(self) -> None:
        self.timer = None
        self._refused("connection_error", "handshake timeout")

    def _refused(self, counter: str, reason: str) -> None:
        if self.done:
            return
        self.server.count(counter)
        self._finish()
        if self.out:
            try:
                self.sock.send(self.out)
            except OSError:
                pass
        _close(self.sock)
        self.on_refused(reason)

    def _finish(self, successor: "TlsTransport | None" = None) -> None:
        """Stop watching the socket; a `successor` (on_done's transport, started in the same
        turn of the loop) takes the reader over: swapping the callback on the fd's poll
        handle costs about half of removing it and adding it back (uvloop)."""
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.reading:
            if successor is not None:
                self.loop.add_reader(self.fd, successor._on_readable)
                successor.reading = True
            else:
                self.loop.remove_reader(self.fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False


class TlsTransport(asyncio.Transport):
    __slots__ = ("loop", "sock", "fd", "layer", "session", "protocol", "out", "high", "low",
                 "reading", "paused", "writing", "write_paused", "eof_sent", "fin_sent", "closing",
                 "lost", "on_lost", "_extra_cache")

    def __init__(self, loop, sock: socket.socket, layer, out: bytearray, session: Session,
                 context=None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.layer = layer
        self.session = session
        self.protocol = None
        self.out = out                      # records not yet taken by the socket
        self.high = DEFAULT_HIGH_WATER
        self.low = DEFAULT_HIGH_WATER // 4
        self.reading = False                # a reader is registered
        self.paused = False                 # the protocol paused reading
        self.writing = False                # a writer is registered
        self.write_paused = False           # pause_writing() was called, resume_writing() owed
        self.eof_sent = False               # write_eof(): close_notify queued, FIN after it
        self.fin_sent = False
        self.closing = False
        self.lost = False                   # connection_lost() is scheduled or done
        self.on_lost = None                 # called after connection_lost (the owner's stats)
        self._extra_cache = {"socket": sock, "sslcontext": context, "ssl_object": session}

    def start(self, protocol) -> None:
        """connection_made, then whatever plaintext arrived behind the handshake."""
        self.protocol = protocol
        protocol.connection_made(self)
        if self.closing:
            return
        self._receive(b"")
        if not self.closing and not self.layer.peer_closed:
            self._want_read(True)
        self._flush()

    # -- reading ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if not data:
            self._eof()                     # a FIN without close_notify ends the stream too
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        layer = self.layer
        try:
            plaintext = layer.receive_data(data)
        except TLSAlert as exc:
            self.out += layer.data_to_send()        # the fatal alert, if it is ours to send
            if self.session.server is not None:
                self.session.server.count_session_error()
            if exc.data:
                self.protocol.data_received(exc.data)
            self._flush()
            self._fatal(exc)
            return
        owed = layer.data_to_send()                 # a KeyUpdate or a refusal we owe
        if owed:
            self.out += owed
            self._flush()
        if plaintext and not self.closing:
            self.protocol.data_received(plaintext)
        if layer.peer_closed and not self.lost:
            self._eof()

    def _eof(self) -> None:
        self._want_read(False)
        if self.closing:
            return
        keep_open = self.protocol.eof_received()
        if not keep_open:
            self.close()

    def _want_read(self, on: bool) -> None:
        on = on and not self.paused and not self.closing
        if on and not self.reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        elif not on and self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def pause_reading(self) -> None:
        self.paused = True
        self._want_read(False)

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if not self.closing and not self.layer.peer_closed:
                self._want_read(True)

    def is_reading(self) -> bool:
        return self.reading

    # -- writing ----------------------------------------------------------------------------

    def write(self, data) -> None:
        if self.eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self.lost or self.closing:
            return
        try:
            self.out += self.layer.send_data(data)
        except (TLSAlert, ValueError) as exc:
            self._fatal(exc)
            return
        self._flush()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self.eof_sent or self.lost:
            return
        self.eof_sent = True
        if self.layer.error is None:
            self.out += self.layer.close()
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self.out)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high, self.low = high, low
        self._maybe_pause()

    def _flush(self) -> None:
        out = self.out
        if self.lost:
            return
        if out:
            try:
                del out[:self.sock.send(out)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._fatal(exc)
                return
        if out:
            if not self.writing:
                self.loop.add_writer(self.fd, self._flush)
                self.writing = True
            self._maybe_pause()
        elif self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if self.write_paused and len(out) <= self.low:
            self.write_paused = False
            self.protocol.resume_writing()
            self._flush()                       # it may have written or closed: look again
            return
        if not out:
            if self.eof_sent and not self.fin_sent:
                self.fin_sent = True
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if self.closing:
                self._lose(None)

    def _maybe_pause(self) -> None:
        if not self.write_paused and len(self.out) > self.high and self.protocol is not None:
            self.write_paused = True
            self.protocol.pause_writing()

    # -- closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """close_notify (unless write_eof sent it), then the socket once the buffer is out."""
        if self.closing:
            return
        self.closing = True
        self._want_read(False)
        if not self.eof_sent and self.layer.error is None and not self.layer.closed:
            self.out += self.layer.close()
        self._flush()

    def abort(self) -> None:
        self._fatal(None)

    def _fatal(self, exc) -> None:
        if exc is not None:
            log.debug("TLS connection: %s", exc)
        self.closing = True
        self.out.clear()
        self._want_read(False)
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        self._lose(exc)

    def _lose(self, exc) -> None:
        if self.lost:
            return
        self.lost = True
        self.loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc) -> None:
        try:
            if self.protocol is not None:
                self.protocol.connection_lost(exc)
        finally:
            _close(self.sock)
            if self.on_lost is not None:
                self.on_lost()

    # -- moving (worker/proxy/https.py) -------------------------------------------------------

    def export_state(self) -> dict:
        """The record layer's state for another process; only between exchanges, when every
        byte this side wrote is out (the caller checked) and reading is paused."""
        if self.out:
            raise RuntimeError("records are still buffered for the client")
        return export_state(self.layer)

    @classmethod
    def adopted(cls, loop, sock: socket.socket, state: dict, server) -> "TlsTransport":
        """A transport continuing the session `state` (state.import_state) on `sock`."""
        layer = import_state(state)
        sock.setblocking(False)
        return cls(loop, sock, layer, bytearray(), Session(layer, None, server), server.context)

    # -- facts --------------------------------------------------------------------------------

    def get_extra_info(self, name, default=None):
        value = self._extra_cache.get(name)
        if value is None and name in ("peername", "sockname"):
            try:
                value = self.sock.getpeername() if name == "peername" else self.sock.getsockname()
            except OSError:
                return default
            self._extra_cache[name] = value
        return default if value is None else value

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
