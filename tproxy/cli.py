"""`baton intercept apply|remove|show|update-set`: transparent capture rules for this host.

Wiring (supervisor/cli.py):
    from ..tproxy import cli as intercept_cli
    intercept_cli.add_parser(sub)
    COMMANDS["intercept"] = intercept_cli.run

`baton run` can call apply_for_run(config) at start and remove_for_run() at stop; the flags can
be added to another parser with add_config_arguments() and read back with config_from_args().

Also runnable alone: `python -m baton.tproxy.cli intercept apply ...`.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._exec import InterceptError
from .config import InterceptConfig, InterceptConfigError
from .routing import RoutingError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# (dest, flags, metavar/kwargs, help); defaults live in InterceptConfig, argparse keeps None
_CONFIG_FLAGS = [
    ("mode", ["-m", "--inbound-interception-mode", "--istio-inbound-interception-mode", "--mode"],
     dict(metavar="REDIRECT|TPROXY"), "how traffic is captured (default REDIRECT)"),
    ("proxy_port", ["-p", "--proxy-port", "--envoy-port"], dict(metavar="PORT"),
     "port outbound TCP is captured to (default 15001)"),
    ("inbound_capture_port", ["-z", "--inbound-capture-port"], dict(metavar="PORT"),
     "port inbound TCP is captured to (default 15006)"),
    ("proxy_uid", ["-u", "--proxy-uid"], dict(metavar="UIDS"),
     "users whose traffic is never captured: Baton's own (comma-separated, names or numbers)"),
    ("proxy_gid", ["-g", "--proxy-gid"], dict(metavar="GIDS"),
     "groups whose traffic is never captured"),
    ("default_policy", ["--default-policy"], dict(metavar="allow|deny"),
     "allow: capture everything not excluded (-i and -b default to '*'); deny: capture only "
     "what -i/-q/-b list (default allow)"),
    ("outbound_ip_ranges_include", ["-i", "--outbound-ip-ranges-include", "--istio-service-cidr"],
     dict(metavar="CIDRS"), "destinations captured outbound, '*' = all ('' = none)"),
    ("outbound_ip_ranges_exclude", ["-x", "--outbound-ip-ranges-exclude",
                                    "--istio-service-exclude-cidr"], dict(metavar="CIDRS"),
     "destinations never captured outbound"),
    ("outbound_ports_include", ["-q", "--outbound-ports-include", "--istio-outbound-ports"],
     dict(metavar="PORTS"), "destination ports captured outbound whatever the address"),
    ("outbound_ports_exclude", ["-o", "--outbound-ports-exclude",
                                "--istio-local-outbound-ports-exclude"], dict(metavar="PORTS"),
     "destination ports never captured outbound"),
    ("inbound_ports_include", ["-b", "--inbound-ports-include", "--istio-inbound-ports"],
     dict(metavar="PORTS"), "local ports captured inbound, '*' = all ('' = none)"),
    ("inbound_ports_exclude", ["-d", "--inbound-ports-exclude", "--istio-local-exclude-ports"],
     dict(metavar="PORTS"), "local ports never captured inbound (default 22 under "
     "--default-policy allow, so SSH stays reachable; '' captures it too)"),
    ("tproxy_mark", ["-t", "--inbound-tproxy-mark", "--istio-inbound-tproxy-mark"],
     dict(metavar="MARK"), "TPROXY fwmark (default 1337)"),
    ("tproxy_route_table", ["-r", "--inbound-tproxy-route-table",
                            "--istio-inbound-tproxy-route-table"], dict(metavar="TABLE"),
     "TPROXY routing table (default 133)"),
    ("tproxy_rule_priority", ["--tproxy-rule-priority"], dict(metavar="PREF"),
     "priority of the TPROXY fwmark ip rule (default 100)"),
    ("proxy_mark", ["--proxy-mark"], dict(metavar="MARK"),
     "SO_MARK on Baton's upstream sockets, never captured; must not share bits with the TPROXY "
     "mark (default 0x1000)"),
    ("backend", ["--backend"], dict(metavar="nft|iptables"),
     "nft (default), iptables (the system's iptables-restore), iptables-nft or iptables-legacy"),
]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    for dest, flags, kwargs, help_text in _CONFIG_FLAGS:
        parser.add_argument(*flags, dest=dest, default=None, help=help_text, **kwargs)
    parser.add_argument("--ipv6", dest="ipv6", action=argparse.BooleanOptionalAction, default=None,
                        help="capture IPv6 too (default on)")


def config_from_args(args: argparse.Namespace) -> InterceptConfig:
    values = {}
    for dest, *_ in _CONFIG_FLAGS:
        v = getattr(args, dest, None)
        if v is not None:
            values[dest] = v
    if getattr(args, "ipv6", None) is not None:
        values["ipv6"] = args.ipv6
    return InterceptConfig.from_mapping(values)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("intercept", help="install or remove transparent capture rules "
                              "(nftables or iptables, TPROXY policy routing)")
    sub = p.add_subparsers(dest="intercept_command", metavar="ACTION")
    apply_p = sub.add_parser("apply", help="install the capture rules (replaces any left before)")
    add_config_arguments(apply_p)
    apply_p.add_argument("-n", "--dry-run", action="store_true",
                         help="print the rules that would be applied and change nothing")
    sub.add_parser("remove", help="remove everything `apply` installed (any backend, any mode)")
    show = sub.add_parser("show", help="print the installed rules, sets and policy routing")
    show.add_argument("--terse", action="store_true", help="omit set elements")
    upd = sub.add_parser("update-set", help="add or delete addresses/ports of one list in place, "
                         "without reloading the rules")
    upd.add_argument("set", metavar="LIST", help="outbound-ip-ranges-include, "
                     "outbound-ip-ranges-exclude, outbound-ports-include, outbound-ports-exclude, "
                     "inbound-ports-include or inbound-ports-exclude")
    upd.add_argument("--add", action="append", default=[], metavar="VALUES")
    upd.add_argument("--remove", action="append", default=[], metavar="VALUES")
    return p


def _fail(message: str) -> int:
    print(f"baton: intercept: {message}", file=sys.stderr)
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "intercept_command", None)
    if action is None:
        print("usage: baton intercept {apply,remove,show,update-set} ... (see --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return {"apply": _cmd_apply, "remove": _cmd_remove, "show": _cmd_show,
                "update-set": _cmd_update}[action](args)
    except (InterceptConfigError, InterceptError, RoutingError) as exc:
        return _fail(str(exc))
    except PermissionError as exc:
        return _fail(f"permission denied ({exc.strerror or exc}); run as root or with CAP_NET_ADMIN")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        return _fail(f"internal error: {exc.__class__.__name__}: {exc}")


def _cmd_apply(args) -> int:
    cfg = config_from_args(args)
    if args.dry_run:
        print(render(cfg), end="")
        return EXIT_OK
    print(apply_for_run(cfg))
    return EXIT_OK


def render(cfg: InterceptConfig) -> str:
    """The text apply would load (nft, or ipset + iptables-restore per family)."""
    from . import iptables, rules
    cfg = cfg.normalized()
    if cfg.backend == "nft":
        return rules.render_nft(cfg)
    parts = ["# ipset restore", iptables.render_ipset(cfg)]
    for version in (4, 6) if cfg.ipv6 else (4,):
        parts += [f"# ip{'6' if version == 6 else ''}tables-restore --noflush",
                  iptables.render_restore(cfg, version)]
    return "\n".join(parts)


def _cmd_remove(args) -> int:
    print(remove_for_run())
    return EXIT_OK


def _cmd_show(args) -> int:
    from . import intercept
    text = intercept.show(terse=args.terse)
    print(text if text else "no interception rules are applied")
    return EXIT_OK


def _cmd_update(args) -> int:
    from . import intercept
    result = intercept.update_set(args.set, args.add, args.remove)
    print(f"intercept: {args.set}: +{result['added']} -{result['removed']} "
          f"({result['backend']}, {result['seconds'] * 1000:.1f} ms, rules untouched)")
    return EXIT_OK


def apply_for_run(config: InterceptConfig) -> str:
    """Install the rules for config (replacing whatever Baton left before); returns one line
    saying what was done. Raises InterceptConfigError / InterceptError / RoutingError, whose
    str() is one line."""
    from . import intercept
    t0 = time.monotonic()
    result = intercept.apply(config)
    cfg = result["config"]
    where = ("nft table inet baton" if cfg.backend == "nft"
             else f"{cfg.backend} BATON_* chains + baton_* ipsets")
    return (f"intercept: applied {where} in {(time.monotonic() - t0) * 1000:.0f} ms: "
            f"{cfg.summary()}")


def remove_for_run() -> str:
    """Remove everything Baton installed (any backend or mode); returns one line."""
    from . import intercept
    done = intercept.describe_removal(intercept.remove())
    return f"intercept: removed {done}" if done else "intercept: nothing to remove"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="baton")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_parser(sub)
    args = parser.parse_args(argv)
    if args.command != "intercept":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
