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

    sub.add_parser("version", help="print the version")
    return parser


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
    try:
        snapshot = load_bootstrap(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_ERROR
    for warning in snapshot.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    print("ok")
    return EXIT_OK


def _control_request(args, msg: dict, timeout: float = 10.0) -> dict:
    from .handoff.channel import ChannelClosed, blocking_request
    from .runtime import RuntimeDirError, control_path, resolve
    try:
        path = control_path(resolve(args.runtime_dir))
    except RuntimeDirError as exc:
        raise SystemExit(fail(str(exc)))
    try:
        return blocking_request(path, msg, timeout)
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
        return fail(reply.get("error", "unexpected reply"))
    status = reply["status"]
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    m = status["master"]
    print(f"baton {status['version']}  state {status['state']}  runtime dir {status['runtime_dir']}")
    print(f"master  pid {m['pid']}  generation {m['generation']}  uptime {m['uptime_s']:.0f}s  "
          f"rss {m['rss_bytes'] / 1048576:.1f} MiB  cpu {m['cpu_percent']:.1f}%")
    print(f"{'worker':>6} {'pid':>8} {'gen':>4} {'state':>10} {'uptime':>8} {'conns':>7} "
          f"{'rss MiB':>8} {'cpu %':>6} {'restarts':>8}")
    for w in status["workers"]:
        print(f"{w['id']:>6} {w['pid'] or '-':>8} {w['generation']:>4} {w['state']:>10} "
              f"{w['uptime_s']:>7.0f}s {w['connections']:>7} {w['rss_bytes'] / 1048576:>8.1f} "
              f"{w['cpu_percent']:>6.1f} {w['restarts']:>8}")
    return EXIT_OK


def cmd_stop(args) -> int:
    reply = _control_request(args, {"type": "stop", "fast": args.fast})
    if reply.get("type") != "ok":
        return fail(reply.get("error", "unexpected reply"))
    print("stopping" + (" (fast)" if args.fast else " (draining)"))
    return EXIT_OK


def _config_dump(path: str, snapshot: dict) -> dict:
    """Envoy's /config_dump shape: the bootstrap as loaded, then the static resources."""
    from ..xds.bootstrap import read_document
    raw = read_document(path)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    listeners = raw.get("static_resources", {}).get("listeners", [])
    clusters = raw.get("static_resources", {}).get("clusters", [])
    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
         "bootstrap": raw, "last_updated": now},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": snapshot["version"],
         "static_clusters": [{"cluster": c, "last_updated": now} for c in clusters]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": snapshot["version"],
         "static_listeners": [{"listener": l, "last_updated": now} for l in listeners]},
    ]}


def cmd_run(args) -> int:
    from . import logs
    logs.setup(args.log_level)
    from ..xds.bootstrap import ConfigError, load_bootstrap
    from . import dns, runtime
    from .control import ControlInUse, bind_control_socket
    from .listeners import BindError, bind_all, bind_listener

    if args.concurrency is None:
        args.concurrency = len(os.sched_getaffinity(0))
    if args.concurrency < 1:
        return fail("--concurrency must be at least 1")
    if args.drain_timeout < 0:
        return fail("--drain-timeout must not be negative")
    try:
        source = load_bootstrap(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"baton: {line}", file=sys.stderr)
        return EXIT_ERROR
    for warning in source.get("warnings", ()):
        print(f"baton: warning: {warning}", file=sys.stderr)
    try:
        snapshot = dns.resolve_snapshot(source)
    except dns.ResolveError as exc:
        return fail(str(exc))
    try:
        runtime_dir = runtime.prepare(runtime.resolve(args.runtime_dir))
        control_sock = bind_control_socket(runtime.control_path(runtime_dir))
    except (runtime.RuntimeDirError, ControlInUse) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"control socket: {exc.strerror}")
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
        return fail(str(exc))

    import prctl
    import uvloop
    from .master import Master
    prctl.set_name("baton: master")
    prctl.set_proctitle("baton: master")
    try:
        config_dump = _config_dump(args.config, snapshot)
    except ConfigError as exc:      # the file changed under us since it was validated
        return fail("; ".join(exc.errors))
    master = Master(args, source, snapshot, config_dump, listener_socks, runtime_dir)
    master.control_sock = control_sock
    master.admin_sock = admin_sock
    pid_file = os.path.join(runtime_dir, runtime.PID_FILE)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        return uvloop.run(master.run())
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass


COMMANDS = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "stop": cmd_stop,
            "version": cmd_version}

if __name__ == "__main__":
    sys.exit(main())
