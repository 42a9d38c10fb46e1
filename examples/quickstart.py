"""`make run`: Baton on examples/quickstart.yaml in front of the bundled demo upstream.

Starts the demo upstream (127.0.0.1:10001), then `baton run` in the foreground, and one
long-lived TCP connection through it (examples/tick_client.py, a line a second) to watch
through `baton reload`; prints what to try; Ctrl-C stops everything. `baton run` keeps its pid
across reloads (supervisor/keeper.py), so this script keeps following Baton after a reload.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATON = str(Path(sys.executable).parent / "baton")


def _who_runs_what() -> str:
    if os.geteuid() != 0:
        return ""
    return ("The master stays root (it binds the listeners); workers and the xDS agent run as\n"
            "user 'baton' without capabilities (created by `make run`; README, Security).\n")


def main() -> int:
    runtime_dir = os.environ.get("BATON_RUNTIME_DIR", str(HERE.parent / ".run"))
    upstream = subprocess.Popen([sys.executable, str(HERE / "demo_upstream.py"), "--port", "10001"],
                                stdout=subprocess.PIPE, text=True)
    line = upstream.stdout.readline()
    if not line.startswith("demo upstream listening"):
        upstream.wait()
        print("make run: the demo upstream could not start (is 127.0.0.1:10001 taken?)", file=sys.stderr)
        return 1
    print(f"""
Baton quickstart
  tcp proxy  127.0.0.1:10000  ->  demo upstream 127.0.0.1:10001   (examples/quickstart.yaml)
  http       127.0.0.1:10080  ->  the same upstream, routed by an http_connection_manager
  admin      http://127.0.0.1:9901

Try, from another terminal:
  curl http://127.0.0.1:10000/hello            # an HTTP request through the TCP proxy
  curl -i http://127.0.0.1:10080/hello         # the same, routed at L7 (see x-routed-by)
  echo 'hello baton' | nc -q1 127.0.0.1 10000  # raw bytes, echoed back
  curl http://127.0.0.1:9901/stats             # Envoy-style counters
  .venv/bin/baton status --runtime-dir {runtime_dir}
{_who_runs_what()}
Watch a hot reload: the "[watch]" line below, once a second, is ONE TCP connection through
Baton to the demo upstream. From another terminal run
  .venv/bin/baton reload --runtime-dir {runtime_dir}
(or edit examples/quickstart.yaml first): the master pid changes, the count goes on over the
same connection, and `baton status` shows the new generation.

Ctrl-C stops everything.
""", flush=True)
    baton = subprocess.Popen([BATON, "run", "-c", str(HERE / "quickstart.yaml"), "--runtime-dir", runtime_dir])
    watcher = subprocess.Popen([sys.executable, str(HERE / "tick_client.py"), "--port", "10000",
                                "--runtime-dir", runtime_dir])
    try:
        return baton.wait()
    except KeyboardInterrupt:
        baton.send_signal(signal.SIGINT)
        return baton.wait()
    finally:
        for helper in (watcher, upstream):
            if helper.poll() is None:
                helper.terminate()
            helper.wait()


if __name__ == "__main__":
    sys.exit(main())
