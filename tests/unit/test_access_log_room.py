"""AccessLog.log's in-place append (AccessLogFile.room): a line goes to the buffer without
write()'s call only while the interval timer is armed and the buffer stays below its flush
size and bound; every other line takes write(), so batches, the bound and a failed file
behave as write() alone makes them."""

import asyncio
from types import SimpleNamespace

import pytest

from baton.worker.proxy.http import access_log
from baton.worker.proxy.http.access_log import AccessLog, AccessLogFile, AccessLogFiles


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _log(tmp_path, loop, flush_bytes=None):
    files = AccessLogFiles(loop)
    logger = AccessLog({"path": str(tmp_path / "a.log"), "format": "%RESPONSE_CODE% line\n"},
                       files)
    if flush_bytes is not None:
        logger.file.flush_bytes = flush_bytes
    return logger, logger.file


def _info(code):
    return SimpleNamespace(response_code=code, response_flags=[])


def test_lines_kept_in_place_until_the_flush_size_then_written_in_order(tmp_path, loop):
    logger, file = _log(tmp_path, loop, flush_bytes=40)       # 9 characters a line
    assert file.room == 0
    logger.log(_info(200))                  # the first line arms the timer: through write()
    assert file.timer is not None and file.room == 40
    for code in range(201, 204):
        logger.log(_info(code))
    assert file.pending_size == 36 and len(file.pending) == 4
    assert (tmp_path / "a.log").read_text() == ""
    logger.log(_info(204))                  # 45 >= 40: write() flushes
    assert file.timer is None and file.room == 0 and file.pending == []
    assert (tmp_path / "a.log").read_text() == "".join(f"{c} line\n" for c in range(200, 205))
    logger.log(_info(205))
    assert file.room == 40
    file.flush()
    assert file.room == 0
    assert (tmp_path / "a.log").read_text().endswith("204 line\n205 line\n")
    file.close()


def test_the_bound_still_drops_lines_past_it(tmp_path, loop, monkeypatch):
    monkeypatch.setattr(access_log, "MAX_PENDING_BYTES", 20)
    logger, file = _log(tmp_path, loop, flush_bytes=1000)
    for code in range(200, 204):
        logger.log(_info(code))
    assert file.room == 21                  # below the bound, not the flush size
    assert len(file.pending) == 2 and file.dropped == 2
    file.close()
    assert (tmp_path / "a.log").read_text() == "200 line\n201 line\n"


def test_a_file_that_failed_takes_no_line_in_place(tmp_path, loop):
    file = AccessLogFile(str(tmp_path / "b.log"), loop)
    file.write("kept\n")
    assert file.room > 0
    file.failed = True
    file.flush()
    file.write("dropped\n")                 # failed: no timer armed, no room
    assert file.room == 0 and file.dropped == 1
    file.close()
    assert (tmp_path / "b.log").read_text() == "kept\n"
