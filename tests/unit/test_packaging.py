"""The wheel holds every package of the tree: pyproject.toml lists them by hand (the repository
root is the `baton` package), and a package left out installs fine and fails at import, as
baton.worker.proxy.rpc did in the release-upgrade test (a pip-installed Baton's workers
crashed at their first RPC listener)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = {"tests", "examples", "bench", "scripts", "node_modules", "systemd"}


def test_every_package_directory_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"baton"}
    for init in ROOT.rglob("__init__.py"):
        parts = init.relative_to(ROOT).parts[:-1]
        if parts and parts[0] not in NOT_SHIPPED and not parts[0].startswith("."):
            found.add(".".join(("baton", *parts)))
    assert found - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"
