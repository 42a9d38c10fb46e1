"""Access-log files at run time (worker/proxy/http/access_log.py): lines batched and flushed
on a timer or a full buffer, a full pipe's rest kept, lines UTF-8 cannot encode, files shared,
reopened after rotation (directly or through the master), stdout. The access log's
translation is in test_http_filters.py, its formatting in test_formatter.py."""

import os
import sys
from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.access_log import AccessLog, AccessLogFile, AccessLogFiles
from baton.worker.proxy.http.stream_info import StreamInfo


def request(path="/"):
    return Request("GET", path, "example.com", Headers([]))


class FakeLoop:
    def __init__(self):
        self.calls = []

    def call_later(self, delay, callback):
        handle = SimpleNamespace(delay=delay, callback=callback, cancelled=False)
        handle.cancel = lambda: setattr(handle, "cancelled", True)
        self.calls.append(handle)
        return handle


def info_for_log():
    info = StreamInfo(request("/x"), 0.0, "HTTP/1.1", ("127.0.0.1", 1), ("127.0.0.1", 2))
    info.response_code = 200
    return info


def test_access_log_batches_and_flushes_on_the_timer(tmp_path):
    loop = FakeLoop()
    files = AccessLogFiles(loop)
    path = tmp_path / "access.log"
    log = AccessLog({"path": str(path), "format": "%RESPONSE_CODE% %REQ(:PATH)%\n",
                     "json_format": None, "omit_empty_values": False}, files)
    log.log(info_for_log())
    log.log(info_for_log())
    assert path.read_bytes() == b""              # buffered, no write per request
    assert len(loop.calls) == 1 and loop.calls[0].delay == 1.0
    loop.calls[0].callback()
    assert path.read_text() == "200 /x\n200 /x\n"
    files.close()


def test_access_log_flushes_when_the_buffer_is_full(tmp_path):
    path = tmp_path / "a.log"
    f = AccessLogFile(str(path), loop=None, flush_bytes=100)
    for _ in range(9):
        f.write("0123456789\n")
    assert path.read_bytes() == b""
    f.write("0123456789\n")
    assert len(path.read_bytes()) == 110
    f.close()


def test_access_log_writes_a_line_with_surrogates_as_its_bytes_and_loses_no_other(tmp_path):
    """A batch is encoded once: a line UTF-8 cannot encode (a lone surrogate a Dubbo peer's
    CESU-8 left in a method name, hessian2.py) made every flush raise, so that batch and every
    later line of the worker's file were lost (review R1). Such a line is written as the bytes
    the peer sent, a header's raw byte (surrogateescape) as that byte, and the rest goes on."""
    path = tmp_path / "a.log"
    f = AccessLogFile(str(path), loop=None)
    f.write("before\n")
    f.write("dubbo method \ud800 header \udcff\n")
    f.write("after\n")
    f.flush()
    f.write("later\n")
    f.flush()
    assert path.read_bytes() == b"before\ndubbo method \xed\xa0\x80 header \xff\nafter\nlater\n"
    f.close()


def test_access_log_keeps_what_a_full_pipe_did_not_take(tmp_path):
    """Lines are kept as text and encoded per batch: a batch a non-blocking pipe takes only
    part of keeps its rest, written before the next lines, none lost or split (non-ASCII
    lines too: the buffer counts characters, the pipe takes bytes)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    f = AccessLogFile(str(tmp_path / "unused"), loop=None, flush_bytes=1 << 30)
    os.close(f.fd)
    f.fd = write_fd
    lines = [f"{i:06d} caf\u00e9 \udcff\n" for i in range(20000)]   # ~300 KB > a pipe
    for line in lines[:10000]:
        f.write(line)
    f.flush()                                   # the pipe fills: the rest is kept
    assert f.unwritten and f.pending_size == len(f.unwritten)
    got = bytearray()
    while True:
        try:
            got += os.read(read_fd, 1 << 20)
        except BlockingIOError:
            break
        if len(got) >= 65536:
            break
    for line in lines[10000:]:
        f.write(line)
    expected = "".join(lines).encode("utf-8", "surrogateescape")
    os.set_blocking(read_fd, False)
    for _ in range(10_000):                     # bounded: each turn drains a pipeful
        if len(got) >= len(expected):
            break
        f.flush()
        try:
            got += os.read(read_fd, 1 << 20)
        except BlockingIOError:
            pass
    assert bytes(got) == expected and f.dropped == 0
    f.close()
    os.close(read_fd)


def test_access_logs_share_a_file_and_append(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("before\n")
    files = AccessLogFiles()
    config = {"path": str(path), "format": "%RESPONSE_CODE%\n", "json_format": None}
    a, b = AccessLog(config, files), AccessLog({**config, "format": None,
                                                "json_format": {"c": "%RESPONSE_CODE%"}}, files)
    assert a.file is b.file
    a.log(info_for_log())
    b.log(info_for_log())
    files.flush()
    assert path.read_text() == 'before\n200\n{"c":200}\n'
    files.close()


def test_access_log_reopen_after_rotation(tmp_path):
    path = tmp_path / "a.log"
    files = AccessLogFiles()
    log = AccessLog({"path": str(path), "format": "%RESPONSE_CODE%\n"}, files)
    log.log(info_for_log())
    os.rename(path, tmp_path / "a.log.1")
    log.reopen()                                # flushes to the old file first
    log.log(info_for_log())
    files.flush()
    assert (tmp_path / "a.log.1").read_text() == "200\n"
    assert path.read_text() == "200\n"
    files.close()


def test_access_log_reopen_through_the_master_gives_what_to_wait_for(tmp_path):
    """A file the master opens for the worker comes back later: reopen() returns the tasks
    (the worker answers /reopen_logs once they are done), and a line logged after them goes
    to the new file, one logged while they ran to the old one."""
    import asyncio
    path = tmp_path / "a.log"

    async def opener(p):
        await asyncio.sleep(0)          # the master's answer, a turn of the loop later
        return os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def line(status):
        info = info_for_log()
        info.response_code = status
        return info

    async def rotate_and_log():
        files = AccessLogFiles(asyncio.get_running_loop(), opener=opener)
        log = AccessLog({"path": str(path), "format": "%RESPONSE_CODE%\n"}, files)
        for _ in range(10):             # the first open goes through the opener too
            if log.file.fd >= 0:
                break
            await asyncio.sleep(0)
        log.log(line(200))
        files.flush()
        os.rename(path, tmp_path / "a.log.1")
        pending = files.reopen()
        assert len(pending) == 1 and not pending[0].done()
        log.log(line(503))              # before the new file is there
        await asyncio.gather(*pending)
        log.log(line(404))
        files.close()
    asyncio.run(rotate_and_log())
    assert (tmp_path / "a.log.1").read_text() == "200\n503\n"
    assert path.read_text() == "404\n"


def test_access_log_to_stdout(capfd):
    files = AccessLogFiles()
    log = AccessLog({"path": "/dev/stdout", "format": "%RESPONSE_CODE% to stdout\n"}, files)
    log.log(info_for_log())
    files.close()
    assert capfd.readouterr().out == "200 to stdout\n"
    assert sys.stdout is not None               # fd 1 itself stays open
