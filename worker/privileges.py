"""Dropping a worker to an unprivileged user that keeps only the capabilities it needs.

Workers need no privilege at all: the master binds every listener (transparent ones too, with
IP_TRANSPARENT set at bind), writes interception rules and forks. The only exception is
SO_MARK on upstream sockets (`--upstream-mark`, set by `--intercept` too), which needs
CAP_NET_ADMIN; with a mark, workers keep the interception set `INTERCEPT_CAPS`. Accepting on
a transparent listener, SO_ORIGINAL_DST and connecting to an original destination need none.

So by default, when the master runs as root, workers run as `DEFAULT_USER` with no
capabilities (cli.py decides; `--worker-user` names another user). When the master itself is
unprivileged (systemd's DynamicUser with ambient capabilities), workers keep its uid and drop
the capabilities they do not need.

The order of the steps matters (proven on this kernel, see the tproxy recipe): bounding set
first (needs CAP_SETPCAP), effective before permitted (capset refuses an effective set larger
than permitted), setuid while CAP_SETUID is still effective, ambient capabilities last
(python-prctl has no API for them: ctypes) so they survive an exec.

After the switch this process may not be able to read the interpreter's files (a Python under
a 0700 home): everything a worker may import lazily is imported first (`preimport`, which
the master runs once before its first fork, so the modules are shared copy-on-write).
"""

from __future__ import annotations

import ctypes
import grp
import importlib
import logging
import os
import pkgutil
import pwd

log = logging.getLogger("baton.privileges")

DEFAULT_USER = "baton"
INTERCEPT_CAPS = ("net_admin", "net_bind_service")
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4


class PrivilegeError(Exception):
    pass


def resolve_user(spec: str) -> tuple[int, int]:
    """"user", "user:group", "uid" or "uid:gid" -> (uid, gid)."""
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            uid, gid = int(user), int(user)
        else:
            raise PrivilegeError(f"no such user: {user}") from None
    else:
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"no such group: {group}") from None
    return uid, gid


def caps_for(upstream_mark: int) -> tuple[str, ...]:
    return INTERCEPT_CAPS if upstream_mark else ()


# Lazily imported by the data path (HTTP/2 codecs, access logs, formatters, forwarding...) or
# by the modules it uses, outside the baton.worker package.
_LAZY = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto",
         "encodings.ascii", "encodings.idna", "encodings.latin_1", "encodings.utf_8",
         "encodings.utf_16_le", "encodings.utf_16_be",     # hessian2: strings beyond ASCII
         "encodings.unicode_escape", "encodings.raw_unicode_escape", "h2", "h2.connection",
         "h2.config", "h2.events", "h2.exceptions", "h2.settings", "hpack", "hpack.hpack",
         "json", "zlib", "hashlib", "uuid", "ipaddress", "email.utils", "http",
         "concurrent.futures.thread", "importlib.metadata", "prctl", "psutil",
         "baton.supervisor.handoff.broker")

_preimported = False


def preimport() -> None:
    """Import every module of the worker package and what they load lazily. Idempotent."""
    global _preimported
    if _preimported:
        return
    from .. import worker
    for name in _LAZY:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for info in pkgutil.walk_packages(worker.__path__, worker.__name__ + ".", onerror=lambda name: None):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - a module that cannot load fails where it is used
            log.warning("cannot preload %s: %s", info.name, exc)
    _preimported = True


def drop_to(user: tuple[int, int] | None, caps=INTERCEPT_CAPS) -> None:
    """Become `user` (uid, gid) if given, keeping exactly the capabilities named in `caps`.
    What the process will import later must be imported before (`preimport` for workers)."""
    import prctl
    caps = tuple(caps or ())
    keep = [getattr(prctl, "CAP_" + c.upper()) for c in caps]
    libc = ctypes.CDLL(None, use_errno=True)
    if user is not None:
        uid, gid = user
        transit = keep + [prctl.CAP_SETUID, prctl.CAP_SETGID]
        prctl.set_keepcaps(True)
        _drop_bounding(prctl, keep)
        prctl.cap_effective.limit(*transit)
        prctl.cap_permitted.limit(*transit)
        prctl.cap_inheritable.limit(*keep)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)           # clears effective, keeps permitted (keepcaps)
        prctl.cap_permitted.setuid = False
        prctl.cap_permitted.setgid = False
    else:
        if prctl.cap_effective.setpcap:
            _drop_bounding(prctl, keep)
        # Lowering our own sets needs no privilege; ambient ones must go first (the kernel
        # drops an ambient capability that is no longer permitted and inheritable anyway).
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        prctl.cap_effective.limit(*keep)
        prctl.cap_permitted.limit(*keep)
        prctl.cap_inheritable.limit(*keep)
    for cap_name, cap in zip(caps, keep):
        setattr(prctl.cap_effective, cap_name, True)
        setattr(prctl.cap_inheritable, cap_name, True)
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            err = ctypes.get_errno()
            raise PrivilegeError(f"cannot raise ambient {cap_name}: {os.strerror(err)}")
    prctl.set_keepcaps(False)
    prctl.set_no_new_privs(True)


def _drop_bounding(prctl, keep) -> None:
    for cap in range(prctl.CAP_LAST_CAP + 1):
        if cap not in keep:
            prctl.capbset_drop(cap)
