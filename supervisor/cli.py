"""The `baton` command: run, check, status, stop, version.

Flag names follow Envoy's where Envoy has one (-c/--config-path, --concurrency, -l/--log-level,
--drain-time-s as an alias of --drain-timeout). Every failure before serving is one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys

from ..tproxy import cli as intercept_cli
from .version import VERSION

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _runtime_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime-dir", help="control socket directory (default: $RUNTIME_DIRECTORY, "
                   "/run/baton as root, else $XDG_RUNTIME_DIR/baton)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="Baton node proxy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("-c", "--config-path", "--config", dest="config", required=True,
                     help="Envoy v3 bootstrap file (YAML or JSON)")
    run.add_argument("--concurrency", type=int, default=None,
                     help="number of workers (default: number of CPUs)")
    _runtime_dir_arg(run)
    run.add_argument("--drain-timeout", "--drain-time-s", dest="drain_timeout", type=float,
                     default=600.0, help="seconds open connections may take to finish on stop "
                     "(default 600, as Envoy's --drain-time-s)")
    run.add_argument("--reload-timeout", type=float, default=60.0,
                     help="on reload, how long the new generation may take to serve before it is "
                     "killed and the reload rolled back (default 60)")
    run.add_argument("--worker-rss-limit", type=_size, default=None, metavar="SIZE",
                     help="recycle a worker whose RSS exceeds SIZE (bytes, or with K/M/G), moving "
                     "its connections to a fresh process (default: no limit)")
    run.add_argument("--worker-rss-check-interval", type=float, default=10.0, metavar="SECONDS",
                     help="how often to compare worker RSS with --worker-rss-limit (default 10)")
    run.add_argument("--l4-move", choices=["sockets", "client-only"], default="sockets",
                     help="how a reload or recycle moves an L4 connection: with both sockets "
                     "(default), or only the client socket, the upstream staying in the old worker "
                     "and its bytes forwarded (write migration, the path pooled HTTP upstreams use)")
    run.add_argument("--upstream-mark", type=lambda v: int(v, 0), default=0, metavar="MARK",
                     help="SO_MARK on every upstream connection, so interception rules can let "
                     "Baton's own traffic through (istio-iptables excludes by uid or mark; needs "
                     "CAP_NET_ADMIN). Default: none")
    run.add_argument("--worker-user", default=None, metavar="USER[:GROUP]",
                     help="as root, run workers as this user (default: baton), with no "
                     "capabilities, or only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE with "
                     "--upstream-mark (the master stays root: it binds and forks); 'root' keeps "
                     "workers root")
    run.add_argument("--intercept", action="store_true",
                     help="install transparent capture rules at start (the flags of `baton "
                     "intercept apply` below), keep them across reloads, remove them at stop")
    intercept_cli.add_config_arguments(run)
    run.add_argument("-l", "--log-level", default="info",
                     choices=["trace", "debug", "info", "warning", "warn", "error", "critical", "off"])

    check = sub.add_parser("check", help="validate a bootstrap file; prints ok or every error")
    check.add_argument("-c", "--config-path", "--config", dest="config", required=True)

    status = sub.add_parser("status", help="show the master and its workers")
    _runtime_dir_arg(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    stop = sub.add_parser("stop", help="stop the running master (graceful drain)")
    _runtime_dir_arg(stop)
    stop.add_argument("--fast", action="store_true", help="close connections now (as SIGINT)")

    reload = sub.add_parser("reload", help="start a new generation (binary and config from disk) "
                            "and move every listener and connection to it; rolls back on failure")
    _runtime_dir_arg(reload)
    reload.add_argument("--timeout", type=float, default=600.0,
                        help="give up waiting for the outcome after this many seconds (default 600)")

    recycle = sub.add_parser("recycle", help="replace a worker by a fresh process that takes over "
                             "all its connections")
    recycle.add_argument("--worker", type=int, required=True, metavar="N")
    _runtime_dir_arg(recycle)

    intercept_cli.add_parser(sub)

    sub.add_parser("version", help="print the version")
    return parser


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use bytes, or K/M/G)") from None


def fail(message: str) -> int:
    print(f"baton: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    if command is None:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        import logging
        logging.getLogger("baton").debug("internal error", exc_info=True)
        return fail(f"internal error: {exc.__class__.__name__}: {exc} (run with --log-level debug for details)")


def cmd_version(args) -> int:
    print(f"baton {VERSION}")
    return EXIT_OK


def cmd_check(args) -> int:
    from ..xds.bootstrap import ConfigError, load_bootstrap
    from .handoff.broker import access_log_problems
    try:
        snapshot = load_bootstrap(args.config)
        problems = access_log_problems(snapshot)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_ERROR
    for warning in snapshot.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    print("ok")
    return EXIT_OK


class UntrustedPeer(Exception):
    pass


def _server_trusted(path: str, uid: int) -> bool:
    """The control socket's server is root, our own uid, or the owner of the runtime
    directory when nobody else may write there (a master under systemd's DynamicUser=, asked
    by root): only that owner could have bound the socket in it."""
    if uid in (0, os.geteuid()):
        return True
    try:
        st = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return st.st_uid == uid and not st.st_mode & 0o022


def _trusted_request(path: str, msg: dict, timeout: float) -> dict:
    """One request to the control socket, once its server proved to be a master we trust
    (SO_PEERCRED): we never hand a command to, or believe an answer from, anyone else."""
    from .handoff.channel import BlockingChannel, peer_credentials
    from .handoff.framing import close_fds
    channel = BlockingChannel.connect(path, timeout)
    try:
        pid, uid, _ = peer_credentials(channel.sock)
        if not _server_trusted(path, uid):
            raise UntrustedPeer(f"{path} is served by pid {pid} of uid {uid}, not by root, by us "
                                "or by the runtime directory's owner: not a baton master we trust")
        reply, fds = channel.request(msg)
        close_fds(fds)
    finally:
        channel.close()
    if not isinstance(reply, dict) or not isinstance(reply.get("type"), str):
        raise UntrustedPeer(f"{path} answered something that is not a baton reply")
    return reply


def _control_request(args, msg: dict, timeout: float = 10.0) -> dict:
    from .handoff.channel import ChannelClosed
    from .handoff.framing import FrameError
    from .runtime import RuntimeDirError, control_path, resolve
    try:
        path = control_path(resolve(args.runtime_dir))
    except RuntimeDirError as exc:
        raise SystemExit(fail(str(exc)))
    try:
        return _trusted_request(path, msg, timeout)
    except UntrustedPeer as exc:
        raise SystemExit(fail(str(exc)))
    except FrameError as exc:
        raise SystemExit(fail(f"control socket {path}: not a baton master: {exc}"))
    except FileNotFoundError:
        raise SystemExit(fail(f"no baton running: {path} does not exist"))
    except ConnectionRefusedError:
        raise SystemExit(fail(f"no baton running: nothing listens on {path}"))
    except PermissionError:
        raise SystemExit(fail(f"permission denied on {path}"))
    except (socket.timeout, TimeoutError):
        raise SystemExit(fail(f"the master did not answer on {path} within {timeout:.0f}s"))
    except (ChannelClosed, OSError) as exc:
        raise SystemExit(fail(f"control socket {path}: {exc}"))


def cmd_status(args) -> int:
    reply = _control_request(args, {"type": "status"})
    if reply.get("type") != "status":
        return fail(str(reply.get("error", "unexpected reply")))
    status = reply.get("status")
    problem = _status_problem(status)
    if problem:
        return fail(f"the master sent a malformed status ({problem})")
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    m = status["master"]
    print(f"baton {status['version']}  state {status['state']}  runtime dir {status['runtime_dir']}")
    if isinstance(status.get("keeper"), dict) and isinstance(status["keeper"].get("pid"), int):
        print(f"keeper  pid {status['keeper']['pid']}  (the process `baton run` started; it "
              "stays across reloads)")
    print(f"master  pid {m['pid']}  generation {m['generation']}  uptime {m['uptime_s']:.0f}s  "
          f"rss {m['rss_bytes'] / 1048576:.1f} MiB  cpu {m['cpu_percent']:.1f}%")
    print(f"{'worker':>6} {'pid':>8} {'gen':>4} {'state':>10} {'uptime':>8} {'conns':>7} "
          f"{'rss MiB':>8} {'cpu %':>6} {'restarts':>8}")
    for w in status["workers"]:
        print(f"{w['id']:>6} {w['pid'] or '-':>8} {w['generation']:>4} {w['state']:>10} "
              f"{w['uptime_s']:>7.0f}s {w['connections']:>7} {w['rss_bytes'] / 1048576:>8.1f} "
              f"{w['cpu_percent']:>6.1f} {w['restarts']:>8}")
    for w in status["workers"]:
        if isinstance(w.get("retry_in_s"), (int, float)):
            print(f"worker {w['id']} is crash-looping: tried again in {w['retry_in_s']:.0f}s")
    return EXIT_OK


_STATUS_FIELDS = {"version": str, "state": str, "runtime_dir": str, "master": dict, "workers": list}
_MASTER_FIELDS = {"pid": int, "generation": int, "uptime_s": (int, float), "rss_bytes": int,
                  "cpu_percent": (int, float)}
_WORKER_FIELDS = {"id": int, "generation": int, "state": str, "uptime_s": (int, float),
                  "connections": int, "rss_bytes": int, "cpu_percent": (int, float), "restarts": int}


def _status_problem(status) -> str | None:
    """What is wrong with a status object, or None: the printing below may trust it then."""
    def check(obj, fields, where):
        if not isinstance(obj, dict):
            return f"{where} is not an object"
        for key, kind in fields.items():
            if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
                return f"{where}.{key} is missing or not a {getattr(kind, '__name__', 'number')}"
        return None
    problem = check(status, _STATUS_FIELDS, "status") or check(status["master"], _MASTER_FIELDS, "master")
    if problem:
        return problem
    for i, worker in enumerate(status["workers"]):
        problem = check(worker, _WORKER_FIELDS, f"workers[{i}]")
        if problem:
            return problem
        if worker.get("pid") is not None and not isinstance(worker["pid"], int):
            return f"workers[{i}].pid is not a number"
    return None


def cmd_stop(args) -> int:
    reply = _control_request(args, {"type": "stop", "fast": args.fast})
    if reply.get("type") != "ok":
        return fail(reply.get("error", "unexpected reply"))
    print("stopping" + (" (fast)" if args.fast else " (draining)"))
    return EXIT_OK


def _config_dump(path: str, snapshot: dict) -> dict:
    """Envoy's /config_dump shape: the bootstrap as loaded, then the static resources."""
    from ..xds.bootstrap import read_document
    from ..xds.tls import redact
    raw = redact(read_document(path))      # TLS private keys show as "[redacted]", as in Envoy
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    listeners = raw.get("static_resources", {}).get("listeners", [])
    clusters = raw.get("static_resources", {}).get("clusters", [])
    secrets = raw.get("static_resources", {}).get("secrets", [])
    secrets_dump = [{"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                     "static_secrets": [{"name": s.get("name", ""), "last_updated": now, "secret": {
                         "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                         **s}} for s in secrets]}] if secrets else []
    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
         "bootstrap": raw, "last_updated": now},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": snapshot["version"],
         "static_clusters": [{"cluster": c, "last_updated": now} for c in clusters]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": snapshot["version"],
         "static_listeners": [{"listener": l, "last_updated": now} for l in listeners]},
        *secrets_dump,                      # static_resources.secrets, private keys redacted
    ]}


class StartError(Exception):
    """Baton cannot start; .lines are printed one per line (and sent to the old master)."""

    def __init__(self, *lines: str):
        self.lines = list(lines)
        super().__init__("; ".join(lines))


def _load(args):
    """Config file -> (as configured, with DNS resolved, /config_dump), or StartError."""
    from ..xds.bootstrap import ConfigError, load_bootstrap
    from . import dns
    from .handoff.broker import access_log_problems
    try:
        source = load_bootstrap(args.config)
        config_dump = _config_dump(args.config, source)
    except ConfigError as exc:
        raise StartError(*exc.errors) from None
    problems = access_log_problems(source)
    if problems:
        raise StartError(*problems)
    for warning in source.get("warnings", ()):
        print(f"baton: warning: {warning}", file=sys.stderr)
    try:
        snapshot = dns.resolve_snapshot(source)
    except dns.ResolveError as exc:
        raise StartError(str(exc)) from None
    return source, snapshot, config_dump


def _with_dynamic(snapshot: dict, runtime_dir: str, reloading: bool):
    """A bootstrap with dynamic_resources. A reload starts from the dynamic config the
    running generation serves (its listeners must be known before their sockets are taken
    over); a fresh start asks the control plane from scratch, as Envoy does.
    -> (the snapshot to start with, that dynamic config or None)"""
    from ..xds.merge import merge
    from . import xds_link
    if not reloading:
        xds_link.forget_state(runtime_dir)
        return snapshot, None
    applied = xds_link.load_applied(runtime_dir)
    if applied is None:
        return snapshot, None
    merged = merge(snapshot, applied)
    seen = {}
    for spec in merged["listeners"]:
        key = (spec["address"], spec["port"])
        if key in seen:         # the new bootstrap took a dynamic listener's address
            raise StartError(f"listener '{spec['name']}': {spec['address']}:{spec['port']} is "
                             f"also listener '{seen[key]}' of the new bootstrap")
        seen[key] = spec["name"]
    merged["runtime"] = snapshot.get("runtime")
    return merged, applied


def _bind_fresh(snapshot: dict, runtime_dir: str):
    """A first start: bind every socket ourselves. (listeners, admin, control)"""
    from . import runtime
    from .control import ControlInUse, bind_control_socket
    from ..worker.tls import tickets
    from .listeners import BindError, bind_all, bind_listener
    tickets.adopt_seed(None)                    # a new lineage: new TLS ticket keys
    try:
        control_sock = bind_control_socket(runtime.control_path(runtime_dir))
    except ControlInUse as exc:
        raise StartError(str(exc)) from None
    except OSError as exc:
        raise StartError(f"control socket: {exc.strerror}") from None
    try:
        listener_socks = bind_all(snapshot["listeners"])
        admin_sock = None
        if snapshot.get("admin"):
            admin = snapshot["admin"]
            admin_sock = bind_listener({"name": "admin", "address": admin["address"],
                                        "port": admin["port"], "reuse_port": False})
    except BindError as exc:
        control_sock.close()
        os.unlink(runtime.control_path(runtime_dir))
        raise StartError(str(exc)) from None
    return listener_socks, admin_sock, control_sock


def _bind_taken_over(snapshot: dict, takeover):
    """A reload: reuse the previous generation's sockets where the address is the same, bind
    the rest. No socket is ever bound twice, so no accept queue is lost."""
    from ..worker.tls import tickets
    from .listeners import BindError, bind_listener, listener_key
    taken = takeover.take_sockets()
    tickets.adopt_seed(taken["ticket_seed"])    # before any worker is forked
    listener_socks = {}
    try:
        for spec in snapshot["listeners"]:
            if spec.get("bind_to_port") is False:     # no socket (use_original_dst target)
                continue
            sock = taken["listeners"].pop(listener_key(spec), None)
            listener_socks[spec["name"]] = sock if sock is not None else bind_listener(spec)
        admin_sock = None
        if snapshot.get("admin"):
            admin = snapshot["admin"]
            if taken["admin"] is not None and taken["admin"][0] == (admin["address"], admin["port"]):
                admin_sock = taken["admin"][1]
                taken["admin"] = None
            else:
                admin_sock = bind_listener({"name": "admin", "address": admin["address"],
                                            "port": admin["port"], "reuse_port": False})
    except BindError as exc:
        raise StartError(str(exc)) from None
    finally:
        # Listeners the new config dropped: the old generation still holds them until it exits.
        for sock in taken["listeners"].values():
            sock.close()
        if taken["admin"] is not None:
            taken["admin"][1].close()
    if taken["control"] is None:
        raise StartError("the previous generation sent no control socket")
    return listener_socks, admin_sock, taken["control"]


def cmd_run(args) -> int:
    from . import keeper
    if keeper.wanted(os.environ):
        # The pid our parent started stays Baton across reloads (supervisor/keeper.py).
        code = keeper.start()
        if code is not None:
            return code
    from . import logs
    logs.setup(args.log_level)
    _raise_fd_limit()
    from . import runtime
    from .upgrade import ENV_GENERATION, ENV_HANDOFF, ReloadFailed, Takeover

    handoff_path = os.environ.pop(ENV_HANDOFF, None)
    generation = int(os.environ.pop(ENV_GENERATION, "1"))
    os.environ.pop("BATON_PREVIOUS_PID", None)
    takeover = None
    if handoff_path:
        try:
            takeover = Takeover(handoff_path, generation, args.reload_timeout)
        except (OSError, ReloadFailed) as exc:
            return fail(f"cannot reach the running generation on {handoff_path}: {exc}")
    try:
        if args.concurrency is None:
            args.concurrency = len(os.sched_getaffinity(0))
        if args.concurrency < 1:
            raise StartError("--concurrency must be at least 1")
        if args.drain_timeout < 0:
            raise StartError("--drain-timeout must not be negative")
        worker_user = _worker_user(args.worker_user)
        intercept = None
        if args.intercept:
            from ..tproxy.config import InterceptConfigError
            try:
                intercept = intercept_cli.config_from_args(args)
            except InterceptConfigError as exc:
                raise StartError(f"intercept: {exc}") from None
            if not args.upstream_mark:
                # Baton's own upstream connections must not be captured again.
                args.upstream_mark = intercept.proxy_mark
        source, snapshot, config_dump = _load(args)
        from ..worker.privileges import caps_for
        snapshot["runtime"] = {
            "upstream_mark": args.upstream_mark, "worker_user": worker_user,
            # None: keep what the master has (workers explicitly left as root).
            "worker_caps": None if _stays_root(worker_user) else list(caps_for(args.upstream_mark)),
            # Which worker reads each UDP listener (worker/proxy/udp_proxy.py).
            "concurrency": args.concurrency,
            # Its workers may move connections to ours (worker/migration.py checks pids).
            **_previous_master(takeover)}
        try:
            runtime_dir = runtime.prepare(runtime.resolve(args.runtime_dir),
                                          worker_user[0] if worker_user else None)
        except runtime.RuntimeDirError as exc:
            raise StartError(str(exc)) from None
        if worker_user and os.geteuid() == 0:
            # Compiled Wasm modules: a directory the workers and the xDS agent share.
            from ..worker.wasm.cache import share_with
            share_with(*worker_user)
        static_snapshot, xds_applied = snapshot, None
        if snapshot.get("xds"):
            snapshot, xds_applied = _with_dynamic(snapshot, runtime_dir, takeover is not None)
        if takeover is None:
            listener_socks, admin_sock, control_sock = _bind_fresh(snapshot, runtime_dir)
        else:
            listener_socks, admin_sock, control_sock = _bind_taken_over(snapshot, takeover)
    except (StartError, ReloadFailed, OSError) as exc:
        lines = exc.lines if isinstance(exc, StartError) else [str(exc)]
        for line in lines:
            print(f"baton: {line}", file=sys.stderr)
        if takeover is not None:
            takeover.fail("; ".join(lines))
        return EXIT_ERROR

    import prctl
    import uvloop
    from .master import Master
    prctl.set_name("baton: master")
    prctl.set_proctitle("baton: master")
    keeper_pid = int(os.environ.get(keeper.ENV_KEEPER) or 0) or None
    keeper.arm(keeper_pid)
    master = Master(args, source, snapshot, config_dump, listener_socks, runtime_dir,
                    generation=generation, takeover=takeover, intercept=intercept,
                    static_snapshot=static_snapshot, xds_applied=xds_applied, keeper_pid=keeper_pid)
    master.control_sock = control_sock
    master.admin_sock = admin_sock
    pid_file = runtime.write_pid_file(runtime_dir, os.getpid())
    try:
        code = uvloop.run(_run_then_mute(master))
    finally:
        master.remove_intercept()
        if pid_file is not None:
            _remove_own_pid_file(pid_file)
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> None:
    """End the master now that everything it owns is closed, handed over or removed: flush
    the log and stdio and leave, skipping the interpreter's teardown. That teardown frees,
    module by module, a heap holding every worker module (preimported before the first fork:
    protobuf descriptors, cryptography, h2...): 0.1-0.28 s of CPU after "master exiting" on a
    quiet machine, 0.75-1.2 s in the test suite, while a supervisor sees two masters and a
    rollback waits. It does nothing the kernel does not do at exit: sockets and fds close,
    memory goes. Workers leave the same way (OsSeam.fork). The other atexit handlers a master
    has serve that teardown only: the Wasm engine's early free (worker/wasm/vm.py; a full
    gc.collect(), ~80 ms here, in a master whose bootstrap has a Wasm filter) and the default
    executor's join, which uvloop.run has done."""
    import logging
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


async def _run_then_mute(master) -> int:
    """The master's run, then its stop signals blocked: once it is done, a second Ctrl-C (or
    the same SIGINT forwarded by the keeper) must not turn a clean exit into a
    KeyboardInterrupt when the loop gives the default handlers back."""
    import signal
    try:
        return await master.run()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _worker_user(spec: str | None):
    """(uid, gid) the workers run as, or None for the master's own uid. As root, workers
    never keep root unless asked (`--worker-user root`): the default is the dedicated user
    that `make run` and the systemd unit create."""
    from ..worker.privileges import DEFAULT_USER, PrivilegeError, resolve_user
    if os.geteuid() != 0:
        if spec:
            raise StartError("--worker-user needs the master to run as root")
        return None
    try:
        user = resolve_user(spec or DEFAULT_USER)
    except PrivilegeError as exc:
        if spec:
            raise StartError(f"--worker-user: {exc}") from None
        raise StartError(f"workers run as user '{DEFAULT_USER}' when baton starts as root, and "
                         f"there is none: create it (useradd --system --no-create-home --shell "
                         f"/usr/sbin/nologin {DEFAULT_USER}, as `make run` does) or pass "
                         "--worker-user USER") from None
    return None if user[0] == 0 else user


def _previous_master(takeover) -> dict:
    """The previous generation's master, for our workers' handoff sockets: its pid, and a
    pidfd opened now, while it is certainly alive (it just answered our hello), so that its
    pid is not trusted once it has exited and may be reused."""
    pid = takeover.previous_pid if takeover is not None else None
    if not isinstance(pid, int) or pid <= 0:
        return {"previous_master": None, "previous_master_pidfd": None}
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return {"previous_master": None, "previous_master_pidfd": None}
    return {"previous_master": pid, "previous_master_pidfd": pidfd}


def _stays_root(worker_user) -> bool:
    return worker_user is None and os.geteuid() == 0


def _raise_fd_limit() -> None:
    """Two descriptors per proxied connection: take the hard limit, as nginx's
    worker_rlimit_nofile would, so the soft default (often 1024) is not the connection cap."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _remove_own_pid_file(path: str) -> None:
    """Only if it still names us: after a reload it names the next generation."""
    try:
        with open(path) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


def cmd_recycle(args) -> int:
    reply = _control_request(args, {"type": "recycle", "worker": args.worker}, timeout=120)
    if reply.get("type") != "ok":
        return fail(f"recycle failed: {reply.get('error', 'unexpected reply')}")
    print(f"worker {reply['worker']} recycled: pid {reply['old_pid']} -> {reply['new_pid']}, "
          f"{reply['moved']} connection(s) moved, {reply['kept']} draining in place")
    return EXIT_OK


def cmd_reload(args) -> int:
    # The master answers once the outcome is known; its --reload-timeout bounds that.
    reply = _control_request(args, {"type": "reload"}, timeout=args.timeout)
    if reply.get("type") != "ok":
        return fail(f"reload failed, the running generation serves on: {reply.get('error', 'unexpected reply')}")
    print(f"reloaded: generation {reply['generation']} (pid {reply['pid']}) serves; "
          "the previous generation is moving its connections over")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "stop": cmd_stop,
            "reload": cmd_reload, "recycle": cmd_recycle, "intercept": intercept_cli.run,
            "version": cmd_version}

if __name__ == "__main__":
    sys.exit(main())
