"""The pure parts of privilege separation and exhaustion handling (issue 13 points 3 and 4):
the runtime directory's ownership rules, the pid file, who a handoff socket trusts, the
master's connect broker, the status check of `baton status`, the crash-loop pause."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import stat
import types

import pytest

from baton.supervisor import runtime
from baton.supervisor.cli import _status_problem
from baton.supervisor.handoff import unix
from baton.supervisor.handoff.broker import (BrokerClient, BrokerServer, access_log_paths,
                                             access_log_problems)
from baton.supervisor.workers import CRASH_LOOP_PAUSE_MAX, WorkerSlot
from baton.worker.migration import MigrationServer
from tests.fd_accounting import collector_paused, open_fd_count

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


# -- the runtime directory -----------------------------------------------------------------

def test_prepare_creates_a_private_directory(tmp_path):
    path = runtime.prepare(str(tmp_path / "run"))
    st = os.stat(path)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def test_prepare_makes_an_existing_directory_private(tmp_path):
    (tmp_path / "run").mkdir(mode=0o755)
    runtime.prepare(str(tmp_path / "run"))
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700


@root_only
def test_prepare_refuses_a_directory_of_another_uid(tmp_path):
    (tmp_path / "run").mkdir()
    os.chown(tmp_path / "run", 65534, 65534)
    with pytest.raises(runtime.RuntimeDirError, match="belongs to uid 65534"):
        runtime.prepare(str(tmp_path / "run"))
    # Not even as the workers' directory of old, unless it is their uid.
    with pytest.raises(runtime.RuntimeDirError):
        runtime.prepare(str(tmp_path / "run"), worker_uid=12345)


@root_only
def test_prepare_takes_back_what_an_older_release_gave_the_worker_user(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "baton.pid").write_text("1\n")                  # the master's: kept
    planted = run / "control.sock"
    planted.write_text("not ours")
    os.chown(planted, 65534, 65534)
    os.symlink("/etc/passwd", run / "worker-1-0.sock")
    os.lchown(run / "worker-1-0.sock", 65534, 65534)
    os.chown(run, 65534, 65534)
    runtime.prepare(str(run), worker_uid=65534)
    st = os.stat(run)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(p.name for p in run.iterdir()) == ["baton.pid"]


def test_pid_file_is_replaced_never_written_through_a_link(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    os.symlink(target, tmp_path / runtime.PID_FILE)
    path = runtime.write_pid_file(str(tmp_path), 4242)
    assert path == str(tmp_path / runtime.PID_FILE)
    assert not os.path.islink(path) and open(path).read() == "4242\n"
    assert target.read_text() == "precious"


def test_pid_file_on_a_full_disk_is_a_warning(tmp_path, monkeypatch, caplog):
    real_write = os.write

    def full(fd, data):
        if fd > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    assert runtime.write_pid_file(str(tmp_path), 4242) is None
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []                  # no temporary file left behind
    assert "cannot write the pid file" in caplog.text


# -- who a handoff socket trusts -------------------------------------------------------------

def test_parent_pid_from_proc():
    assert unix.parent_pid(os.getpid()) == os.getppid()
    assert unix.parent_pid(2 ** 22 + 7) is None            # above pid_max: never a process


# A master that is no process: above pid_max, so no real pid or parent pid is ever it.
OTHER_MASTER = 2 ** 22 + 11


@pytest.mark.parametrize("peer,uid,trusted", [
    ("this process", 0, True),                # root: could ptrace the worker anyway
    ("the other master", 999, True),          # our master itself (it connects for workers)
    ("this process", 999, True),              # a child of a master (an older release's worker)
    ("a child of this process", 999, False),  # a process of that uid that is not ours
])
def test_handoff_trusts_masters_and_their_children(peer, uid, trusted):
    """The masters are this process's parent (whatever it is: PID 1 too, under a CI
    container's make) and one pid that no process has; a stranger is a child of this
    process, which is neither a master nor a master's child, whoever our parent is."""
    import subprocess
    server = types.SimpleNamespace(masters={OTHER_MASTER: None, os.getppid(): None})
    if peer != "a child of this process":
        pid = os.getpid() if peer == "this process" else OTHER_MASTER
        assert MigrationServer._trusted(server, pid, uid) is trusted
        return
    stranger = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        assert unix.parent_pid(stranger.pid) == os.getpid()
        assert MigrationServer._trusted(server, stranger.pid, uid) is trusted
    finally:
        stranger.stdin.close()
        stranger.wait(10)


def test_a_previous_master_that_exited_is_trusted_no_more():
    """Its pid may be reused by any process once it has exited: the pidfd tells."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    pidfd = os.pidfd_open(child.pid)
    try:
        masters = unix.trusted_masters({"previous_master": child.pid, "previous_master_pidfd": pidfd})
        assert masters == {os.getppid(): None, child.pid: pidfd}
        server = types.SimpleNamespace(masters=masters)
        assert MigrationServer._trusted(server, child.pid, 999)
        child.stdin.close()
        child.wait(10)
        assert unix.exited(pidfd)
        assert not MigrationServer._trusted(server, child.pid, 999)
        assert MigrationServer._trusted(server, os.getppid(), 999)       # our master still is
    finally:
        os.close(pidfd)
    assert unix.trusted_masters({"previous_master": 1234, "previous_master_pidfd": None}) == \
        {os.getppid(): None}


def test_abstract_names_are_unguessable():
    a, b = unix.abstract_name("worker-1-0"), unix.abstract_name("worker-1-0")
    assert a.startswith("\0baton-worker-1-0-") and a != b


# -- the master's connect broker ---------------------------------------------------------------

def test_broker_connects_only_to_migration_targets():
    async def scenario():
        target = unix.abstract_name("test-target")
        listener = unix.bind_abstract(target)
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server = BrokerServer(master_end, {target}.__contains__, name="broker under test")
        client = BrokerClient(worker_end)
        try:
            with pytest.raises(ConnectionError, match="not a migration target"):
                await client.connect("\0baton-elsewhere")
            with pytest.raises(ConnectionError, match="not a migration target"):
                await client.connect("/run/docker.sock")
            sock = await client.connect(target)
            loop = asyncio.get_running_loop()
            accepted, _ = await loop.sock_accept(listener)
            # The receiver sees the master's credentials, not the worker's.
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4] == \
                os.getpid().to_bytes(4, "little")
            sock.close()
            accepted.close()
        finally:
            server.close()
            client.channel.close()
            listener.close()
    asyncio.run(scenario())


def test_broker_opens_only_the_configured_access_logs(tmp_path):
    allowed = str(tmp_path / "access.log")
    config = {"listeners": [{"filter_chains": [{"http": {"access_log": [{"path": allowed}]}}]}]}
    assert access_log_paths(config) == {allowed}

    async def scenario():
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server = BrokerServer(master_end, set().__contains__, name="broker under test",
                              may_open=lambda path: path in access_log_paths(config))
        client = BrokerClient(worker_end)
        try:
            with pytest.raises(OSError, match="not an access log of the config"):
                await client.open_log("/etc/passwd")
            fd = await client.open_log(allowed)
            try:
                assert os.fstat(fd).st_uid == os.geteuid()
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY
                os.write(fd, b"line\n")
            finally:
                os.close(fd)
            assert (tmp_path / "access.log").read_bytes() == b"line\n"
        finally:
            server.close()
            client.channel.close()
    asyncio.run(scenario())


def test_access_log_problems_name_the_path(tmp_path):
    config = {"access_log": [{"path": str(tmp_path / "missing" / "a.log")},
                             {"path": str(tmp_path)}, {"path": "/dev/stdout"},
                             {"path": str(tmp_path / "fine.log")}]}
    assert access_log_problems(config) == [           # in the order of the paths
        f"access log {tmp_path}: is a directory",
        f"access log {tmp_path / 'missing' / 'a.log'}: cannot be opened: "
        f"no such directory {tmp_path / 'missing'}"]
    assert not (tmp_path / "fine.log").exists()       # checked, not created


# -- `baton status` and the crash-loop pause ---------------------------------------------------

GOOD = {"version": "1", "state": "LIVE", "runtime_dir": "/run/baton",
        "master": {"pid": 1, "generation": 1, "uptime_s": 1.5, "rss_bytes": 10, "cpu_percent": 0.0},
        "workers": [{"id": 0, "pid": None, "generation": 1, "state": "given_up", "uptime_s": 0,
                     "connections": 0, "rss_bytes": 0, "cpu_percent": 0.0, "restarts": 5}]}


def test_status_check_accepts_a_real_status():
    assert _status_problem(GOOD) is None


@pytest.mark.parametrize("status,problem", [
    (None, "status is not an object"),
    ({}, "status.version"),
    ({**GOOD, "master": []}, "status.master is missing or not a dict"),
    ({**GOOD, "master": {**GOOD["master"], "rss_bytes": "a lot"}}, "master.rss_bytes"),
    ({**GOOD, "workers": [7]}, "workers[0] is not an object"),
    ({**GOOD, "workers": [{**GOOD["workers"][0], "pid": "1"}]}, "workers[0].pid"),
    ({**GOOD, "workers": [{**GOOD["workers"][0], "connections": True}]}, "workers[0].connections"),
])
def test_status_check_names_what_is_wrong(status, problem):
    assert problem in _status_problem(status)


def test_crash_loop_pause_doubles_up_to_its_cap():
    slot = WorkerSlot(0)
    pauses = []
    for loops in range(1, 8):
        slot.crash_loops = loops
        pauses.append(slot.crash_loop_pause())
    assert pauses == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert pauses[-1] == CRASH_LOOP_PAUSE_MAX


def test_a_failed_fork_pauses_the_slot_and_tries_again(monkeypatch):
    """fork() failing (memory, processes) is transient: the slot is paused, not lost, and no
    descriptor leaks."""
    from baton.supervisor.workers import WorkerTable

    async def scenario():
        loop = asyncio.get_running_loop()
        master = types.SimpleNamespace(loop=loop, snapshot={})
        table = WorkerTable(master, 1)
        slot = table.slots[0]
        monkeypatch.setattr("baton.supervisor.workers.preimport", lambda: None)

        def no_fork():
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        monkeypatch.setattr(os, "fork", no_fork)
        with collector_paused():
            before = open_fd_count()
            table._respawn(slot)
            assert open_fd_count() == before
        assert slot.given_up and not slot.gone_for_good and not slot.alive
        assert slot.respawn_handle is not None and slot.retry_at is not None
        first = slot.retry_at - loop.time()
        slot.respawn_handle.cancel()
        table._respawn(slot)                    # fails again: the pause doubles
        assert slot.retry_at - loop.time() > first
        slot.respawn_handle.cancel()
    asyncio.run(scenario())


# -- what a worker imports before it drops privileges -----------------------------------------

def test_every_codec_the_data_path_names_is_preimported():
    """A worker that dropped to another uid cannot import from the interpreter's 0700
    directory, and Python imports a text codec's module at its first lookup: every codec the
    worker's code names in an encode/decode call must be in privileges._LAZY (a Dubbo string
    beyond ASCII once dropped its connection on utf-16-le)."""
    import codecs
    import pathlib
    import re

    from baton.worker import privileges
    package = pathlib.Path(privileges.__file__).parent
    names = set()
    for path in package.rglob("*.py"):
        names.update(re.findall(r"\.(?:en|de)code\(\s*\"([A-Za-z0-9_-]+)\"", path.read_text()))
    assert "utf-16-le" in names                       # the scan sees hessian2's
    modules = {f"encodings.{codecs.lookup(name).name.replace('-', '_')}" for name in names}
    modules = {m.replace("encodings.iso8859_1", "encodings.latin_1") for m in modules}
    assert modules <= set(privileges._LAZY), sorted(modules - set(privileges._LAZY))
