"""Earlier releases of Baton, installed for real: the other side of every upgrade test.

A release is a commit of this repository (tests/releases.txt). It is built into a wheel from
`git archive` of that commit, and installed with pip into a venv of its own; "upgrading" is
installing another wheel into the same venv, as an operator's `pip install -U` would, so the
`baton reload` that follows really runs the other version's code from disk. The venv has no
dependencies of its own: a .pth file points at the project venv's site-packages (both
versions' dependencies are there: a release never needs one the current code dropped, and a
new one is a README change that says so).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).resolve().parent / "releases.txt"


@dataclass(frozen=True)
class Release:
    version: str
    commit: str

    def __str__(self) -> str:
        return f"{self.version} ({self.commit[:8]})"


def releases() -> list[Release]:
    out = []
    for line in LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            version, commit = line.split()
            out.append(Release(version, commit))
    return out


def given(commit: str) -> Release:
    """Any commit as a starting point (`make upgrade-test FROM=<commit>`), with the version
    its supervisor/version.py says: it may equal the current one (an unreleased commit)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:supervisor/version.py"],
                            capture_output=True, text=True, check=True).stdout
    namespace: dict = {}
    exec(compile(source, "version.py", "exec"), namespace)
    return Release(namespace["VERSION"], commit)


def current_version() -> str:
    from baton.supervisor.version import VERSION
    return VERSION


def _pip(*args: str, timeout: float = 300) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def source_of(commit: str | None, dest: Path) -> Path:
    """The tree of `commit` (None: the working tree's tracked files, as they are on disk)."""
    dest.mkdir(parents=True)
    if commit is None:
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                               check=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return dest
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                       stdout=archive, check=True)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(dest)
    return dest


def build_wheel(commit: str | None, workdir: Path) -> Path:
    """A wheel of Baton at `commit` (None: the working tree)."""
    name = commit[:12] if commit else "current"
    src = source_of(commit, workdir / f"src-{name}")
    out = workdir / f"wheel-{name}"
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src))
    [wheel] = out.glob("*.whl")
    return wheel


class ReleaseVenv:
    """A venv that holds one installed Baton at a time."""

    def __init__(self, path: Path):
        self.path = path
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
        self.python = str(path / "bin" / "python")
        self.site = Path(subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip())
        deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
        (self.site / "baton-dependencies.pth").write_text("\n".join(deps) + "\n")

    def install(self, wheel: Path) -> None:
        """Replace whatever Baton is installed by `wheel` (pip install -U, no dependencies)."""
        _pip("install", "--quiet", "--no-deps", "--no-index", "--upgrade", "--force-reinstall",
             "--target", str(self.site), str(wheel))

    def version(self) -> str:
        return subprocess.run([self.python, "-c", "from baton.supervisor.version import VERSION; "
                               "print(VERSION)"], capture_output=True, text=True,
                              check=True).stdout.strip()
