"""Dropping a worker to an unprivileged user that keeps only the capabilities it needs.

A worker needs CAP_NET_ADMIN (SO_MARK on upstream sockets, IP_TRANSPARENT) and
CAP_NET_BIND_SERVICE; nothing else. The master keeps root: it binds listeners, writes rules
and forks. The order of the steps matters (proven on this kernel, see the tproxy recipe):
bounding set first (needs CAP_SETPCAP), effective before permitted (capset refuses an
effective set larger than permitted), setuid while CAP_SETUID is still effective, ambient
capabilities last (python-prctl has no API for them: ctypes) so they survive an exec.

After the switch this process may not be able to read the interpreter's files (a Python under
a 0700 home): everything a worker imports lazily is imported here first.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd

KEEP = ("net_admin", "net_bind_service")
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2


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


def _preimport() -> None:
    # Modules that uvloop, socket and asyncio load on first use (hostnames need idna).
    import asyncio.base_events  # noqa: F401
    import asyncio.selector_events  # noqa: F401
    import encodings.ascii  # noqa: F401
    import encodings.idna  # noqa: F401
    import encodings.latin_1  # noqa: F401
    import encodings.utf_8  # noqa: F401


def drop_to(uid: int, gid: int, caps=KEEP) -> None:
    import prctl
    _preimport()
    keep = [getattr(prctl, "CAP_" + c.upper()) for c in caps]
    transit = keep + [prctl.CAP_SETUID, prctl.CAP_SETGID]
    prctl.set_keepcaps(True)
    for cap in range(prctl.CAP_LAST_CAP + 1):
        if cap not in keep:
            prctl.capbset_drop(cap)
    prctl.cap_effective.limit(*transit)
    prctl.cap_permitted.limit(*transit)
    prctl.cap_inheritable.limit(*keep)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)           # clears effective, keeps permitted (keepcaps)
    prctl.cap_permitted.setuid = False
    prctl.cap_permitted.setgid = False
    libc = ctypes.CDLL(None, use_errno=True)
    for cap_name, cap in zip(caps, keep):
        setattr(prctl.cap_effective, cap_name, True)
        setattr(prctl.cap_inheritable, cap_name, True)
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            err = ctypes.get_errno()
            raise PrivilegeError(f"cannot raise ambient {cap_name}: {os.strerror(err)}")
    prctl.set_keepcaps(False)
    prctl.set_no_new_privs(True)
