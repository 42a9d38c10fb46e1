"""The keeper finds its children with or without /proc/<pid>/task/<pid>/children (a kernel
built without CONFIG_PROC_CHILDREN): claims, SIGINT and its exit depend on that list."""

import os
import subprocess

from baton.supervisor import keeper


def _keeper() -> keeper.Keeper:
    return keeper.Keeper(first_master=0)


def test_children_from_proc():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in _keeper()._children()
    finally:
        child.kill()
        child.wait()


def test_children_without_the_children_file(monkeypatch):
    real_open = open

    def no_children_file(path, *args, **kwargs):
        if str(path).endswith("/children"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", no_children_file)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in _keeper()._children()
        assert os.getpid() not in _keeper()._children()
    finally:
        child.kill()
        child.wait()
