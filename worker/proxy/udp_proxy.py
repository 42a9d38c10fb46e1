"""Envoy's UDP proxy (envoy.filters.udp_listener.udp_proxy): sessions from a UDP listener to
a cluster, and how they move to another process.

A session is one downstream address (ip, port) and one upstream socket: the first datagram
from a new address picks a route and a host (by the cluster's policy, or the hash policy for
RING_HASH / MAGLEV) and opens a UDP socket connected to that host; every later datagram of
that address goes out on that socket, and what the host sends back is written to the client
from the listening socket. A session ends after `idle_timeout` without a datagram either way.
With use_per_packet_load_balancing the socket is not connected and each datagram picks a host.

Who reads a UDP listener. The master owns one socket per UDP listener (supervisor/listeners.py
says why not one per worker). Exactly one worker of a generation reads it, the *owner*:
worker `crc32(name) % concurrency`, so that several UDP listeners spread over the workers
while each address's datagrams always reach the worker that holds its session. Reading is
also guarded by a *lease*: a POSIX record lock (F_SETLK) on the socket itself. Record locks
belong to a process, not to the shared descriptor, so of all the processes that hold the
socket (the masters, the workers of two generations, a worker and its replacement during
`baton recycle`) only one can hold the lock, and the kernel drops it when that process dies.
An owner reads only while it holds the lease and polls for it otherwise. Hence:

- a first start, or a respawn after a crash: the lease is free at once (the dead worker's
  lock went with it); datagrams that came meanwhile wait in the socket buffer;
- a reload or a recycle: the old owner keeps reading until it is told to move out; then it
  stops, sends its sessions to the new owner (record "udp": the downstream address, the
  cluster and host, and the connected upstream socket itself, so replies to datagrams sent
  before the move still arrive, now at the new worker), and releases the lease once the new
  owner has adopted them. The new owner starts reading only then, so no datagram of an
  established session can reach a worker that does not know the session yet.

Stats are Envoy's: udp.<stat_prefix>.downstream_sess_* and idle_timeout, the listener's
listener.<name>.udp.downstream_rx_datagram_dropped, and cluster.<name>.udp.sess_* with the
cluster's upstream_cx_rx/tx_bytes_total.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import time
import zlib

from ...supervisor.handoff import ownership
from ..connection import Connection, Export, Lifecycle, Move, register
from .lb import Host, xxhash64

log = logging.getLogger("baton.udp")

READ_BATCH = 64              # datagrams per wakeup, so a busy socket cannot starve the loop
LEASE_RETRY = 0.005          # how often an owner without the lease tries again (s)
MAX_DATAGRAM = 65535

SESSION_COUNTERS = ("downstream_sess_total", "downstream_sess_no_route",
                    "downstream_sess_rx_bytes", "downstream_sess_rx_datagrams",
                    "downstream_sess_rx_errors", "downstream_sess_tx_bytes",
                    "downstream_sess_tx_datagrams", "downstream_sess_tx_errors", "idle_timeout",
                    "session_filter_config_missing")
CLUSTER_COUNTERS = ("sess_rx_datagrams", "sess_rx_datagrams_dropped", "sess_rx_errors",
                    "sess_tx_datagrams", "sess_tx_errors", "sess_tunnel_buffer_overflow",
                    "sess_tunnel_failure", "sess_tunnel_success")


def owner_index(listener_name: str, workers: int) -> int:
    """The worker (0-based) that reads listener `listener_name` in a generation of `workers`.
    Both generations of a reload compute it: the old one to send sessions to the new owner."""
    return zlib.crc32(listener_name.encode()) % max(1, workers)


class UdpListener:
    """A worker's side of one UDP listener. It has the attributes the worker and the overload
    manager use on every listener (worker/listener.py), with no filter chains."""

    __slots__ = ("worker", "loop", "name", "sock", "fd", "family", "spec", "address", "port",
                 "stat_name", "config", "routes", "default_cluster", "hash_key", "sessions",
                 "owned", "leased", "accepting", "held", "reading", "retry", "counters",
                 "stat", "stat_cx_total", "stat_cx_active", "stat_no_chain",
                 "stat_global_cx_overflow", "stat_overload_reject", "stat_rx_dropped",
                 "access_logs", "proxy_access_logs", "cluster_stats", "created")

    chains = ()
    bound = True
    default_chain = None
    inspectors = ()
    selects_chains = False
    transparent = False
    original_dst = False
    use_original_dst = False
    ignore_global_limit = True
    pipe_capacity = 0

    def __init__(self, worker, spec: dict, fd: int):
        self.worker = worker
        self.loop = worker.loop
        self.fd = fd
        self.family = socket.AF_INET6 if ":" in spec["address"] else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM, 0, fd)
        self.sock.setblocking(False)
        self.sessions: dict[tuple, UdpSession] = {}
        self.leased = self.accepting = self.reading = False
        self.held = worker.overload.holding
        self.retry = None
        self.created = (time.time(), self.loop.time())
        self.cluster_stats: dict[str, dict] = {}
        self.counters = worker.stats.counters
        self.owned = owner_index(spec["name"], worker.concurrency) == worker.id
        self.update(spec)

    def update(self, spec: dict) -> None:
        from .http.config import _access_logs      # one file table per worker, shared with HTTP
        self.spec = spec
        self.name = spec["name"]
        self.address, self.port = spec["address"], spec["port"]
        self.stat_name = spec["stat_name"]
        self.config = config = spec["udp_proxy"]
        self.routes = config["routes"]
        self.default_cluster = config["default_cluster"]
        hash_policy = config.get("hash") or {}
        # Envoy hashes the source IP's string form, or the key, with xxHash64.
        self.hash_key = (xxhash64(hash_policy["key"].encode()) if "key" in hash_policy
                         else "source_ip" if hash_policy.get("source_ip") else None)
        scope = f"listener.{self.stat_name}."
        self.stat_cx_total = scope + "downstream_cx_total"
        self.stat_cx_active = scope + "downstream_cx_active"
        self.stat_no_chain = scope + "no_filter_chain_match"
        self.stat_global_cx_overflow = scope + "downstream_global_cx_overflow"
        self.stat_overload_reject = scope + "downstream_cx_overload_reject"
        self.stat_rx_dropped = scope + "udp.downstream_rx_datagram_dropped"
        prefix = f"udp.{config['stat_prefix']}."
        self.stat = {key: prefix + key for key in (*SESSION_COUNTERS, "downstream_sess_active")}
        counters, gauges = self.counters, self.worker.stats.gauges
        for key in SESSION_COUNTERS:
            counters.setdefault(self.stat[key], 0)
        gauges.setdefault(self.stat["downstream_sess_active"], 0)
        counters.setdefault(self.stat_rx_dropped, 0)
        for name in {r["cluster"] for r in self.routes} | {self.default_cluster} - {None}:
            self.cluster_stat(name)
        self.access_logs = _access_logs(config.get("access_log"), self.worker)
        self.proxy_access_logs = _access_logs(config.get("proxy_access_log"), self.worker)

    def cluster_stat(self, cluster: str) -> dict:
        names = self.cluster_stats.get(cluster)
        if names is None:
            names = self.cluster_stats[cluster] = {
                key: f"cluster.{cluster}.udp.{key}" for key in CLUSTER_COUNTERS}
            for name in names.values():
                self.counters.setdefault(name, 0)
        return names

    # -- reading, and the lease -------------------------------------------------------------

    def start(self) -> None:
        if not self.owned or self.sock.fileno() < 0:
            return
        self.accepting = True
        self._read_if_allowed()

    def stop(self) -> None:
        """Stop reading; the lease is kept until the sessions have moved (`release`)."""
        self.accepting = False
        self._read_if_allowed()

    def hold(self, on: bool) -> None:
        self.held = on
        self._read_if_allowed()

    def release(self) -> None:
        """Let the next owner read (after our sessions moved to it)."""
        self.stop()
        if self.leased and self.sock.fileno() >= 0:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
            except OSError:
                pass
        self.leased = False

    def close(self) -> None:
        """The listener goes away (drain, stop, removed by xDS): its sessions end with it,
        as in Envoy, and the proxy access log is written."""
        self.stop()
        for session in list(self.sessions.values()):
            session.close()
        if self.proxy_access_logs:
            info = self._proxy_info()
            for access_log in self.proxy_access_logs:
                access_log.log(info)
        self.leased = False
        self.sock.close()           # our copy; closing it drops our lease too

    def _read_if_allowed(self) -> None:
        want = self.accepting and not self.held
        if want and not self.leased:
            self._try_lease()
        want = want and self.leased
        if want and not self.reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        elif not want and self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _try_lease(self) -> None:
        if self.retry is not None:
            return
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                log.error("listener %s: cannot take the UDP read lease: %s", self.name, exc)
            self.retry = self.loop.call_later(LEASE_RETRY, self._retry_lease)
            return
        self.leased = True

    def _retry_lease(self) -> None:
        self.retry = None
        if self.accepting and self.sock.fileno() >= 0:
            self._read_if_allowed()

    # -- datagrams --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        sessions = self.sessions
        limit = self.spec.get("max_rx_datagram_size", MAX_DATAGRAM)
        for _ in range(READ_BATCH):
            try:
                data, peer = recvfrom(limit + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters[self.stat_rx_dropped] += 1
                log.debug("listener %s: recvfrom: %s", self.name, exc)
                return
            if len(data) > limit:           # truncated: Envoy drops it, and counts it
                self.counters[self.stat_rx_dropped] += 1
                continue
            session = sessions.get(peer)
            if session is None:
                session = self._new_session(peer)
                if session is None:
                    continue
            session.from_downstream(data)

    def route(self, peer) -> str | None:
        """The cluster for a datagram from `peer`: the first matching route, else the
        default; None when nothing matches (downstream_sess_no_route)."""
        for route in self.routes:
            what = route["input"]
            value = (peer[0] if what == "source_ip" else str(peer[1]) if what == "source_port"
                     else self.address if what == "destination_ip" else str(self.port))
            if route["exact"] is not None:
                if value == route["exact"]:
                    return route["cluster"]
            elif value.startswith(route["prefix"]):
                return route["cluster"]
        return self.default_cluster

    def _new_session(self, peer):
        counters = self.counters
        name = self.route(peer)
        cluster = self.worker.clusters.get(name) if name is not None else None
        if cluster is None:
            counters[self.stat["downstream_sess_no_route"]] += 1
            return None
        hash_key = self.hash_key
        if hash_key == "source_ip":
            hash_key = xxhash64(peer[0].encode())
        per_packet = self.config["per_packet"]
        host = None
        if not per_packet:
            host = cluster.pick(hash_key=hash_key)
            if host is None:
                counters[cluster.stat["upstream_cx_none_healthy"]] += 1
                return None
        try:
            session = UdpSession.open(self, peer, cluster, host, hash_key)
        except OSError as exc:
            log.warning("listener %s: cannot open an upstream socket for %s: %s",
                        self.name, peer, exc)
            counters[self.cluster_stat(cluster.name)["sess_tx_errors"]] += 1
            return None
        counters[self.stat["downstream_sess_total"]] += 1
        return session

    def _proxy_info(self):
        """What the proxy access log formats: the listener's life and its bytes each way."""
        from .http.stream_info import StreamInfo
        info = StreamInfo(None, self.created[1], None, None, (self.address, self.port))
        info.start_time = self.created[0]
        info.last_downstream_byte = self.loop.time()
        counters = self.counters
        info.bytes_received = counters.get(self.stat["downstream_sess_rx_bytes"], 0)
        info.bytes_sent = counters.get(self.stat["downstream_sess_tx_bytes"], 0)
        return info


class UdpSession(Connection):
    """One downstream address and its upstream socket (see the module docstring)."""

    __slots__ = ("worker", "listener", "id", "chain", "state", "peer", "cluster", "host",
                 "sock", "fd", "connected", "hash_key", "last_active", "timer", "paused",
                 "start_time", "start_monotonic", "counts", "stat", "cstat", "rx_size",
                 "original")

    kind = "udp"

    def __init__(self, listener: UdpListener, peer, cluster, host, sock, conn_id: int,
                 hash_key=None):
        worker = listener.worker
        self.worker = worker
        self.listener = listener
        self.id = conn_id
        self.chain = None
        self.original = None
        self.state = Lifecycle.OPEN
        self.peer = peer
        self.cluster = cluster
        self.host = host
        self.sock = sock
        self.fd = sock.fileno()
        self.connected = host is not None and not listener.config["per_packet"]
        self.hash_key = hash_key
        self.stat = listener.stat
        self.cstat = listener.cluster_stat(cluster.name)
        self.rx_size = listener.config["max_rx_datagram_size"]
        self.counts = [0, 0, 0, 0]     # datagrams and bytes from the client, to the client
        self.start_time = time.time()
        self.start_monotonic = self.last_active = worker.loop.time()
        self.paused = False
        self.timer = None
        previous = listener.sessions.get(peer)
        if previous is not None:        # cannot happen while the lease holds; never two
            previous.close()
        listener.sessions[peer] = self
        worker.connections[conn_id] = self
        worker.stats.gauges[self.stat["downstream_sess_active"]] += 1
        self._run()

    @classmethod
    def open(cls, listener, peer, cluster, host, hash_key):
        family = socket.AF_INET6 if ":" in (host.address if host else peer[0]) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            mark = listener.worker.upstream_mark
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            failed = cluster.bind_source(sock)
            if failed:
                raise OSError(failed, "cannot bind the cluster's source address")
            if host is not None and not listener.config["per_packet"]:
                sock.connect((host.address, host.port))
        except BaseException:
            sock.close()
            raise
        return cls(listener, peer, cluster, host, sock, listener.worker.next_connection_id(),
                   hash_key)

    def _run(self) -> None:
        self.paused = False
        self.worker.loop.add_reader(self.fd, self._on_upstream)
        self._arm(self.listener.config["idle_timeout"])

    def _arm(self, delay: float) -> None:
        self.timer = self.worker.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        # The timer is armed once per idle period, not per datagram: when it fires early
        # (traffic since), it is armed again for what is left.
        idle = self.listener.config["idle_timeout"]
        left = self.last_active + idle - self.worker.loop.time()
        if left > 0:
            self._arm(left)
            return
        self.timer = None
        self.worker.stats.counters[self.stat["idle_timeout"]] += 1
        self.close()

    # -- datagrams --------------------------------------------------------------------------

    def from_downstream(self, data: bytes) -> None:
        counters, stat, counts = self.worker.stats.counters, self.stat, self.counts
        size = len(data)
        counters[stat["downstream_sess_rx_datagrams"]] += 1
        counters[stat["downstream_sess_rx_bytes"]] += size
        counts[0] += 1
        counts[1] += size
        self.last_active = self.worker.loop.time()
        try:
            if self.connected:
                self.sock.send(data)
            else:
                host = self.cluster.pick(hash_key=self.hash_key)
                if host is None:
                    counters[self.cluster.stat["upstream_cx_none_healthy"]] += 1
                    return
                self.host = host
                self.sock.sendto(data, (host.address, host.port))
        except OSError as exc:
            counters[self.cstat["sess_tx_errors"]] += 1
            log.debug("udp session %s: send upstream: %s", self.peer, exc)
            return
        counters[self.cstat["sess_tx_datagrams"]] += 1
        counters[self.cluster.stat["upstream_cx_tx_bytes_total"]] += size

    def _on_upstream(self) -> None:
        counters, stat, cstat, counts = self.worker.stats.counters, self.stat, self.cstat, self.counts
        recv, sendto, peer, limit = self.sock.recv, self.listener.sock.sendto, self.peer, self.rx_size
        for _ in range(READ_BATCH):
            try:
                data = recv(limit + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:       # ICMP unreachable on a connected socket, ...
                counters[cstat["sess_rx_errors"]] += 1
                log.debug("udp session %s: receive from upstream: %s", peer, exc)
                continue
            size = len(data)
            if size > limit:             # max_rx_datagram_size: Envoy drops, and counts it
                counters[cstat["sess_rx_datagrams_dropped"]] += 1
                continue
            counters[cstat["sess_rx_datagrams"]] += 1
            counters[self.cluster.stat["upstream_cx_rx_bytes_total"]] += size
            self.last_active = self.worker.loop.time()
            try:
                sendto(data, peer)
            except OSError as exc:
                counters[stat["downstream_sess_tx_errors"]] += 1
                log.debug("udp session %s: send to the client: %s", peer, exc)
                continue
            counters[stat["downstream_sess_tx_datagrams"]] += 1
            counters[stat["downstream_sess_tx_bytes"]] += size
            counts[2] += 1
            counts[3] += size

    # -- the Connection contract (worker/connection.py) -------------------------------------

    def readiness(self) -> Move:
        return Move.NOW

    def handoff_target(self, workers: int) -> int:
        """The receiving generation's worker that will read this session's listener."""
        return owner_index(self.listener.name, workers)

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.worker.loop.remove_reader(self.fd)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def export(self, client_only: bool = False) -> Export:
        """The whole session moves (there is nothing to write-migrate: a datagram is sent
        whole or not at all)."""
        self._pause()
        host = self.host
        fields = {"id": self.id, "listener": self.listener.name, "chain": None,
                  "peer": list(self.peer), "original": None, "cluster": self.cluster.name,
                  "host": [host.address, host.port] if host is not None else None,
                  "start": self.start_time, "counts": list(self.counts)}
        return Export("udp", fields, [self.fd])

    def resume(self) -> None:
        if self.state is Lifecycle.OPEN and self.paused:
            self._run()

    def migrated(self, channel, new_id: int) -> None:
        self._forget()
        self.sock.close()           # our copy: the adopter holds the same socket

    def close(self) -> None:
        if self.state is Lifecycle.CLOSED:
            return
        self._forget()
        self.sock.close()
        if self.listener.access_logs:
            info = self._info()
            for access_log in self.listener.access_logs:
                access_log.log(info)

    def _forget(self) -> None:
        self._pause()
        self.state = Lifecycle.CLOSED
        if self.listener.sessions.get(self.peer) is self:
            del self.listener.sessions[self.peer]
        self.worker.stats.gauges[self.stat["downstream_sess_active"]] -= 1
        self.worker.connection_closed(self)

    def _info(self):
        """What the session access log formats (Envoy's StreamInfo of a UDP session)."""
        from .http.stream_info import StreamInfo
        listener = self.listener
        info = StreamInfo(None, self.start_monotonic, None, self.peer,
                          (listener.address, listener.port), self.id)
        info.start_time = self.start_time
        info.bytes_received, info.bytes_sent = self.counts[1], self.counts[3]
        # %DURATION% is the session's life, to its end; Envoy 1.40 leaves %UPSTREAM_CLUSTER%
        # unset ("-") in a UDP session's log.
        info.last_downstream_byte = self.worker.loop.time()
        if self.host is not None:
            info.upstream_host = self.host.stat_id
        return info

    # -- adoption ---------------------------------------------------------------------------

    @classmethod
    def adopt(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
        cluster = worker.clusters.get(fields["cluster"])
        host = None
        if fields.get("host"):
            address, port = fields["host"]
            host = next((h for h in cluster.hosts if h.address == address and h.port == port),
                        None) or Host(address, port)     # gone from the config: still ours
        family = socket.AF_INET6 if ":" in (host.address if host else fields["peer"][0]) \
            else socket.AF_INET
        sock = ownership.socket_from(fds, 0, family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if host is not None and not listener.config["per_packet"]:
            # Connected as this config wants it (the sender's may have balanced per packet).
            sock.connect((host.address, host.port))
        hash_key = listener.hash_key
        if hash_key == "source_ip":
            hash_key = xxhash64(fields["peer"][0].encode())
        session = cls(listener, tuple(fields["peer"]), cluster, host, sock, conn_id, hash_key)
        if isinstance(fields.get("start"), float):
            session.start_time = fields["start"]
        counts = fields.get("counts")
        if isinstance(counts, list) and len(counts) == 4 and all(isinstance(c, int) for c in counts):
            session.counts = list(counts)
        # Counted in downstream_sess_total where it started, not again here.
        return session


def _refusal(worker, listener, fields: dict) -> str | None:
    if not isinstance(listener, UdpListener):
        return f"listener {listener.name!r} is not a UDP listener here"
    if not listener.owned:
        return f"listener {listener.name!r} is read by another worker here"
    if worker.clusters.get(fields["cluster"]) is None:
        return f"no cluster {fields['cluster']!r} here"
    return None


register("udp", UdpSession.adopt, _refusal)


def listener_class(spec: dict, tcp_class):
    """The class of a worker's listener for `spec`: UdpListener for a UDP listener."""
    return UdpListener if spec.get("protocol") == "udp" else tcp_class


def handed_over(worker) -> None:
    """The first batch of a move out has been adopted (worker/migration.py): our UDP sessions
    are with the new owners, which may start reading now."""
    for listener in worker.listeners.values():
        if isinstance(listener, UdpListener):
            listener.release()
