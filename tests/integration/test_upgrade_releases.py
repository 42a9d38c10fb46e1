"""Upgrades between real versions (issue 11, point 3): every release in tests/releases.txt is
installed into a venv of its own, serves under load, is upgraded in place to the current code
(`pip install` of the current tree into the same venv, then `baton reload`), and rolled back
the same way to the release. Through both reloads: long-lived TCP streams, HTTP/1.1 keep-alive
clients and requests in flight at the upstream must see no error, no reconnect, every byte
intact. `make upgrade-test` runs this file alone.
"""

from __future__ import annotations

import http.client
import os
import threading

import pytest

from .. import releases
from .clients import Streams
from .conftest import Baton, free_port, http_bootstrap, tcp_bootstrap, wait_until
from .test_rpc_proxy import processes  # noqa: F401 - a fixture

# BATON_UPGRADE_FROM=<commit> adds one more starting point (make upgrade-test FROM=...).
EXTRA = os.environ.get("BATON_UPGRADE_FROM") or None
RELEASES = releases.releases() + ([releases.given(EXTRA)] if EXTRA else [])


class ReleaseBaton(Baton):
    """A Baton run by the venv's interpreter, driven by the venv's own CLI: the version an
    operator has installed, whichever it is at the moment."""

    def __init__(self, venv: releases.ReleaseVenv, *args, **kwargs):
        super().__init__(*args, python=venv.python, **kwargs)
        self.venv = venv

    def cli(self, *args: str, timeout: float = 15.0):
        import subprocess
        return subprocess.run([self.venv.python, "-m", "baton.supervisor.cli", *args,
                               "--runtime-dir", str(self.runtime_dir)],
                              capture_output=True, text=True, timeout=timeout)


class HttpClients:
    """HTTP/1.1 keep-alive clients, one connection each, looping GETs until stopped. With
    `delay_ms` the upstream holds every request that long, so a reload always finds some in
    flight. Any error, wrong answer or new connection is recorded."""

    def __init__(self, port: int, count: int, delay_ms: int = 0):
        self.port, self.delay_ms = port, delay_ms
        self.failures: list[str] = []
        self.reconnects = 0
        self.done = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def start(self) -> "HttpClients":
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.connect()
        first = conn.sock
        headers = {"x-test-delay-ms": str(self.delay_ms)} if self.delay_ms else {}
        n = 0
        while not self.stop.is_set() and n < 100_000:
            n += 1
            path = f"/client-{i}/request-{n}"
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(f"{path}: {exc!r}")
                conn.close()
                continue
            with self.lock:
                if response.status != 200 or path.encode() not in body:
                    self.failures.append(f"{path}: {response.status} {body[:80]!r}")
                if conn.sock is not first:
                    self.reconnects += 1
                    first = conn.sock
                self.done += 1
        conn.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _bootstrap(admin: int, tcp_port: int, echo: int, http_port: int, recorder: int) -> dict:
    """A tcp_proxy listener to the echo upstream, and an HTTP listener to the recorder."""
    config = tcp_bootstrap(admin, tcp_port, [echo])
    http = http_bootstrap(admin, http_port, recorder)["static_resources"]
    for kind in ("listeners", "clusters"):
        config["static_resources"][kind] += http[kind]
    return config


@pytest.fixture(scope="module")
def wheels(release_wheel):
    """One wheel per release, and one of the working tree: built once for the whole run
    (conftest's release_wheel), so test_keeper_releases, which takes this fixture, builds none.
    The builds run side by side: each is mostly pip setting up its isolated build environment."""
    from concurrent.futures import ThreadPoolExecutor
    keys = [*RELEASES, "current"]
    with ThreadPoolExecutor(len(keys)) as pool:
        paths = list(pool.map(release_wheel, [None if key == "current" else key.commit for key in keys]))
    return dict(zip(keys, paths))


def _reload_to(b: ReleaseBaton, wheel, version: str) -> None:
    old = b.master_pid()
    b.venv.install(wheel)
    assert b.venv.version() == version
    result = b.reload(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + b.log[-4000:]
    b.wait_previous_gone(old, timeout=60)
    status = b.status()
    assert status["version"] == version, status
    assert status["master"]["pid"] != old


@pytest.mark.parametrize("release", RELEASES, ids=str)
def test_upgrade_from_release_and_roll_back_under_load(release, wheels, tmp_path, upstreams, recorder):
    current = releases.current_version()
    if release.commit != EXTRA:     # a commit given with FROM= may be unreleased: same version
        assert current != release.version, "bump supervisor/version.py for a release (README, Releases)"
    venv = releases.ReleaseVenv(tmp_path / "venv")
    venv.install(wheels[release])
    echo = upstreams("echo")
    tcp_port, http_port = free_port(), free_port()
    b = ReleaseBaton(venv, tmp_path / "baton", _bootstrap(free_port(), tcp_port, echo.port, http_port, recorder),
                     concurrency=2)
    b.start()
    try:
        assert b.status()["version"] == release.version
        streams = Streams(tcp_port, count=20, total=64 << 20, rate=4 << 20, hold_tail=True).start()
        keepalive = HttpClients(http_port, count=6).start()
        in_flight = HttpClients(http_port, count=4, delay_ms=400).start()
        wait_until(lambda: keepalive.done > 200 and in_flight.done > 8, 30, "load flowing")

        for wheel, version in ((wheels["current"], current), (wheels[release], release.version)):
            _reload_to(b, wheel, version)
            before_keepalive, before_in_flight = keepalive.done, in_flight.done
            wait_until(lambda: keepalive.done > before_keepalive + 200
                       and in_flight.done > before_in_flight + 8, 30,
                       f"requests served by generation {version}")

        assert streams.progress() < 64 << 20, "the TCP streams must outlive both reloads"
        streams.end()                   # a chunk more each after the rollback, then the end
        keepalive.finish()
        in_flight.finish()
        streams.join(120)
        streams.verify()                  # every TCP stream whole, no disconnect
        for clients in (keepalive, in_flight):
            assert not clients.failures, clients.failures[:5]
            assert clients.reconnects == 0, f"{clients.reconnects} reconnect(s)"
        assert "Traceback" not in b.log, b.log[-3000:]
    finally:
        b.stop()


def _moves_records_of(release: releases.Release) -> bool:
    """Whether `release` speaks the records of tunnels, RPC and TLS (0.2.0 and later)."""
    return tuple(map(int, release.version.split("."))) >= (0, 2, 0)


def _mixed_bootstrap(admin: int, ports: dict, tls_socket: dict, recorder: int, tunnel: int,
                     dubbo: int) -> dict:
    """An HTTPS listener to the recorder, a CONNECT listener to the tunnel upstream and a
    Dubbo listener to a provider, in one bootstrap."""
    from .test_http_connect import bootstrap as connect_bootstrap
    from .test_https import https_bootstrap
    from .test_rpc_proxy import rpc_bootstrap
    config = https_bootstrap(ports["https"], recorder, tls_socket)
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    connect = connect_bootstrap(admin, ports["connect"], tunnel)
    connect["static_resources"]["listeners"][0]["name"] = "connect"
    for part in (connect, rpc_bootstrap(admin, {"dubbo": ports["dubbo"]}, {"up": dubbo})):
        for kind in ("listeners", "clusters"):
            config["static_resources"][kind] += part["static_resources"][kind]
    return config


@pytest.mark.parametrize("release", [r for r in RELEASES if _moves_records_of(r)], ids=str)
def test_tls_tunnel_and_rpc_connections_cross_versions(release, wheels, tmp_path, recorder,
                                                       processes):
    """The connection records 0.2.0 added cross between real versions both ways: an HTTPS
    keep-alive session (its record-layer state, record https1-idle), a CONNECT tunnel with
    both its sockets (record http-tunnel: the old generation must exit while it is open) and
    a Dubbo connection with calls in flight (record rpc), from the release to this code and
    back; and a TLS session ticket the release issued resumes on this code (the ticket seed
    crosses in the sockets message)."""
    import socket
    import ssl
    import sys

    from ..tls_certs import leaf, make_ca
    from .clients import Http1Reader
    from .rpc_peers.stream import RpcStream
    from .test_http_connect import TUNNEL_UPSTREAM
    from .test_rpc_proxy import provider
    from .tls_clients import client_context, tls_transport_socket

    current = releases.current_version()
    venv = releases.ReleaseVenv(tmp_path / "venv")
    venv.install(wheels[release])
    ca = make_ca("ecdsa")
    tunnel_port = processes([sys.executable, str(TUNNEL_UPSTREAM), "connect"])   # ended by the fixture
    ports = {"https": free_port(), "connect": free_port(), "dubbo": free_port()}
    config = _mixed_bootstrap(free_port(), ports, tls_transport_socket(leaf(ca, "ecdsa"),
                                                                       alpn=["http/1.1"]),
                              recorder, tunnel_port, provider(processes, "dubbo", "P"))
    b = ReleaseBaton(venv, tmp_path / "baton", config, concurrency=1)
    context = client_context(ca, alpn=["http/1.1"], version=ssl.TLSVersion.TLSv1_3)
    https = http.client.HTTPSConnection("localhost", ports["https"], timeout=20, context=context)
    tunnel = rpc = None
    try:
        b.start()
        tunnel = socket.create_connection(("127.0.0.1", ports["connect"]), timeout=30)
        assert b.status()["version"] == release.version
        https.request("GET", "/first")
        response = https.getresponse()
        assert response.status == 200 and b"/first" in response.read()
        first_session, first_sock = https.sock.session, https.sock
        reader = Http1Reader(tunnel)
        tunnel.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        assert reader.head()[0] == 200
        seen = b"CONNECT example.test:443 HTTP/1.1\n"          # the upstream says what it saw
        assert reader.exact(len(seen)) == seen
        # Slow calls of 0.3-1 s (one in ten): every reload finds some in flight,
        # and each old generation, which answers them, is gone within a second of its move
        # (the default 1-3 s kept each of the three waits on it near 3 s).
        rpc = RpcStream("dubbo", ports["dubbo"], slow_every=10, slow_seconds=(0.3, 1.0)).start()
        wait_until(lambda: rpc.answered >= 20 or rpc.errors, 30, "Dubbo answers")

        for step, (wheel, version) in enumerate(((wheels["current"], current),
                                                 (wheels[release], release.version))):
            _reload_to(b, wheel, version)           # the old generation exits: nothing stayed
            https.request("GET", f"/after-{step}")
            response = https.getresponse()
            assert response.status == 200 and f"/after-{step}".encode() in response.read()
            assert https.sock is first_sock, "the HTTPS client reconnected"
            for message in (f"after {version}".encode(), b"t" * 200_000):
                tunnel.sendall(message)
                assert reader.exact(len(message)) == message.upper()
            mark = rpc.answered
            wait_until(lambda: rpc.answered >= mark + 20 or rpc.errors, 30,
                       f"Dubbo answers from generation {version}")
            if step == 0:
                # A new connection offering the release's ticket resumes on this code.
                with socket.create_connection(("127.0.0.1", ports["https"]), timeout=20) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost",
                                             session=first_session) as resumed:
                        assert resumed.session_reused, "the release's session ticket did not resume"
    finally:
        https.close()
        if tunnel is not None:
            tunnel.close()
        if rpc is not None:
            rpc.stop()
        b.stop()
    assert rpc.errors == [], rpc.errors[:5]
    assert rpc.answered == rpc.sent
    assert "Traceback" not in b.log, b.log[-3000:]
