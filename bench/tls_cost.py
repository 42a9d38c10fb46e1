"""What one new TLS 1.3 server handshake costs Baton in process, split by phase, to compare two
versions (issue 12, the hs_ecdsa / hs_rsa figures of bench/tls_bench.py).

run [KIND] [HANDSHAKES]
    This tree: HANDSHAKES (default 500) full handshakes of a Python `ssl` client against a
    TlsServer built as a worker builds it (worker/tls/server.py: session tickets, the key log
    callback), over MemoryBIOs, no sockets, the client pinned as bench/tls_bench.py pins it
    (TLS 1.3, TLS_AES_128_GCM_SHA256, X25519). KIND is ecdsa (default) or rsa. For each
    server-side step the worker takes per connection, CPU microseconds of this thread
    (CLOCK_THREAD_CPUTIME_ID, so the shared machine's other processes do not count), medians:

      openssl   SSLObject.do_handshake calls (OpenSSL's handshake and its key log callback)
      step      the rest of TlsHandshake.step (BIO reads, the key log's bookkeeping)
      handover  TlsHandshake.handover: secrets, record keys, counting the records sent
      accept    the rest of ServerAccept.receive: SAN checks, ssl.* counters, keep_session
      wrap      server.handshake(): the SSLObject and MemoryBIOs
      close     the end the benchmark's connections have: a FIN, then close_notify sealed
      server    all of the above (the client's work is not in it)

    Prints one JSON line.

ab ROUNDS KIND NAME=PYTHONPATH_DIR ...
    Versions interleaved: ROUNDS rounds, each running `run KIND 300` once per version in a
    fresh process, the order rotating; the median of each phase over the rounds per version,
    and each version's server figure against the first's. A version is a directory holding a
    `baton` symlink to its tree (bench/http_cost.py's docstring shows how to snapshot one
    with `git archive`); `.` names this tree (the symlink is made in a temporary directory).
    Run from the repository root: `.venv/bin/python bench/tls_cost.py ab 5 ecdsa base=/tmp/a
    new=.`.

e2e ROUNDS SECONDS NAME=PYTHONPATH_DIR ... [envoy]
    The whole connection: for each version, Baton with one worker pinned to CPU 1 on
    bench/tls_bench.py's bootstrap and certificates, bench/tls_handshakes.py on CPU 0 keeping
    50 handshakes in flight (ECDSA, full, no request) for SECONDS after 2 s unmeasured; the
    worker's CPU microseconds per connection (accept to close). `envoy` adds Envoy on the
    same bootstrap (its one process's CPU). Versions interleaved with a rotating order, each
    started fresh; medians. A figure per process rather than a ratio to a neighbour's, so a
    busy machine moves it less than the per-core ratios of tls_bench.py.

Sockets, the event loop and the connection manager are not in `run`: a py-spy profile of the
worker under bench/tls_handshakes.py load shows those (bench/RESULTS.md, the TLS section).
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("wrap", "openssl", "step", "handover", "accept", "close", "server")
HERE = os.path.dirname(os.path.abspath(__file__))


def _clock() -> float:
    return time.thread_time()


def _timed(samples: dict, name: str, function):
    def wrapper(*args, **kwargs):
        started = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            samples[name] += _clock() - started
    return wrapper


def run(kind: str, handshakes: int) -> dict:
    from baton.worker.tls import accept as accept_module
    from baton.worker.tls.accept import ServerAccept
    from baton.worker.tls.handover import TlsHandshake
    from baton.worker.tls.server import TlsServer
    from tests.tls_certs import leaf, make_ca
    from tests.tls_helpers import pin_tls13_suite

    ca = make_ca(kind)
    pair = leaf(ca, kind)
    server = TlsServer({
        "certificates": [{"chain": pair.cert_pem.decode(), "key": pair.key_pem.decode()}],
        "min_version": "TLSv1_2", "max_version": "TLSv1_3", "cipher_suites": None,
        "ecdh_curve": None, "alpn": [], "trusted_ca": None, "san_matchers": [],
        "require_client_certificate": False, "handshake_timeout": 15.0})
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    pin_tls13_suite(client_ctx, "TLS_AES_128_GCM_SHA256")

    # Each phase's time, gathered by wrapping the functions the worker calls (the wrappers'
    # own cost, well under a microsecond each, lands in the enclosing phase).
    cur = dict.fromkeys(PHASES, 0.0)
    originals = (TlsHandshake.step, TlsHandshake.handover)
    TlsHandshake.step = _timed(cur, "step", originals[0])
    TlsHandshake.handover = _timed(cur, "handover", originals[1])
    per = {name: [] for name in PHASES}
    try:
        for _ in range(handshakes):
            for name in PHASES:
                cur[name] = 0.0
            c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            peer = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
            t = _clock()
            accept = ServerAccept(server)
            cur["wrap"] = _clock() - t
            obj = accept.handshake.ssl_object     # the server's only, not the client's
            obj.do_handshake = _timed(cur, "openssl", obj.do_handshake)
            receive_time = 0.0
            for _round in range(4):
                try:
                    peer.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                data = c_out.read()
                t = _clock()
                out = accept.receive(data, False)
                receive_time += _clock() - t
                c_in.write(out)
                if accept.layer is not None:
                    break
            layer = accept.layer
            if layer is None:
                raise RuntimeError("the handshake did not finish")
            t = _clock()
            layer.receive_data(b"")             # the client's FIN: nothing behind it
            layer.close()
            cur["close"] = _clock() - t
            # step's time includes openssl's (step calls do_handshake): report it apart.
            cur["step"] -= cur["openssl"]
            cur["accept"] = receive_time - cur["openssl"] - cur["step"] - cur["handover"]
            cur["server"] = receive_time + cur["wrap"] + cur["close"]
            for name in PHASES:
                per[name].append(cur[name])
    finally:
        TlsHandshake.step, TlsHandshake.handover = originals
    del accept_module
    return {name: round(statistics.median(v) * 1e6, 1) for name, v in per.items()}


def ab(rounds: int, kind: str, versions: list[tuple[str, str]]) -> dict:
    results = {name: [] for name, _ in versions}
    for r in range(rounds):
        order = versions[r % len(versions):] + versions[:r % len(versions)]
        for name, path in order:
            env = dict(os.environ, PYTHONPATH=path)
            out = subprocess.run([sys.executable, os.path.join(HERE, "tls_cost.py"), "run", kind,
                                  "300"], env=env, cwd=tempfile.gettempdir(), check=True,
                                 capture_output=True, text=True).stdout
            results[name].append(json.loads(out))
            print(name, out.strip(), file=sys.stderr)
    medians = {name: {p: statistics.median(r[p] for r in rs) for p in PHASES}
               for name, rs in results.items()}
    first = medians[versions[0][0]]["server"]
    for m in medians.values():
        m["vs_first"] = round(m["server"] / first, 3)
    return medians


def e2e(rounds: int, seconds: int, versions: list[tuple[str, str]]) -> dict:
    sys.path.insert(0, HERE)
    from pathlib import Path

    import psutil
    import tls_proxies
    from procs import free_ports, stop

    work = Path(tempfile.mkdtemp(prefix="tlscost-e2e-"))
    certs = tls_proxies.write_certificates(work)
    upstream, sink, source = free_ports(3)
    client = ["taskset", "-c", "0", sys.executable, os.path.join(HERE, "tls_handshakes.py")]
    results = {name: [] for name, _ in versions}
    for r in range(rounds):
        for name, path in versions[r % len(versions):] + versions[:r % len(versions)]:
            kind = "envoy" if name == "envoy" else "baton"
            ports = tls_proxies.allocate(free_ports(5), upstream, sink, source)
            rundir = work / f"{name}-{r}"
            rundir.mkdir()
            env_before = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = path         # the version Baton's processes import
            try:
                proc = tls_proxies.launch(kind, ports, certs, 1, rundir,
                                          Path(HERE).parent / ".venv" / "bin" / "baton")
            finally:
                if env_before is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = env_before
            try:
                process = psutil.Process(proc.popen.pid)
                if kind == "baton":
                    process = next(p for p in process.children(recursive=True)
                                   if p.cmdline() and p.cmdline()[0].startswith("baton: worker"))
                port = str(ports.https["ecdsa"])
                subprocess.run(client + [port, "2", "50"], check=True, capture_output=True)
                before = sum(process.cpu_times()[:2])
                out = subprocess.run(client + [port, str(seconds), "50"], check=True,
                                     capture_output=True, text=True).stdout
                spent = sum(process.cpu_times()[:2]) - before
                handshakes = json.loads(out)["handshakes"]
                results[name].append(spent / handshakes * 1e6)
                print(name, r, handshakes, round(results[name][-1], 1), "us", file=sys.stderr)
            finally:
                stop(proc)
    return {name: round(statistics.median(v), 1) for name, v in results.items()}


def _this_tree() -> str:
    directory = tempfile.mkdtemp(prefix="tlscost-")
    os.symlink(os.path.dirname(HERE), os.path.join(directory, "baton"))
    return directory


def main(argv: list[str]) -> int:
    if argv and argv[0] == "run":
        kind = argv[1] if len(argv) > 1 else "ecdsa"
        handshakes = int(argv[2]) if len(argv) > 2 else 500
        if "baton" not in sys.modules:
            try:
                import baton  # noqa: F401
            except ImportError:
                sys.path.insert(0, _this_tree())
        import baton.tests  # noqa: F401 - the tree's tests package, for its certificates
        sys.modules["tests"] = sys.modules["baton.tests"]
        print(json.dumps(run(kind, handshakes)))
        return 0
    if argv and argv[0] == "ab" and len(argv) >= 4:
        versions = []
        for spec in argv[3:]:
            name, _, path = spec.partition("=")
            versions.append((name, _this_tree() if path == "." else os.path.abspath(path)))
        print(json.dumps(ab(int(argv[1]), argv[2], versions), indent=1))
        return 0
    if argv and argv[0] == "e2e" and len(argv) >= 4:
        versions = []
        for spec in argv[3:]:
            name, _, path = spec.partition("=")
            if name == "envoy":
                versions.append((name, ""))
                continue
            versions.append((name, _this_tree() if path == "." else os.path.abspath(path)))
        print(json.dumps(e2e(int(argv[1]), int(argv[2]), versions)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
