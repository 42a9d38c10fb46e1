"""The xDS agent: a process of its own that holds the ADS stream and tells the master what to
serve.

    python -m baton.xds.agent --bootstrap FILE --fd N --state FILE [--resume]

Why a separate, exec'd process: grpcio and fork() do not mix (a live grpc.aio stream in a
parent broke the gRPC of every forked child here, and once crashed a child that never used
gRPC), and the master forks workers all its life. So the master never imports grpc; it
starts this program by exec and talks to it over the socketpair end `--fd`, in the frames
of supervisor/handoff/framing.py:

    agent -> master   config {config, stats, connected}   the whole dynamic config, whenever
                                                          it changed (coalesced: at most one
                                                          in flight, always the latest)
    master -> agent   dump {id}                           -> dump {dump}: /config_dump's
                                                          dynamic parts, built on demand

The stream: xds/ads.py says what to send, xds/dynamic.py validates and warms; secrets that
come over a gRPC stream of their own or from watched files are xds/sds.py's (the agent also
runs, without an ADS stream, for a bootstrap whose only dynamic parts are such secrets). A lost stream
is retried with Envoy's jittered exponential backoff (0.5 s doubling to 30 s, full jitter)
while the last accepted config keeps serving. `--state` is where the agent keeps what it
accepted (resources and versions); with `--resume` (a restarted agent, a new generation) it
starts from there, so the master gets the same config at once and the control plane is asked
for the versions already held.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import time

import msgpack

from . import protos
from .ads import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT, TYPE_ORDER, AdsProtocol, Update
from .dump import dynamic_dump
from .dynamic import DynamicConfig, error_detail
from .secrets import write_private

log = logging.getLogger("baton.xds")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
MAX_MESSAGE = 256 * 1024 * 1024     # a 10k-endpoint assignment is ~0.5 MB; 1000 clusters more
STATE_VERSION = 1


class Stats:
    """Envoy's xDS stat names, counted here and sent to the master with each config."""

    def __init__(self):
        self.counters: dict[str, int] = {}
        self.connected = 0

    def count(self, names, key):
        for name in names:
            stat = f"{name}.{key}"
            self.counters[stat] = self.counters.get(stat, 0) + 1

    def gauges(self):
        return {"control_plane.connected_state": self.connected}


def stat_scopes(config: DynamicConfig, type_url: str, names) -> list[str]:
    """The scopes an update of `type_url` counts into, as Envoy names them."""
    if type_url == CLUSTER:
        return ["cluster_manager.cds"]
    if type_url == LISTENER:
        return ["listener_manager.lds"]
    if type_url == SECRET:
        return sorted(f"sds.{n}" for n in names)     # Envoy: sds.<secret name>.*
    if type_url == ENDPOINT:
        clusters = {**config.static_clusters, **config.active_clusters,
                    **{n: w.value for n, w in config.warming_clusters.items()}}
        return sorted(f"cluster.{n}" for n, c in clusters.items()
                      if c and c.get("type") == "EDS" and c["eds"]["service_name"] in names)
    scopes = set()
    listeners = [*config.static_listeners, *config.active_listeners.values(),
                 *(w.value for w in config.warming_listeners.values())]
    for spec in listeners:
        for chain in spec.get("filter_chains") or ():
            http = chain.get("http")
            if http and http.get("rds") and http["rds"]["route_config_name"] in names:
                scopes.add(f"http.{http['stat_prefix']}.rds.{http['rds']['route_config_name']}")
    return sorted(scopes)


class Agent:
    def __init__(self, bootstrap: dict, channel_sock, state_path: str, resume: bool,
                 saved: bytes | None = None, save_through_master: bool = False):
        self.loop = asyncio.get_running_loop()
        self.bootstrap = bootstrap
        self.node = bootstrap["node"]
        xds = bootstrap["xds"]
        self.delta = xds["api_type"] == "DELTA_GRPC"
        self.protocol = AdsProtocol(bootstrap["node"], delta=self.delta,
                                    node_once=xds["set_node_on_first_message_only"])
        self.config = DynamicConfig(bootstrap, started=self.loop.time())
        # None: no ADS stream, only SDS sources of their own (config_source.sds_only_xds).
        self.target = None
        if xds["cluster"] is not None:
            from .sds import grpc_target
            self.target = grpc_target(bootstrap["clusters"][xds["cluster"]])
        self.state_path = state_path
        # Unprivileged, the agent cannot write the master's runtime directory: the master
        # keeps the file for it (supervisor/xds_link.py), and it was read before dropping.
        self.save_through_master = save_through_master
        self.saved = saved
        self.stats = Stats()
        self.started_scopes: set[str] = set()   # subscriptions counted as started
        self.waiting: dict[str, asyncio.Task] = {}  # type_url -> its update waiting for code
        self.restoring: dict[str, asyncio.Task] = {}    # saved state's: kept past a stream
        self.waits = 0      # of the last translation's errors, how many wait for remote code
        self.dirty = asyncio.Event()
        self.done = self.loop.create_future()
        from ..supervisor.handoff.channel import Channel
        self.channel = Channel(channel_sock, self._on_message, self._on_closed, name="agent->master")
        if resume:
            self._resume()
        for type_url in TYPE_ORDER:
            self.protocol.set_interest(type_url, self.config.interest(type_url))
        self._count_new_subscriptions()
        from .sds import SecretSources
        self.secret_sources = SecretSources(self)

    def _scopes_of(self, type_url) -> list[str]:
        """Every stat scope with a subscription of `type_url` now."""
        interest = self.protocol.types[type_url].interest
        if interest is None or interest == frozenset():
            return []
        return stat_scopes(self.config, type_url, () if interest == "*" else interest)

    def _count_new_subscriptions(self) -> None:
        """Envoy counts a subscription's start as its first update_attempt."""
        for type_url in TYPE_ORDER:
            new = [s for s in self._scopes_of(type_url) if s not in self.started_scopes]
            self.started_scopes.update(new)
            self.stats.count(new, "update_attempt")

    def _drop_stats_of_gone(self) -> None:
        """A cluster or route table that is gone takes its update_* stats along, as in
        Envoy (the workers drop the rest of a removed cluster's stats)."""
        live = {scope for type_url in (ENDPOINT, ROUTE) for scope in self._scopes_of(type_url)}
        gone = {name.rsplit(".", 1)[0] for name in self.stats.counters
                if name.startswith(("cluster.", "http.")) and name.rsplit(".", 1)[0] not in live}
        for scope in gone:
            self.started_scopes.discard(scope)
        for name in [n for n in self.stats.counters if n.rsplit(".", 1)[0] in gone]:
            del self.stats.counters[name]

    # -- the master --------------------------------------------------------------------

    def _on_message(self, channel, msg, fds) -> None:
        if msg["type"] == "dump":
            channel.reply(msg, {"type": "dump", "dump": dynamic_dump(
                self.config, self.secret_sources.dump_entries())})
        else:
            channel.reply(msg, {"type": "error", "error": f"unknown message {msg['type']!r}"})

    def _on_closed(self, channel, reason) -> None:
        if not self.done.done():
            log.info("xds agent: the master went away (%s); exiting", reason)
            self.done.set_result(0)

    async def _publish(self) -> None:
        """Send the latest config whenever it changed; one message in flight at a time, so
        a flood of updates is coalesced into the newest, never queued."""
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            now = self.loop.time()
            self.config.promote(now)
            from ..worker.wasm.remote import stats as remote_stats
            counters, gauges = remote_stats()       # wasm.remote_load_*: fetched here
            msg = {"type": "config", "config": self.config.published(now),
                   "stats": {"counters": {**self.stats.counters, **counters},
                             "gauges": {**self.stats.gauges(), **gauges}}}
            try:
                self.channel.send(msg)
            except Exception as exc:  # noqa: BLE001 - ChannelClosed: _on_closed ends us
                log.debug("xds agent: cannot send: %s", exc)
                return
            self._save()
            await self.channel.drained(60.0)

    async def _warming_timer(self) -> None:
        """Wake the publisher when a warming resource's initial_fetch_timeout passes, or the
        first fetch's does (initialization then completes without it, as in Envoy)."""
        was_initialized = False
        while True:
            deadline = self.config.next_deadline()
            delay = 0.25 if deadline is None else max(0.0, deadline - self.loop.time()) + 0.001
            await asyncio.sleep(min(delay, 0.25))
            now = self.loop.time()
            initialized = self.config.initialized(now)
            if self.config.promote(now) or initialized != was_initialized:
                self.dirty.set()
            was_initialized = initialized

    # -- saved state -------------------------------------------------------------------

    def _save(self) -> None:
        types = {}
        for type_url in TYPE_ORDER:
            state = self.protocol.types[type_url]
            types[type_url] = {"version": state.version, "held": state.held,
                               "resources": [[a.name, a.version, a.raw, a.updated]
                                             for a in self.config.accepted[type_url].values()]}
        # Secrets of gRPC and file sources too: a restarted agent serves them at once.
        data = msgpack.packb({"version": STATE_VERSION, "delta": self.delta, "types": types,
                              "source_secrets": self.config.source_secrets}, use_bin_type=True)
        if self.save_through_master:
            if not self.channel.closed:
                self.channel.send({"type": "state", "data": data})
            return
        tmp = f"{self.state_path}.{os.getpid()}.tmp"   # two generations' agents may overlap
        try:
            write_private(tmp, data)                    # it holds private keys
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("xds agent: cannot save state to %s: %s", self.state_path, exc)

    def _resume(self) -> None:
        try:
            if self.saved is None and not self.save_through_master:
                self.saved = read_state(self.state_path)
            if self.saved is None:
                return
            saved = msgpack.unpackb(self.saved, raw=False)
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            log.warning("xds agent: ignoring unreadable state %s: %s", self.state_path, exc)
            return
        if saved.get("version") != STATE_VERSION or saved.get("delta") != self.delta:
            return
        from google.protobuf import any_pb2
        for key, secrets in (saved.get("source_secrets") or {}).items():
            self.config.source_secrets[key] = secrets
        for type_url in TYPE_ORDER:
            entry = saved["types"].get(type_url) or {}
            resources = {name: (version, any_pb2.Any(type_url=type_url, value=raw))
                         for name, version, raw, _ in entry.get("resources", ())}
            if resources:
                update = Update(type_url, entry["version"], "", resources, [], complete=True)
                errors, fetches = self._translate(update)
                if fetches:         # applied once its remote Wasm code is fetched, off the loop
                    self._apply_ready(update, errors, fetches)
                    self._wait(type_url, self._restore_later(update, entry, fetches))
                    self.restoring[type_url] = self.waiting[type_url]
                elif not self._restored(update, entry, errors):
                    continue
            self.protocol.restore(type_url, entry.get("version", ""), entry.get("held") or {})
        # What was served before is served again at once: its warming already happened.
        self.config.promote(float("inf"))
        self.dirty.set()

    def _restored(self, update, entry, errors) -> bool:
        """Saved resources applied (errors: not): their times of update as saved."""
        if errors:
            log.warning("xds agent: saved %s no longer loads: %s", SHORT[update.type_url],
                        error_detail(errors))
            return False
        for name, _, _, updated in entry["resources"]:
            self.config.accepted[update.type_url][name].updated = updated
        return True

    async def _restore_later(self, update, entry, fetches) -> None:
        """Saved resources whose remote Wasm code was not held at start: translated again
        once fetched (their versions were asked for already: they loaded before). They then
        warm as any update, not served at once as the rest of the saved state."""
        try:
            self._restored(update, entry, await self._fetched(update, fetches))
            self.dirty.set()
        finally:
            del self.restoring[update.type_url]

    # -- the stream --------------------------------------------------------------------

    async def run(self) -> int:
        tasks = [self.loop.create_task(self._publish()), self.loop.create_task(self._warming_timer())]
        if self.target is not None:
            tasks.append(self.loop.create_task(self._streams()))
        self.secret_sources.reconcile()
        self.dirty.set()
        try:
            return await self.done
        finally:
            for task in tasks:
                task.cancel()
            self.secret_sources.stop()

    async def _streams(self) -> None:
        import grpc
        from .sds import grpc_channel
        attempt = 0
        while True:
            got_response = False
            channel = grpc_channel(self.bootstrap["clusters"][self.bootstrap["xds"]["cluster"]], [
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE)])
            try:
                got_response = await self._stream(channel)
                reason = "the control plane closed the stream"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # noqa: BLE001 - any failure is a lost stream, retried
                log.exception("xds agent: stream failed")
                reason = repr(exc)
            finally:
                self.protocol.stream_ended()
                await channel.close()
            if self.stats.connected:
                self.stats.connected = 0
                self.dirty.set()
            self._count_failure()
            attempt = 1 if got_response else attempt + 1
            delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)))
            log.warning("xds agent: ADS stream to %s lost (%s); retrying in %.2fs",
                        self.target, reason, delay)
            await asyncio.sleep(delay)

    def _count_failure(self) -> None:
        for type_url in TYPE_ORDER:
            scopes = self._scopes_of(type_url)
            self.stats.count(scopes, "update_failure")
            self.stats.count(scopes, "update_attempt")

    async def _stream(self, channel) -> bool:
        from .sds import discovery_stream
        stub = protos.ads_stub_class()(channel)
        call = (stub.DeltaAggregatedResources() if self.delta
                else stub.StreamAggregatedResources())

        def connected():
            self.stats.connected = 1
            log.info("xds agent: connected to %s", self.target)
        try:
            return await discovery_stream(call, self.protocol.stream_started(), self._handle,
                                          connected)
        finally:        # the next stream's server sends them again (the fetches go on)
            for task in self.waiting.values():
                if task not in self.restoring.values():
                    task.cancel()
            self.waiting = dict(self.restoring)     # the next stream's updates wait for these

    async def _handle(self, call, response) -> None:
        """An update is applied and answered at once, unless it waits for remote Wasm code, or
        behind an update of its type that does: that one is applied and answered once its
        code is fetched, in a task, and the stream reads on (other types go on being applied,
        as Envoy's ADS goes on while a listener warms on its fetch)."""
        update = self.protocol.on_response(response)
        type_url = update.type_url
        names = set(update.resources) | set(update.removed)
        scopes = stat_scopes(self.config, type_url, names)
        self.stats.count(scopes, "update_attempt")
        before = self.waiting.get(type_url)
        if before is None:
            errors, fetches = self._translate(update)
            if not fetches:
                await self._answer(call, update, scopes, errors)
                return
            self._apply_ready(update, errors, fetches)
        else:
            fetches = None
        self._wait(type_url, self._apply_later(call, update, scopes, before, fetches))

    def _wait(self, type_url, work) -> None:
        """Run `work` as the task that updates of `type_url` now wait behind."""
        task = self.loop.create_task(work)
        self.waiting[type_url] = task

        def done(task):
            if self.waiting.get(type_url) is task:
                del self.waiting[type_url]
            if not task.cancelled() and task.exception() is not None:
                log.error("xds agent: applying a %s update failed: %r", SHORT[type_url],
                          task.exception())
        task.add_done_callback(done)

    async def _apply_later(self, call, update, scopes, before, fetches) -> None:
        errors = []
        if before is not None:          # the type's earlier update first, in order (delta)
            await asyncio.wait({before})
            errors, fetches = self._translate(update)
        if fetches:
            errors = await self._fetched(update, fetches)
        await self._answer(call, update, scopes, errors)

    async def _answer(self, call, update, scopes, errors) -> None:
        type_url = update.type_url
        names = set(update.resources) | set(update.removed)
        if errors:
            message = error_detail(errors)
            log.warning("xds agent: rejected %s version %r: %s", SHORT[type_url],
                        update.version, message)
            if self.delta:
                # A rejected delta response fails every watch of its type, as in Envoy.
                scopes = sorted(set(scopes) | set(self._scopes_of(type_url)))
            self.stats.count(scopes, "update_rejected")
            await call.write(self.protocol.nack(update, message))
        else:
            scopes = stat_scopes(self.config, type_url, names) or scopes
            self.stats.count(scopes, "update_success")
            await call.write(self.protocol.ack(update))
            for other in TYPE_ORDER:
                for request in self.protocol.set_interest(other, self.config.interest(other)):
                    await call.write(request)
                self.config.forget_unwanted(other)
            self._count_new_subscriptions()
            self._drop_stats_of_gone()
            self.secret_sources.reconcile()
        self.dirty.set()


    def _translate(self, update, outcomes=None) -> tuple[list[str], dict]:
        """config.apply, never fetching remote Wasm code here on the loop: -> (errors, the
        modules to fetch first, by sha256: then the update was not applied). `outcomes`:
        what fetches gave (worker/wasm/remote.py's deferring())."""
        from ..worker.wasm import remote
        with remote.deferring(outcomes) as fetches:
            errors = self.config.apply(update, self.loop.time())
            self.waits = remote.waits()
        return errors, dict(fetches)

    def _apply_ready(self, update, errors, fetches) -> None:
        """While `update` waits for remote Wasm code: when that is all it waits for (no other
        error), each of its resources that needs none is applied now, on its own, as Envoy's
        LDS adds each listener on its own and only the one whose module is fetched warms
        (listener_manager_impl.cc; the fetch is that listener's init target). The whole
        update, applied once fetched, still decides (and removes what it leaves out)."""
        if len(errors) != self.waits:
            return
        from ..worker.wasm import remote
        for name, resource in update.resources.items():
            alone = Update(update.type_url, update.version, "", {name: resource}, [],
                           complete=False)
            with remote.deferring(recorded=dict(fetches)):   # its miss is counted already
                self.config.apply(alone, self.loop.time())      # unless it waits, or fails
        self.dirty.set()

    async def _fetched(self, update, fetches: dict) -> list[str]:
        """The modules fetched off the loop (a thread each), the update then translated again
        with their outcomes (more rounds if it names modules it did not reach before)."""
        outcomes = {}
        while fetches:
            log.info("xds agent: fetching %d remote Wasm module(s) for %s version %r",
                     len(fetches), SHORT[update.type_url], update.version)
            got = await asyncio.gather(*(self.loop.run_in_executor(None, module.fetch_deferred)
                                         for module in fetches.values()))
            outcomes.update(zip(fetches, got))
            errors, fetches = self._translate(update, outcomes)
        return errors


def read_state(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _preimport() -> None:
    """What the agent loads lazily, loaded while it may still read the interpreter's files."""
    import grpc
    import grpc.aio  # noqa: F401
    from google.protobuf import any_pb2  # noqa: F401
    protos.ads_stub_class()
    # Secrets: their gRPC stub, the TLS types and what checks a certificate against its key
    # (xds/tls.py loads them on first use), inotify for watched files.
    from .sds import sds_stub_class
    from .file_watch import _inotify
    from .secrets import secret_class
    from .tls import DOWNSTREAM_TLS_CONTEXT
    from cryptography import x509  # noqa: F401
    from cryptography.hazmat.primitives import serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: F401
    sds_stub_class()
    secret_class()
    protos.import_type(DOWNSTREAM_TLS_CONTEXT)
    _inotify()
    import encodings.idna  # noqa: F401
    # Remote Wasm code: fetched in the loop's default executor, over its cluster's TLS.
    import concurrent.futures.thread  # noqa: F401
    from ..worker.tls import client  # noqa: F401
    from ..worker.wasm.vm import load_wasmtime
    load_wasmtime()         # the Wasm modules ECDS may send are checked here (xds/http_filters_wasm.py)


def drop_privileges(user: str | None) -> None:
    """As the workers do (worker/privileges.py): the agent needs only to connect out and its
    socketpair to the master, so it keeps no capability; as root it becomes `user`."""
    from ..worker.privileges import drop_to
    uid_gid = tuple(int(v) for v in user.split(":")) if user else None
    _preimport()
    drop_to(uid_gid, ())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="baton-xds-agent")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--unprivileged", action="store_true",
                        help="drop every capability (and become --user) once loaded")
    parser.add_argument("--user", default=None, metavar="UID:GID")
    args = parser.parse_args(argv)
    # gRPC core logs every GOAWAY at INFO to stderr; a lost stream is logged here already.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s baton-xds[%(process)d] %(levelname)s %(message)s",
                        stream=sys.stderr)
    import prctl
    prctl.set_pdeathsig(signal.SIGTERM)           # the master died without stopping us
    try:
        prctl.set_name("baton: xds")
        prctl.set_proctitle("baton: xds agent")
    except OSError as exc:                        # a process title is not worth failing for
        log.debug("xds agent: no process title: %s", exc)
    from .bootstrap import ConfigError, load_bootstrap
    try:
        bootstrap = load_bootstrap(args.bootstrap)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"baton xds agent: {line}", file=sys.stderr)
        return 1
    if not bootstrap.get("xds"):
        print("baton xds agent: the bootstrap has no dynamic_resources", file=sys.stderr)
        return 1
    sock = socket.socket(fileno=args.fd)
    saved = None
    if args.unprivileged:
        try:
            saved = read_state(args.state) if args.resume else None
        except OSError as exc:
            log.warning("xds agent: ignoring unreadable state %s: %s", args.state, exc)
        from ..worker.privileges import PrivilegeError
        try:
            drop_privileges(args.user)
        except (OSError, ImportError, PrivilegeError) as exc:
            print(f"baton xds agent: cannot drop privileges: {exc}", file=sys.stderr)
            return 1

    async def run() -> int:
        loop = asyncio.get_running_loop()
        agent = Agent(bootstrap, sock, args.state, args.resume, saved=saved,
                      save_through_master=args.unprivileged)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: agent.done.done() or agent.done.set_result(0))
        return await agent.run()
    started = time.monotonic()
    code = asyncio.run(run())
    log.info("xds agent: exiting after %.1fs", time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
