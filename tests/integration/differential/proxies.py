"""The processes of a differential test: the recording upstream, a real Envoy and a Baton, both
run from the same bootstrap template (only their listener and admin ports differ).

BATON_DIFF_ONLY=envoy runs only the Envoy half of every case and checks the expectations the
case writes down (to validate the suite while Baton's HTTP path is being built);
BATON_DIFF_ONLY=baton runs only Baton against the same expectations. Unset (the default), both
run and Baton must observe what Envoy observed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ..conftest import Baton, free_port
from ...waiting import wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
ENVOY = REPO / ".venv-envoy" / "bin" / "envoy"
ENVOY_VENV_SCRIPT = REPO / "scripts" / "envoy-venv.sh"

ONLY = os.environ.get("BATON_DIFF_ONLY", "")
if ONLY not in ("", "envoy", "baton"):
    raise RuntimeError(f"BATON_DIFF_ONLY={ONLY!r}: expected envoy, baton or unset")
PROXIES = [p for p in ("envoy", "baton") if ONLY in ("", p)]


# ---- the recording upstream ----------------------------------------------------------------

class Recorder:
    """recorder.py as a process, one port per upstream name."""

    def __init__(self, *names: str):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "recorder.py"), *names],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()          # blocks until "ready PORT..." or exit
        if not line.startswith("ready "):
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"recorder did not start: {line!r}")
        self.ports = dict(zip(names, (int(p) for p in line.split()[1:])))

    def count(self, key: str) -> int:
        """Requests with x-test-key `key` that reached the recorder (asked directly)."""
        port = next(iter(self.ports.values()))
        url = f"http://127.0.0.1:{port}/__count/{urllib.parse.quote(key, safe='')}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["count"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# ---- Envoy ---------------------------------------------------------------------------------

def envoy_binary() -> Path:
    if not ENVOY.exists():
        done = subprocess.run([str(ENVOY_VENV_SCRIPT)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not ENVOY.exists():
            raise RuntimeError(f"could not create .venv-envoy: {done.stderr[-600:]}")
    return ENVOY


class Envoy:
    """The real Envoy on one bootstrap: one worker, no hot-restart shared memory (so any number
    can run side by side without a --base-id clash), ready when its admin /ready answers 200."""

    def __init__(self, workdir: Path, bootstrap: dict, args=()):
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = tuple(args)         # more command-line options (--drain-time-s ...)
        self.config = workdir / "envoy.yaml"
        self.config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        self.admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
        self.log_path = workdir / "envoy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 30.0) -> "Envoy":
        self._log = open(self.log_path, "ab")
        # The console script execs the real binary, so the pid we hold is Envoy's.
        # Access logs flushed every 100 ms (Envoy's default is 10 s), so a case reads its line soon.
        self.proc = subprocess.Popen([str(envoy_binary()), "-c", str(self.config), "--concurrency", "1",
                                      "--disable-hot-restart", "--log-level", "warning",
                                      "--file-flush-interval-msec", "100", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    return r.status == 200
            except (OSError, urllib.error.HTTPError):
                return False
        try:
            wait_until(ready, timeout, "envoy /ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


# ---- a proxy under test ----------------------------------------------------------------------

@dataclass
class Target:
    """One proxy as the cases see it."""
    name: str                        # "envoy" or "baton"
    ports: dict[str, int]            # listener name -> port
    admin_port: int
    process: object = field(repr=False, default=None)

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def key(self, case: str) -> str:
        """The x-test-key for `case` on this proxy; compare.py strips the "#proxy" part."""
        return f"{case}#{self.name}"

    def stats(self, prefix: str = "") -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            body = r.read().decode()
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                out[name] = int(value)
        return out


Template = Callable[[dict[str, int], int], dict]    # (listener ports, admin port) -> bootstrap


class ProxyPair:
    """Envoy and Baton on the same bootstrap template. Baton's process is launched first and
    Envoy started beside it (their start-ups overlap: a pair is ready in the time of the slower,
    not of both); Baton is waited for on first use, and if it cannot start (its config refused,
    say), every case that needs it fails with the reason instead of the whole module erroring
    out."""

    def __init__(self, workdir: Path, template: Template, listeners: list[str]):
        self.workdir = workdir
        self.template = template
        self.listeners = listeners
        self.targets_by_name: dict[str, Target] = {}
        self.baton_error: str | None = None
        self._launched: tuple[Baton, dict[str, int], int] | None = None
        if "baton" in PROXIES:
            self._launch_baton()
        if "envoy" in PROXIES:
            try:
                self._start("envoy")
            except BaseException:
                self.stop()
                raise

    def _bootstrap(self) -> tuple[dict, dict[str, int], int]:
        ports = {name: free_port() for name in self.listeners}
        admin = free_port()
        return self.template(ports, admin), ports, admin

    def _launch_baton(self) -> None:
        """Baton's process, not waited for (target() waits for its /ready)."""
        try:
            bootstrap, ports, admin = self._bootstrap()
            proc = Baton(self.workdir / "baton", bootstrap, concurrency=1)
        except Exception as exc:     # reported by every case that needs Baton
            self.baton_error = str(exc)[-4000:]
            return
        self._launched = (proc, ports, admin)
        try:
            proc.launch()
        except Exception as exc:
            self.baton_error = str(exc)[-4000:]

    def _start(self, name: str) -> None:
        if name == "envoy":
            bootstrap, ports, admin = self._bootstrap()
            proc = Envoy(self.workdir / "envoy", bootstrap).start()
        else:
            if self._launched is None:
                self._launch_baton()
                if self.baton_error is not None:
                    raise RuntimeError(self.baton_error)
            proc, ports, admin = self._launched
            self._launched = None
            try:
                proc.wait_ready(timeout=60)
            except BaseException:
                proc.stop()
                raise
        self.targets_by_name[name] = Target(name, ports, admin, proc)

    def target(self, name: str) -> Target:
        if name not in self.targets_by_name:
            if name == "envoy":
                self._start("envoy")
            else:
                if self.baton_error is None:
                    try:
                        self._start("baton")
                    except Exception as exc:     # reported by every case below
                        self.baton_error = str(exc)[-4000:]
                if self.baton_error is not None:
                    raise AssertionError(f"baton did not start on this bootstrap:\n{self.baton_error}")
        return self.targets_by_name[name]

    def stop(self) -> None:
        """Both at once: each stop waits for its own process's exit."""
        processes = [target.process for target in self.targets_by_name.values()]
        if self._launched is not None:              # launched, never waited for
            processes.append(self._launched[0])
            self._launched = None
        with ThreadPoolExecutor(max(1, len(processes))) as pool:
            list(pool.map(lambda process: process.stop(), processes))


def module_pair(name: str, make_bootstrap, listeners: list[str], upstreams=("a",)):
    """The two module-scoped fixtures most differential modules start with: `recorder` (the
    recording upstreams `upstreams`) and `pair` (Envoy and Baton on the bootstrap that
    `make_bootstrap(recorder.ports)` templates, serving `listeners`). Use as
    `recorder, pair = module_pair("diff-x", x_bootstrap, ["x"])`."""
    import pytest

    @pytest.fixture(scope="module")
    def recorder():
        rec = Recorder(*upstreams)
        yield rec
        rec.stop()

    @pytest.fixture(scope="module")
    def pair(recorder, tmp_path_factory):
        p = ProxyPair(tmp_path_factory.mktemp(name), make_bootstrap(recorder.ports), listeners)
        yield p
        p.stop()

    return recorder, pair
