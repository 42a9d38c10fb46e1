"""A Wasm filter's per-request cycle in one process, no sockets: what the plugin costs the
worker, without the proxy around it (worker/proxy/http/wasm.py's filter on a stand-in
stream: new stream context, proxy_on_request_headers, proxy_on_response_headers, the end:
proxy_on_done / _log / _delete).

    .venv/bin/python bench/wasm_cycle.py [--plugin raw|sdk] [--requests N] [--repeats R]

prints the best of R runs in µs a request. Instruction counts: run it under
`setarch -R valgrind --tool=callgrind` (PYTHONHASHSEED=0, WASM_CYCLE_NOGC=1) with --repeats 1 and --requests
100 and 1100; the difference over 1000 is a request's count.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import time
from pathlib import Path

import wasmtime

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http import wasm
from baton.worker.stats import Stats

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "wasm"
PLUGINS = {"raw": ("deny.wat", "x"), "sdk": ("demo.wasm", "demo")}


class _Loop:
    def call_soon(self, fn, *args):
        fn(*args)


class _Stream:
    loop = _Loop()
    info = None

    def resume_filters(self, result=None):
        pass


class _Worker:
    node = {}
    loop = None
    clusters = {}


class _Context:
    def __init__(self):
        self.worker = _Worker()
        self.stats = Stats()
        self.loop = None


def factory(plugin: str) -> wasm.WasmFilterFactory:
    filename, root_id = PLUGINS[plugin]
    path = FIXTURES / filename
    code = wasmtime.wat2wasm(path.read_text()) if filename.endswith(".wat") else \
        path.read_bytes()
    config = {"name": "bench", "root_id": root_id, "vm_id": "", "runtime": "envoy.wasm.runtime.v8",
              "configuration": b"bench", "vm_config": b"", "code": code,
              "sha256": hashlib.sha256(code).hexdigest(), "environment": {}, "fail_open": False}
    return wasm.WasmFilterFactory(config, _Context())


def run(f: wasm.WasmFilterFactory, requests: int) -> float:
    headers = [("user-agent", "wrk"), ("accept", "*/*")]
    response_headers = [("content-type", "text/plain"), ("content-length", "2"),
                        ("server", "nginx")]
    start = time.perf_counter()
    for _ in range(requests):
        stream = _Stream()
        flt = f.create(stream)
        flt.on_request_headers(Request("GET", "/ok", "bench", Headers(list(headers))), True)
        flt.on_response_headers(Response(200, Headers(list(response_headers))), False)
        flt.on_log()
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin", choices=sorted(PLUGINS), default="raw")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    f = factory(args.plugin)
    if os.environ.get("WASM_CYCLE_NOGC"):  # steadier instruction counts (callgrind)
        gc.disable()
    run(f, 50)                              # warm: the first streams' one-time costs
    best = min(run(f, args.requests) for _ in range(args.repeats))
    print(f"{args.plugin}: {best / max(args.requests, 1) * 1e6:.2f} us a request "
          f"(best of {args.repeats} x {args.requests})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
