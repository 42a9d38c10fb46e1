"""supervisor/stop_marker.py: how a master that stops on purpose tells the generation before."""

from __future__ import annotations

import logging

from baton.supervisor import stop_marker


def test_a_mark_is_read_once_by_generation_and_pid(tmp_path):
    assert stop_marker.leave(str(tmp_path), 3, 4242, "drain")
    assert stop_marker.take(str(tmp_path), 3, 4243) is None      # another process
    assert stop_marker.take(str(tmp_path), 2, 4242) is None      # another generation
    assert stop_marker.take(str(tmp_path), 3, 4242) == "drain"
    assert stop_marker.take(str(tmp_path), 3, 4242) is None      # removed when read
    assert list(tmp_path.iterdir()) == []


def test_a_fast_stop_outranks_the_drain_before_it(tmp_path):
    stop_marker.leave(str(tmp_path), 2, 7, "drain")
    stop_marker.leave(str(tmp_path), 2, 7, "stop")
    assert stop_marker.take(str(tmp_path), 2, 7) == "stop"
    assert list(tmp_path.iterdir()) == []


def test_a_crash_leaves_no_mark(tmp_path):
    assert stop_marker.take(str(tmp_path), 2, 7) is None


def test_a_mark_that_cannot_be_left_is_a_warning_not_an_error(tmp_path, caplog):
    missing = tmp_path / "gone"
    with caplog.at_level(logging.WARNING, logger="baton.master"):
        assert not stop_marker.leave(str(missing), 2, 7, "stop")
    assert "will serve again" in caplog.text


def test_a_fresh_start_sweeps_every_mark_and_nothing_else(tmp_path):
    stop_marker.leave(str(tmp_path), 2, 7, "stop")
    stop_marker.leave(str(tmp_path), 5, 9, "drain")
    (tmp_path / "baton.pid").write_text("1\n")
    stop_marker.sweep(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["baton.pid"]
