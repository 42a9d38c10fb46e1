"""Network namespaces for integration tests: create, join, connect with veth pairs, delete.

    from .netns import Topology, skip_reason

    with Topology() as topo:                       # names get a random, pid-tagged prefix
        node, srv = topo.add("node"), topo.add("srv")
        topo.link(node, srv, ["10.200.1.1/24", "fd00:200:1::1/64"], ["10.200.1.2/24", "fd00:200:1::2/64"])
        srv.default_route("10.200.1.1", "fd00:200:1::1")
        node.exec("nft", "list", "ruleset")        # ip netns exec <node> nft list ruleset
        sock = node.call(socket.socket)            # a socket created inside <node>
        node.call(some_function, arg)              # any Python code, run inside <node>

Every namespace has `lo` up; IPv6 addresses are added with `nodad` (no DAD wait). `call` runs
the function in a short-lived thread that has joined the namespace with setns(2): sockets it
creates stay in that namespace wherever they are used afterwards, and subprocesses it starts
inherit the namespace. No sleep is used anywhere: callers wait on sockets or lines.

Namespaces are named `bt<pid:06x><2 random hex><role>`; Topology.close() deletes them (which
deletes their veths, rules, sets and routes); sweep_stale() deletes those left by dead test
processes. Nothing is ever changed in the namespace the tests run in.

Run as a script inside a namespace (e.g. `ip netns exec NS python netns.py connect ...`) it
offers a client that can switch uid first (see __main__).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_NAME = re.compile(r"^bt([0-9a-f]{6})[0-9a-f]{2}")
_libc = ctypes.CDLL(None, use_errno=True)


def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root (CAP_NET_ADMIN + CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"bt{os.getpid() % 0xFFFFFF:06x}zz"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` is unavailable here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces named by this helper whose creating process is gone."""
    gone = []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return gone
    for name in names:
        m = _NAME.match(name)
        if m and not os.path.exists(f"/proc/{int(m.group(1), 16)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            gone.append(name)
    return gone


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Netns:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Netns({self.name})"

    def exec(self, *cmd, input=None, check=True, timeout=60) -> subprocess.CompletedProcess:
        r = subprocess.run(["ip", "netns", "exec", self.name, *map(str, cmd)], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(map(str, cmd))} -> rc {r.returncode}\n"
                               f"{r.stdout}{r.stderr}")
        return r

    def sh(self, script: str, check=True) -> str:
        return self.exec("sh", "-c", script, check=check).stdout

    def popen(self, *cmd, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, cmd)], **kwargs)

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a thread that joined this namespace; returns or raises."""
        box = {}

        def target():
            try:
                _setns(os.path.join(NETNS_DIR, self.name))
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM) -> socket.socket:
        return self.call(socket.socket, family, type)

    def default_route(self, via4: str | None = None, via6: str | None = None) -> None:
        if via4:
            self.exec("ip", "route", "add", "default", "via", via4)
        if via6:
            self.exec("ip", "-6", "route", "add", "default", "via", via6)

    def snapshot(self) -> dict[str, str]:
        """What interception may touch, as text, to compare before/after."""
        out = {"nft": self.exec("nft", "list", "ruleset", check=False).stdout}
        for name, cmd in (("rule4", ["ip", "rule"]), ("rule6", ["ip", "-6", "rule"]),
                          ("route4", ["ip", "-4", "route", "show", "table", "all"]),
                          ("route6", ["ip", "-6", "route", "show", "table", "all"]),
                          ("ipset", ["ipset", "list", "-n"])):
            out[name] = self.exec(*cmd, check=False).stdout
        return out


class Topology:
    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or f"bt{os.getpid() % 0xFFFFFF:06x}{secrets.token_hex(1)}"
        self.namespaces: list[Netns] = []
        self._links = 0

    def add(self, role: str) -> Netns:
        ns = Netns(self.prefix + role)
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
        self.namespaces.append(ns)
        ns.exec("ip", "link", "set", "lo", "up")
        return ns

    def link(self, a: Netns, b: Netns, a_addrs=(), b_addrs=(), link_local=False) -> tuple[str, str]:
        """A veth pair between a and b, addresses added (IPv6 with nodad), both ends up.

        Without link_local the ends get no fe80:: address (`addrgenmode none`): its DAD would
        otherwise finish a moment after link-up and add a route in the middle of a test that
        compares routing tables; the nodad addresses given here are enough for neighbour
        discovery."""
        n = self._links
        self._links += 1
        ifa, ifb = f"{self.prefix}a{n}", f"{self.prefix}b{n}"
        subprocess.run(["ip", "link", "add", ifa, "netns", a.name, "type", "veth", "peer",
                        "name", ifb, "netns", b.name], check=True, capture_output=True)
        for ns, ifname, addrs in ((a, ifa, a_addrs), (b, ifb, b_addrs)):
            if not link_local:
                ns.exec("ip", "link", "set", ifname, "addrgenmode", "none")
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                ns.exec("ip", "addr", "add", addr, "dev", ifname, *extra)
            ns.exec("ip", "link", "set", ifname, "up")
        return ifa, ifb

    def close(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.namespaces.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- small socket helpers used by the interception tests ------------------------------------


class Listener:
    """A TCP listener (optionally IP_TRANSPARENT) created in a namespace; each accepted
    connection is recorded as {"sockname", "peername", "orig_dst"} and answered with `reply`."""

    IPV6_TRANSPARENT = 75
    SO_ORIGINAL_DST = 80

    def __init__(self, ns: Netns, family: int, port: int, transparent=False, reply=b"captured",
                 host: str | None = None):
        self.family, self.reply, self.accepted = family, reply, []
        self._cond = threading.Condition()

        def make():
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if transparent:
                if family == socket.AF_INET:
                    s.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, self.IPV6_TRANSPARENT, 1)
            s.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            s.listen(64)
            return s

        self.sock = ns.call(make)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _orig_dst(self, conn):
        try:
            if self.family == socket.AF_INET:
                raw = conn.getsockopt(socket.SOL_IP, self.SO_ORIGINAL_DST, 16)
                return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
            raw = conn.getsockopt(socket.IPPROTO_IPV6, self.SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
        except OSError:
            return None                      # not NATed (TPROXY, or not captured)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                info = {"sockname": conn.getsockname()[:2], "peername": conn.getpeername()[:2],
                        "orig_dst": self._orig_dst(conn)}
                with contextlib.suppress(OSError):
                    conn.sendall(self.reply)
            with self._cond:
                self.accepted.append(info)
                self._cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[dict]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.accepted) >= n, timeout):
                raise AssertionError(f"listener got {len(self.accepted)} connections, expected {n}")
            return list(self.accepted)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(ns: Netns, host: str, port: int, mark: int | None = None, timeout: float = 5.0) -> bytes:
    """Connect from inside ns (optionally with SO_MARK) and read until EOF."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def go():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            s.connect((host, port))
            return _read_all(s)

    return ns.call(go)


def connect_as_uid(ns: Netns, uid: int, host: str, port: int, timeout: float = 5.0) -> bytes:
    """Connect from a child process in ns that switched to uid first (owner-match tests)."""
    r = ns.exec(sys.executable, os.path.abspath(__file__), "connect", "--uid", str(uid), host,
                str(port), str(timeout), timeout=timeout + 10)
    return r.stdout.strip().encode()


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _main(argv: list[str]) -> int:
    import argparse
    import encodings.idna  # noqa: F401 - imported before dropping privileges (lazy import fails after)

    p = argparse.ArgumentParser(prog="netns.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("connect", help="connect, print what the server sent until EOF")
    c.add_argument("--uid", type=int)
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("timeout", type=float, nargs="?", default=5.0)
    args = p.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    if args.uid is not None:
        os.setgroups([])
        os.setresgid(args.uid, args.uid, args.uid)
        os.setresuid(args.uid, args.uid, args.uid)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(args.timeout)
        s.connect((args.host, args.port))
        sys.stdout.write(_read_all(s).decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
