"""When `baton run` starts a keeper (supervisor/keeper.py): only a first start outside systemd."""

from baton.supervisor.keeper import wanted


def test_a_first_start_from_a_shell_keeps():
    assert wanted({"PATH": "/usr/bin"})


def test_a_new_generation_never_starts_another_keeper():
    assert not wanted({"BATON_HANDOFF": "/run/baton/handoff.sock", "BATON_KEEPER": "42"})
    assert not wanted({"BATON_KEEPER": "42"})


def test_systemd_follows_the_main_pid_itself():
    assert not wanted({"NOTIFY_SOCKET": "/run/systemd/notify"})
