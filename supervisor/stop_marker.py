"""A deliberate stop, told to the generation that handed over to us.

After a reload the old master may still be draining connections that could not move (those
through an internal listener, say). If the new master exits meanwhile, the old one learns only
that it is gone: the new master is detached, not its child (supervisor/upgrade.py), so a pidfd
says "exited" and nothing about why. Taking every exit for a crash, the old generation served
again, so a service an operator had just stopped (`baton stop`, SIGTERM, SIGINT,
/drain_listeners) came back as its older generation.

So a master that stops on purpose while the generation before it still runs leaves a mark for
it first: an empty file in the runtime directory, named by its own generation and pid and by how
it stops (`stopped-<generation>-<pid>.<drain|stop>`). When its successor exits, the old master
looks for the mark (and removes it): found, it does not serve again; a fast stop also becomes
its own fast stop, a drain lets its own drain run to its end. Not found, the successor crashed,
and the old generation serves again as before.

Why a file, and an empty one: after the commit no channel is left between the two masters (the
new one closes the handoff connection as a matter of course), and a name needs an inode but no
data block, so a full tmpfs still takes it (issue 13's full-disk case). If even that fails, the
old generation serves again: of the two mistakes, serving when told to stop is the one that
loses nothing.

Versions: this is a contract between generations like the handoff protocol
(supervisor/handoff/protocol.py). Releases up to 0.2.0 neither leave nor read the mark, so with
one of them on either side the old behaviour stays: the old generation serves again.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("baton.master")

PREFIX = "stopped-"
# How a successor stopped, strongest first: a fast stop outranks a drain that preceded it.
KINDS = ("stop", "drain")


def _path(runtime_dir: str, generation: int, pid: int, kind: str) -> str:
    return os.path.join(runtime_dir, f"{PREFIX}{generation}-{pid}.{kind}")


def leave(runtime_dir: str, generation: int, pid: int, kind: str) -> bool:
    """Mark that the master `pid` of `generation` stops on purpose (`kind`: stop or drain)."""
    assert kind in KINDS, kind
    path = _path(runtime_dir, generation, pid, kind)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        return True
    except OSError as exc:
        log.warning("cannot tell the previous generation that this one stops on purpose "
                    "(%s: %s); it will serve again when this one has exited", path, exc.strerror)
        return False


def take(runtime_dir: str, generation: int, pid: int) -> str | None:
    """How the master `pid` of `generation` said it stops ("stop", "drain"), or None if it
    left no mark (it crashed, or is a release that leaves none). Its marks are removed."""
    found = None
    for kind in KINDS:
        path = _path(runtime_dir, generation, pid, kind)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc.strerror)
            if not os.path.lexists(path):
                continue
        found = found or kind
    return found


def sweep(runtime_dir: str) -> None:
    """Remove every mark (a fresh start: no earlier generation is left to read them)."""
    try:
        entries = [e for e in os.scandir(runtime_dir) if e.name.startswith(PREFIX)]
    except OSError:
        return
    for entry in entries:
        try:
            os.unlink(entry.path)
        except OSError:
            pass
