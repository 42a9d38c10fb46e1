"""Resource exhaustion (issue 13 point 4): a full runtime filesystem, a crash loop, and a
worker out of descriptors. The master never exits while it could serve; workers come back.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from .clients import roundtrip
from .conftest import free_port, pid_alive, tcp_bootstrap, wait_until


def _slot_replaced(b, slot: int, old_pid: int):
    def check():
        w = b.status()["workers"][slot]
        return w["pid"] not in (None, old_pid) and w["state"] == "ready" and w
    return check


def _fill(directory: Path) -> list[Path]:
    """Use up every block and every inode of the filesystem at `directory` (bounded)."""
    made = []
    filler = directory / "filler"
    made.append(filler)
    with open(filler, "wb", buffering=0) as f:
        try:
            for _ in range(4096):                 # 16 MiB at most; the tmpfs is far smaller
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for i in range(10000):
        path = directory / f"inode-{i}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        made.append(path)
    return made


@pytest.fixture
def small_tmpfs():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="baton-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k,nr_inodes=64,mode=0700", "tmpfs",
                    str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)
        os.rmdir(mountpoint)


def test_a_worker_respawns_and_serves_when_the_runtime_filesystem_is_full(baton, upstreams, small_tmpfs):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, runtime_dir=small_tmpfs)
    try:
        made = _fill(small_tmpfs)
        with pytest.raises(OSError) as full:
            (small_tmpfs / "one-more").write_bytes(b"x")
        assert full.value.errno == errno.ENOSPC
        old = b.status()["workers"][0]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(_slot_replaced(b, 0, old), 20, "the worker to respawn on a full disk")
        assert roundtrip(port, b"full disk") == b"full disk"
        result = b.cli("recycle", "--worker", "0")          # a fresh worker needs no disk either
        assert result.returncode == 0, result.stderr
        assert roundtrip(port, b"recycled") == b"recycled"
        result = b.reload()             # the next master needs handoff.sock: refused, one line
        assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
        assert roundtrip(port, b"serves on") == b"serves on"
        assert pid_alive(b.proc.pid)
        for path in made:
            path.unlink()
        assert roundtrip(port, b"space again") == b"space again"
    finally:
        b.stop()


def test_a_crash_looping_slot_is_tried_again_and_the_master_stays(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    for death in range(5):
        pid = b.status()["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        if death < 4:
            wait_until(_slot_replaced(b, 0, pid), 20, "respawn %d" % death)
    looping = wait_until(lambda: (w := b.status()["workers"][0])["state"] == "given_up" and w, 10,
                         "the crash loop")
    assert "worker 0 is crash-looping" in b.log
    assert 0 < looping["retry_in_s"] <= 60
    human = b.cli("status")
    assert human.returncode == 0 and "worker 0 is crash-looping: tried again in" in human.stdout
    assert pid_alive(b.proc.pid)                            # its only worker is gone; it stays
    back = wait_until(_slot_replaced(b, 0, pid), 30, "the slot to be tried again")
    assert "retry_in_s" not in back
    assert roundtrip(port, b"back") == b"back"
    status, _ = b.admin("/ready")
    assert status == 200


def test_a_worker_out_of_descriptors_pauses_accepting_and_recovers(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    assert roundtrip(port, b"warm") == b"warm"
    [pid] = b.worker_pids()
    limit = psutil.Process(pid).num_fds() + 4      # room for about one proxied connection
    _soft_nofile_as_worker(pid, limit)
    clients = []
    try:
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
        wait_until(lambda: "Too many open files" in b.log, 10, "accept to hit EMFILE")
        assert pid_alive(pid)
    finally:
        for c in clients:
            c.close()
    _soft_nofile_as_worker(pid, None)
    assert wait_until(lambda: _roundtrip_or_none(port) == b"recovered", 20, "accepting again")
    status = b.status()
    assert status["workers"][0]["pid"] == pid and status["workers"][0]["restarts"] == 0


def _soft_nofile_as_worker(pid: int, soft: int | None) -> None:
    """Set the worker's soft RLIMIT_NOFILE (None: up to its hard limit) from a process of its
    own uid: root here may lack CAP_SYS_RESOURCE (a container), which another uid's limits need."""
    st = os.stat(f"/proc/{pid}")
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard if soft is None else soft, hard))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _roundtrip_or_none(port: int):
    try:
        return roundtrip(port, b"recovered")
    except OSError:
        return None
