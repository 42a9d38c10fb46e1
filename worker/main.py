"""A worker process: one uvloop loop running the data path for the master's listeners.

The master forks a worker with the listening sockets already open (inherited) and a socketpair
for control. Control messages (see supervisor/handoff/framing.py for the framing):

    master -> worker   stats, status          answered with the worker's counters / connections
                       update {...} + fds     apply what changed: clusters, listeners (new
                                              ones with their sockets), removals (xDS, DNS)
                       drain                  stop accepting; exit when the last connection ends
                       migrate {targets}      stop accepting; move every connection to the
                                              workers on those handoff sockets; then drain
                       stop                   close everything now and exit
    worker -> master   ready {handoff}        listeners installed, accepting; the path of this
                                              worker's handoff socket (worker/migration.py)

A worker never reads config files and never imports the Envoy API: it only sees snapshots.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import random
import signal
import sys
import weakref

from ..supervisor.handoff import unix
from ..supervisor.handoff.channel import Channel
from . import migration
from ..tproxy.original_dst import original_destination
from .connection import Connection
from .inspection import Inspection
from .listener import AcceptedSocket, Listener
from .overload_manager import OverloadManager
from .proxy.cluster import ClusterManager
from .proxy.http.connection_manager import HttpConnection
from .proxy.http.pool import PoolManager
from .proxy.pipes import PipePool
from .proxy.tcp_proxy import TcpProxyConnection
from .proxy.udp_proxy import listener_class     # UDP listeners; registers the "udp" record
from . import forwarding     # noqa: F401 - registers the "tcp-split" record kind
from .stats import Stats

log = logging.getLogger("baton.worker")

EXIT_OK = 0
CHANNEL_FLUSH_TIMEOUT = 2.0   # at exit, for the handoff channels' queued messages together
EXIT_BOOT_FAILURE = 3        # the master does not respawn a worker that exits with this


class Worker:
    def __init__(self, worker_id: int, generation: int, channel_sock, snapshot: dict,
                 listener_fds: dict[str, int], runtime_dir: str, handoff_broker=None):
        self.id = worker_id
        # The master acting for this worker (supervisor/handoff/broker.py): it connects to
        # handoff sockets and opens access-log files that the worker's user may not.
        self.handoff_broker = handoff_broker
        # The record kinds every worker this one is moving connections to adopts (set by
        # migration.py for the length of a move): a connection that can move in more than
        # one form picks by it (HTTP/1.1 with a response in flight).
        self.handoff_accepts: dict = {}
        # Every handoff channel to or from another worker (migration.py), so that what they
        # still hold to send (forwarded responses, "done") leaves before this process exits.
        self.handoff_channels: weakref.WeakSet = weakref.WeakSet()
        self.migrating = False
        self.generation = generation
        self.loop = asyncio.get_running_loop()
        self.stats = Stats()
        self.pipes = PipePool()
        self.listeners: dict[str, Listener] = {}
        self.connections: dict[int, Connection] = {}     # the contract: worker/connection.py
        self._ids = itertools.count(1)
        self.draining = False
        # SO_MARK on every upstream socket, so interception rules let Baton's own traffic
        # through (loop avoidance; tproxy/). 0: none.
        self.upstream_mark = int((snapshot.get("runtime") or {}).get("upstream_mark") or 0)
        # The generation's number of workers: which one reads each UDP listener (udp_proxy.py).
        self.concurrency = int((snapshot.get("runtime") or {}).get("concurrency") or 1)
        # The bootstrap's node (id, metadata): Istio's filters name this workload from it.
        self.node = snapshot.get("node") or {}
        # Health checkers and outlier timers run on this loop; their probes carry the mark.
        self.clusters = ClusterManager(loop=self.loop, stats=self.stats, mark=self.upstream_mark)
        self.http_pools = PoolManager(self.loop, self.stats, self.upstream_mark)
        self.overload = OverloadManager(self, snapshot.get("overload"))
        self.done = self.loop.create_future()
        self.channel = Channel(channel_sock, self._on_message, self._on_channel_closed,
                               name=f"worker {worker_id} control")
        self.apply_snapshot(snapshot, listener_fds)
        self.handoff = migration.MigrationServer(
            self, unix.abstract_name(f"worker-{generation}-{worker_id}"),
            masters=unix.trusted_masters(snapshot.get("runtime")))

    # -- config --------------------------------------------------------------------------

    def apply_snapshot(self, snapshot: dict, listener_fds: dict[str, int] | None = None) -> None:
        self.clusters.apply(snapshot.get("clusters", {}))
        listener_fds = listener_fds or {}
        specs = {spec["name"]: spec for spec in snapshot.get("listeners", ())}
        for name, spec in specs.items():
            listener = self.listeners.get(name)
            if listener is None:
                fd = listener_fds.get(name)
                if fd is None and spec.get("bind_to_port", True):
                    log.error("worker %d: no socket for listener %s", self.id, name)
                    continue
                listener = self.listeners[name] = listener_class(spec, Listener)(self, spec, fd)
            else:
                listener.update(spec)
            if not self.draining:
                listener.start()
        self._declare_stats()

    def apply_update(self, msg: dict, fds: list[int]) -> None:
        """An xDS update from the master (supervisor/xds_apply.py): only what changed.

        Clusters change in place (their hosts keep their connections). A listener whose
        filter chains differ only in their route table keeps its connections and serves new
        requests with the new table; any other change replaces the chains, and the HTTP
        connections of the old ones drain (finish the request in flight, then close), as
        Envoy drains a changed listener. A removed listener stops accepting at once and its
        HTTP connections drain; L4 connections run on with the config they started with."""
        self.clusters.apply_changes(msg.get("clusters") or {}, msg.get("remove_clusters") or ())
        for name in msg.get("remove_listeners") or ():
            listener = self.listeners.pop(name, None)
            if listener is not None:
                listener.close()
                self._drain_connections_of(listener, keep=())
        new_fds = dict(zip(msg.get("listener_fds") or (), fds))
        for spec in msg.get("listeners") or ():
            name = spec["name"]
            fd = new_fds.pop(name, None)
            listener = self.listeners.get(name)
            if fd is not None:
                if listener is not None:         # cannot happen: a re-add is remove + add
                    listener.close()
                listener = self.listeners[name] = listener_class(spec, Listener)(self, spec, fd)
            elif listener is None:
                if spec.get("bind_to_port", True):
                    log.error("worker %d: update for unknown listener %s", self.id, name)
                    continue
                # bind_to_port false: no socket; reached by a use_original_dst hand-off.
                listener = self.listeners[name] = Listener(self, spec, None)
            else:
                listener.update(spec)
                self._drain_connections_of(listener, keep=listener.chains)
            if not self.draining:
                listener.start()
        for fd in new_fds.values():
            os.close(fd)
        self._declare_stats()

    def _drain_connections_of(self, listener, keep) -> None:
        for conn in list(self.connections.values()):
            if conn.listener is listener and conn.chain not in keep:
                conn.drain()

    def _declare_stats(self) -> None:
        """Every stat exists from the start with 0, as in Envoy, so /stats and Prometheus
        show a counter before its first event."""
        counters, gauges = self.stats.counters, self.stats.gauges
        for cluster in self.clusters.clusters.values():
            for key, name in cluster.stat.items():
                (gauges if key in cluster.gauge_keys else counters).setdefault(name, 0)
        for listener in self.listeners.values():
            gauges.setdefault(listener.stat_cx_active, 0)
            counters.setdefault(listener.stat_cx_total, 0)
            if listener.selects_chains:
                counters.setdefault(listener.stat_no_chain, 0)
            for chain in listener.chains:
                if chain.http_config is not None:
                    for name in chain.http_config.counters():
                        counters.setdefault(name, 0)
                    for name in chain.http_config.gauges():
                        gauges.setdefault(name, 0)
                    continue
                if chain.rpc is not None:
                    for name in chain.rpc.counters():
                        counters.setdefault(name, 0)
                    for name in chain.rpc.gauges():
                        gauges.setdefault(name, 0)
                    continue
                for name in (chain.cx_total, chain.no_route, chain.rx_bytes, chain.tx_bytes,
                             chain.idle_timeout):
                    counters.setdefault(name, 0)

    # -- connections ---------------------------------------------------------------------

    def next_connection_id(self) -> int:
        return next(self._ids)

    def new_connection(self, listener: Listener, client, peer) -> None:
        original = None
        if listener.original_dst:
            original = original_destination(client, listener.transparent)
            if listener.use_original_dst and original is not None:
                # Envoy's use_original_dst: the listener bound to the original destination
                # serves it, if there is one; otherwise this one does.
                listener = self.listener_for(original) or listener
        if listener.selects_chains:
            # The inspectors read first; the chosen chain's connection starts from there.
            self.stats.counters[listener.stat_cx_total] += 1
            self.stats.gauges[listener.stat_cx_active] += 1
            conn_id = next(self._ids)
            self.connections[conn_id] = Inspection(self, listener, client, peer, original, conn_id)
            return
        self.start_connection(listener, listener.default_chain, client, peer, original)

    def accept_plain_http(self, listener: Listener, client, peer) -> None:
        """A plain_http listener's connection (listener.py: clear text, no inspectors, no
        chain to choose, no original destination): what new_connection, start_connection
        and accept_http do for it, without their tests of what such a listener never has."""
        stats = self.stats
        stats.counters[listener.stat_cx_total] += 1
        stats.gauges[listener.stat_cx_active] += 1
        conn = HttpConnection(self, listener, listener.default_chain, peer, None, next(self._ids))
        self.connections[conn.id] = conn
        self._accepting_http(self.loop.connect_accepted_socket(lambda: conn, client), conn,
                             client)

    def start_connection(self, listener, chain, client, peer, original, initial=None,
                         conn_id: int | None = None) -> None:
        if chain is not None and chain.http_config is not None:
            if conn_id is None:
                self.stats.counters[listener.stat_cx_total] += 1
                self.stats.gauges[listener.stat_cx_active] += 1
            # HTTPS: what the inspectors read is the start of the handshake, not of HTTP.
            tls = chain.tls is not None
            conn = HttpConnection(self, listener, chain, peer, original,
                                  conn_id if conn_id is not None else next(self._ids),
                                  None if tls else initial)
            self.accept_http(conn, client, initial if tls else None)
            return
        if chain is not None and chain.rpc is not None:    # Dubbo, Bolt: worker/proxy/rpc/
            from .proxy.rpc.connection import start_rpc
            start_rpc(self, listener, chain, client, peer, original, initial, conn_id)
            return
        kind = TcpProxyConnection
        if chain is not None and chain.tls is not None:
            from .proxy.tls_proxy import TlsProxyConnection as kind     # TLS termination
        conn = kind(self, listener, client, peer,
                    conn_id if conn_id is not None else next(self._ids), chain)
        conn.original = original
        conn.initial = initial
        self.connections[conn.id] = conn
        conn.start(counted=conn_id is not None)

    def accept_http(self, conn, client, initial=None) -> None:
        """Run `conn` (an HttpConnection) on `client` through an asyncio transport, or through
        Baton's TLS transport after a handshake when its chain terminates TLS (`initial`:
        what the listener's inspectors read of it)."""
        if conn.chain.tls is not None:
            from .proxy.https import HttpsHandshake
            HttpsHandshake(self, conn, client, initial).start()
            return
        self.connections[conn.id] = conn
        # No Task per connection: the transport is made here, at once, and the coroutine is
        # stepped on when connection_made has run (its one wait), as a Task would.
        self._accepting_http(self.loop.connect_accepted_socket(lambda: conn, client), conn,
                             client)

    def _accepting_http(self, coroutine, conn, client) -> None:
        try:
            waiter = coroutine.send(None)
        except StopIteration:
            # Done (its transport made): uvloop's, should it ever finish without a wait.
            if type(client) is AcceptedSocket:
                client.attached = True
            return
        except (OSError, asyncio.CancelledError) as exc:    # the socket went away; shutdown
            log.debug("worker %d: http connection %d: %s", self.id, conn.id, exc)
            self._http_not_started(conn, client)
            return
        except Exception:
            log.exception("worker %d: http connection %d could not start", self.id, conn.id)
            self._http_not_started(conn, client)
            return
        if type(client) is AcceptedSocket:
            client.attached = True      # uvloop's transport holds the descriptor (listener.py)
        waiter.add_done_callback(lambda done: self._accepting_http(coroutine, conn, client))

    def _http_not_started(self, conn, client) -> None:
        """What a connection that never got its transport leaves: once connection_made ran,
        the transport's close ends it (connection_lost counts it out) instead."""
        client.close()
        if conn.transport is None:
            self.connections.pop(conn.id, None)
            self.stats.gauges[conn.listener.stat_cx_active] -= 1

    def listener_for(self, address: tuple[str, int]):
        """Envoy's use_original_dst hand-off: the listener bound to exactly this address, or
        else the wildcard listener of the address's family (0.0.0.0 or ::) on its port;
        listeners with bind_to_port false count as bound here (that is what they are for)."""
        host, port = address
        any_address = "::" if ":" in host else "0.0.0.0"
        exact = wildcard = None
        for listener in self.listeners.values():
            if listener.port != port:
                continue
            if listener.address == host:
                exact = listener
            elif listener.address == any_address:
                wildcard = listener
        return exact or wildcard

    def is_own_listener(self, address: tuple[str, int]) -> bool:
        """True when connecting to `address` would come straight back to one of our own
        listeners: a loop, which the ORIGINAL_DST cluster refuses."""
        host, port = address
        for listener in self.listeners.values():
            if not listener.bound:      # bind_to_port false: connecting there is no loop
                continue
            if listener.port == port and (listener.address in (host, "0.0.0.0", "::") or
                                          host.startswith("127.") or host == "::1"):
                return True
        return False

    def connection_closed(self, conn) -> None:
        self.connections.pop(conn.id, None)
        # Not while a move runs: its last connection leaving is not the end of the move,
        # whose answer the master waits for (handle_migrate finishes then).
        if self.draining and not self.connections and not self.migrating:
            self._finish(EXIT_OK)

    # -- control -------------------------------------------------------------------------

    def _on_message(self, channel: Channel, msg: dict, fds) -> None:
        if msg["type"] == "update":
            self.apply_update(msg, fds)
            return
        handler = getattr(self, "handle_" + msg["type"], None)
        if handler is None:
            channel.reply(msg, {"type": "error", "error": f"unknown message type {msg['type']!r}"})
            return
        handler(msg)

    def handle_stats(self, msg) -> None:
        self.channel.reply(msg, {"type": "stats", **self.stats.snapshot(), "gauges": self._gauges()})

    def _gauges(self) -> dict:
        """Live gauges, plus the bytes buffered per direction (Envoy's *_bytes_buffered),
        computed on demand from the pumps rather than maintained on every splice."""
        gauges = dict(self.stats.gauges)
        for listener in self.listeners.values():
            for chain in listener.chains:
                if chain.http_config is not None or chain.rpc is not None:
                    continue
                gauges.setdefault(chain.rx_buffered, 0)
                gauges.setdefault(chain.tx_buffered, 0)
        for conn in self.connections.values():
            to_upstream, to_client = conn.buffered()
            if to_upstream or to_client:
                gauges[conn.chain.rx_buffered] += to_upstream
                gauges[conn.chain.tx_buffered] += to_client
        return gauges

    def handle_hosts(self, msg) -> None:
        # The health verdicts as counts, so that the master's sum over workers says how many
        # see the host failing (supervisor/admin.py renders any as Envoy's health_flags).
        hosts = {name: {h.stat_id: {"cx_active": h.active, "cx_total": h.total,
                                    "cx_connect_fail": h.connect_fail, "weight": h.weight,
                                    "failed_active_hc": int(not h.healthy),
                                    "failed_outlier_check": int(h.ejected),
                                    "failed_eds_health": int(h.eds_unhealthy)}
                        for h in cluster.hosts}
                 for name, cluster in self.clusters.clusters.items()}
        self.channel.reply(msg, {"type": "hosts", "hosts": hosts})

    def handle_reopen_logs(self, msg) -> None:
        """Admin POST /reopen_logs: the access logs are opened again by path (logrotate moved
        the files); lines go to the old files until the new ones are open, and the answer
        waits until they are (a file the master opens for us comes back a round trip later),
        so that the admin's 200 means a request sent after it is logged to the new file."""
        files = getattr(self, "access_log_files", None)
        pending = files.reopen() if files is not None else []
        if not pending:
            self.channel.reply(msg, {"type": "ok"})
            return

        async def reply_once_open():
            # A failed reopen was logged by the file, which writes the old one still: the
            # answer is the same, as Envoy's 200 with reopen_failed counted.
            await asyncio.gather(*pending, return_exceptions=True)
            self.channel.reply(msg, {"type": "ok"})
        self.loop.create_task(reply_once_open())

    def handle_status(self, msg) -> None:
        self.channel.reply(msg, {"type": "status", "connections": len(self.connections),
                                 "draining": self.draining})

    def handle_drain(self, msg) -> None:
        log.info("worker %d: draining %d connection(s)", self.id, len(self.connections))
        self.draining = True
        for listener in self.listeners.values():
            listener.close()
        self._drain_http()
        self.channel.reply(msg, {"type": "ok"})
        if not self.connections:
            self._finish(EXIT_OK)

    def _drain_http(self) -> None:
        """HTTP connections finish the request in flight and close (HTTP/1.1
        `connection: close`, HTTP/2 GOAWAY); idle ones close now."""
        self.http_pools.drop_idle()
        for conn in list(self.connections.values()):
            conn.drain()

    def handle_migrate(self, msg) -> None:
        """Hand every connection to the workers on msg["targets"], then drain what is left
        (connections the receivers refused, e.g. for a listener they do not have)."""
        for listener in self.listeners.values():
            listener.stop()
        self.draining = True
        self.migrating = True

        async def move():
            started, count = self.loop.time(), len(self.connections)
            try:
                moved, kept, count = await migration.migrate_connections(
                    self, msg["targets"], bool(msg.get("keep_upstreams")))
            except Exception as exc:    # noqa: BLE001 - a bug in one kind's move
                # migrate_connections has settled what it sent; what is still here is served
                # and drained like a refused connection, and the master hears how it ended
                # instead of waiting out its drain timeout for a reply that never comes.
                kept = len(self.connections)
                moved = max(count - kept, 0)
                log.error("worker %d: moving connections stopped part-way (%s: %s); %d of %d "
                          "moved, %d stay to drain", self.id, type(exc).__name__, exc,
                          moved, count, kept, exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                self.migrating = False
            log.info("worker %d: moved %d of %d connection(s) in %.3fs; %d stay to drain",
                     self.id, moved, count, self.loop.time() - started, kept)
            self._drain_http()
            self.channel.reply(msg, {"type": "migrated", "moved": moved, "kept": kept})
            if not self.connections:
                self._finish(EXIT_OK)
        self.loop.create_task(move())

    def handle_resume(self, msg) -> None:
        """The next generation died after taking over: serve again (rollback after commit)."""
        self.draining = False
        for listener in self.listeners.values():
            if listener.sock is not None and listener.sock.fileno() >= 0:
                listener.start()
        log.warning("worker %d: serving again (%d connection(s))", self.id, len(self.connections))

    def handle_stop(self, msg) -> None:
        self.stop_now()

    def handle_sigterm(self) -> None:
        """SIGTERM to a serving worker drains it, as the master's `drain` does. To a worker
        already draining or moving its connections out it means the drain deadline has passed
        (the master escalates TERM, then KILL: supervisor/master.py): close what is left now
        and exit, so its counters still reach the master."""
        if not self.draining:
            self.handle_drain({"type": "drain"})
            return
        log.warning("worker %d: SIGTERM while draining: closing %d connection(s) now",
                    self.id, len(self.connections))
        self.stop_now()

    def stop_now(self) -> None:
        for listener in self.listeners.values():
            listener.stop()
        for conn in list(self.connections.values()):
            conn.close()
        self._finish(EXIT_OK)

    def _on_channel_closed(self, channel, reason: str) -> None:
        # The master is gone (PDEATHSIG normally kills us first) or broke the protocol.
        if not self.done.done():
            log.error("worker %d: control channel closed (%s); exiting", self.id, reason)
            self.stop_now()

    def _finish(self, code: int) -> None:
        if not self.done.done():
            self.clusters.stop()
            files = getattr(self, "access_log_files", None)
            if files is not None:
                files.close()
            self.done.set_result(code)

    async def run(self) -> int:
        for listener in self.listeners.values():
            listener.start()
        self.channel.send({"type": "ready", "worker": self.id, "pid": os.getpid(),
                           "handoff": self.handoff.path})
        code = await self.done
        # The last connection may have ended with its final forwarded bytes still queued.
        deadline = self.loop.time() + CHANNEL_FLUSH_TIMEOUT
        for channel in list(self.handoff_channels):
            await channel.drained(timeout=max(0.0, deadline - self.loop.time()))
        self.handoff.close()
        # Our counters outlive us: the master adds them to what it reports (Envoy keeps
        # counters across worker restarts and hot restarts too).
        if not self.channel.closed:
            self.channel.send({"type": "final_stats", "counters": dict(self.stats.counters)})
            await self.channel.drained(timeout=2.0)
        return code


def _reset_inherited_process_state(keep_fds: set[int]) -> None:
    """Undo what fork() copied from the master that the worker must not share."""
    # The master's event loop set a signal wakeup fd; a signal delivered here would otherwise
    # be written into the *master's* loop and handled there.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    # A Ctrl-C reaches the whole process group; the master decides how workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Close the master's loop, admin and control sockets: they are not ours.
    low = 3
    for fd in sorted(keep_fds):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, 65536)


def worker_process_main(worker_id: int, generation: int, master_pid: int, channel_sock,
                        snapshot: dict, listener_socks: dict, runtime_dir: str,
                        broker_sock=None) -> int:
    """Entry point in the forked child. Never returns into the master's code."""
    import prctl
    import uvloop

    from ..supervisor.handoff.broker import BrokerClient
    listener_fds = {name: sock.fileno() for name, sock in listener_socks.items()}
    keep = {channel_sock.fileno(), *listener_fds.values()}
    if broker_sock is not None:
        keep.add(broker_sock.fileno())
    previous_pidfd = (snapshot.get("runtime") or {}).get("previous_master_pidfd")
    if previous_pidfd is not None:
        keep.add(previous_pidfd)        # worker/migration.py: is the previous master alive?
    _reset_inherited_process_state(keep)
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != master_pid:      # the master died before PDEATHSIG was armed
        return EXIT_BOOT_FAILURE
    prctl.set_name(f"baton: worker {worker_id}"[:15])
    prctl.set_proctitle(f"baton: worker {worker_id}")
    random.seed()
    runtime = snapshot.get("runtime") or {}
    user = runtime.get("worker_user")
    caps = runtime.get("worker_caps")
    if user or caps is not None:
        from .privileges import PrivilegeError, drop_to, preimport
        try:
            preimport()             # done by the master before forking: nothing left to do
            drop_to(user, caps)
        except (PrivilegeError, OSError) as exc:
            log.error("worker %d: cannot drop privileges (%s): %s", worker_id,
                      f"uid {user[0]}" if user else "capabilities", exc)
            return EXIT_BOOT_FAILURE
    gc.freeze()     # everything inherited from the master stays shared copy-on-write
    # The listener socket objects belong to the master's address space copy: detach them so
    # their finalizers never close the descriptors the worker now owns.
    for sock in listener_socks.values():
        sock.detach()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        broker = BrokerClient(broker_sock) if broker_sock is not None else None
        try:
            worker = Worker(worker_id, generation, channel_sock, snapshot, listener_fds,
                            runtime_dir, broker)
        except PermissionError as exc:
            # e.g. a file its config names that this user may not read: would fail again.
            log.error("worker %d cannot start as uid %d: %s", worker_id, os.getuid(), exc)
            return EXIT_BOOT_FAILURE
        loop.add_signal_handler(signal.SIGTERM, worker.handle_sigterm)
        return await worker.run()

    try:
        return uvloop.run(main())
    except Exception:
        log.exception("worker %d crashed", worker_id)
        return 1
    finally:
        sys.stderr.flush()
