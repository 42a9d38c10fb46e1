"""worker/wasm/cache.py: compiled modules stored and mapped back, only from files this user
(or root) owns and nobody else may write; the runtime compiles once per user (vm.py)."""

from __future__ import annotations

import os

import pytest
import wasmtime

from baton.worker.wasm import cache, vm

WAT = """(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"""


def engine():
    return vm.runtime().engine


def test_a_stored_module_loads_back_and_another_engines_file_is_passed_over(tmp_path):
    store = cache.ModuleCache(str(tmp_path), "fp")
    module = wasmtime.Module(engine(), wasmtime.wat2wasm(WAT))
    assert store.load(engine(), "k") is None
    assert store.store("k", module)
    assert os.stat(store.path("k")).st_mode & 0o777 == 0o644
    loaded = store.load(engine(), "k")
    assert loaded is not None
    assert [e.name for e in loaded.exports] == [e.name for e in module.exports]
    assert cache.ModuleCache(str(tmp_path), "other").load(engine(), "k") is None
    with open(store.path("k"), "r+b") as f:                    # damaged: compile instead
        f.write(b"garbage!")
    assert store.load(engine(), "k") is None


def code_section(data: bytes) -> tuple[int, int]:
    """(offset, size) of .text in a serialized module (an ELF file)."""
    import struct
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * entry_size)
    strings = section(names)[4]
    for i in range(count):
        name, _, _, _, offset, size = section(i)
        start = strings + name
        if data[start:data.index(b"\0", start)] == b".text":
            return offset, size
    raise AssertionError("no .text")


def test_a_file_whose_machine_code_is_damaged_is_not_run(tmp_path):
    """wasmtime checks the header, not the code: a torn write or a bad block in .text was
    mapped and run (SIGSEGV in every worker). The stored sha256 no longer matches."""
    store = cache.ModuleCache(str(tmp_path), "fp")
    code = """(module (func (export "f") (param i32) (result i32)
      (i32.mul (i32.add (local.get 0) (i32.const 7)) (local.get 0))))"""
    module = wasmtime.Module(engine(), wasmtime.wat2wasm(code))
    assert store.store("k", module) and store.load(engine(), "k") is not None
    with open(store.path("k"), "r+b") as f:
        offset, size = code_section(f.read())
        assert size > 16
        f.seek(offset + size // 2)
        f.write(b"\xff" * 8)                               # headers intact
    assert store.load(engine(), "k") is None


def test_a_file_others_may_write_is_not_trusted(tmp_path):
    store = cache.ModuleCache(str(tmp_path), "fp")
    store.store("k", wasmtime.Module(engine(), wasmtime.wat2wasm(WAT)))
    os.chmod(store.path("k"), 0o666)
    assert store.load(engine(), "k") is None


def test_the_default_directory_is_made_checked_and_handed_to_children(tmp_path, monkeypatch):
    where = tmp_path / "c"
    monkeypatch.setenv(cache.ENV, str(where))
    assert cache.default("fp").directory == str(where)
    assert where.stat().st_mode & 0o777 == 0o755
    os.chmod(where, 0o777)                                     # open to others: not used
    assert cache.default("fp") is None
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.default("fp") is None
    monkeypatch.delenv(cache.ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert cache.default("fp").directory == str(tmp_path / f"baton-wasm-{os.geteuid()}")
    assert os.environ[cache.ENV] == str(tmp_path / f"baton-wasm-{os.geteuid()}")


def test_the_default_directory_is_0755_whatever_the_umask(tmp_path, monkeypatch):
    """Workers that became `baton` read the root master's modules (umask 077 made it 0700)."""
    monkeypatch.setenv(cache.ENV, str(tmp_path / "c"))
    old = os.umask(0o077)
    try:
        assert cache.default("fp") is not None
    finally:
        os.umask(old)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755


def test_old_files_are_trimmed(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_FILES", 2)
    store = cache.ModuleCache(str(tmp_path), "fp")
    module = wasmtime.Module(engine(), wasmtime.wat2wasm(WAT))
    for i, key in enumerate("abc"):
        store.store(key, module)
        os.utime(store.path(key), (1000 + i, 1000 + i))
    store.store("d", module)
    assert sorted(p.name[0] for p in tmp_path.iterdir()) == ["c", "d"]


def test_the_runtime_compiles_once_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path))
    code = wasmtime.wat2wasm(WAT)
    first = vm.Runtime()
    first.compile(code, "key1", keep=False)
    assert os.listdir(tmp_path) == [os.path.basename(first.disk.path("key1"))]
    second = vm.Runtime()
    compiled = []
    monkeypatch.setattr(second.wasmtime, "Module", _Refuse(compiled, second.wasmtime.Module))
    assert second.compile(code, "key1") is not None and compiled == []


class _Refuse:
    """wasmtime.Module that records a compile (deserialize stays the real one)."""

    def __init__(self, calls, real):
        self.calls, self.real = calls, real
        self.deserialize = real.deserialize
        self.deserialize_file = real.deserialize_file

    def __call__(self, *args):
        self.calls.append(args)
        return self.real(*args)


@pytest.fixture(autouse=True)
def _own_env():
    """cache.default() sets BATON_WASM_CACHE itself (for the children): put it back."""
    before = os.environ.pop(cache.ENV, None)
    yield
    os.environ.pop(cache.ENV, None)
    if before is not None:
        os.environ[cache.ENV] = before


def _as_user(uid: int, gid: int, run) -> str:
    """run() in a child that became uid:gid (as a worker or the xDS agent does), its answer."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:            # the child: never back into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            answer = str(run())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = f"error: {exc!r}"
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="a root master and its worker user")
def test_a_root_masters_workers_and_agent_share_a_directory_of_their_user(monkeypatch):
    """A root master with --worker-user: the xDS agent (that user) wrote its compiled modules
    where the workers, reading the master's directory, never looked, and could not write the
    master's. share_with gives the user baton-wasm-<uid>: written and read there first, then
    the master's; the master (root) never reads it."""
    import tempfile
    base = tempfile.mkdtemp(prefix="w3-cache-")
    try:
        os.chmod(base, 0o755)
        monkeypatch.setenv(cache.ENV, os.path.join(base, "baton-wasm-0"))
        monkeypatch.delenv(cache.SHARED_ENV, raising=False)
        master = cache.default("fp")
        assert master.store_bytes("from-master.wasm", b"m")
        shared = cache.share_with(65534, 65534)
        assert shared == os.path.join(base, "baton-wasm-65534")
        assert os.stat(shared).st_uid == 65534
        assert cache.default("fp").directory == master.directory      # the master: its own

        def in_the_worker():
            disk = cache.default("fp")
            return (disk.directory, disk.fallback.directory,
                    disk.store_bytes("from-agent.wasm", b"a"))
        assert _as_user(65534, 65534, in_the_worker) == \
            str((shared, master.directory, True))
        assert os.stat(os.path.join(shared, "from-agent.wasm")).st_uid == 65534
    finally:
        import shutil
        shutil.rmtree(base)
