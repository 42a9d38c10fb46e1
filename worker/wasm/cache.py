"""Compiled Wasm modules on disk, so that a module is compiled once, not once per worker.

    ModuleCache(directory).load(engine, key) -> wasmtime.Module or None
    ModuleCache(directory).store(key, module)
    default(fingerprint) -> the cache this process uses, or None when it cannot be trusted

The check of a Wasm filter's config compiles its module (plugin.validate, in the master for
a bootstrap, in the xDS agent for LDS/ECDS) before a worker needs it; the compiled code goes
here (wasmtime's Module.serialize), and each worker loads it (Module.deserialize_file, well
under a millisecond, where compiling the 22 KB AssemblyScript test plugin takes about 40 ms
and leaves the compiler's memory in the worker). Measured with `bench/wasm_bench.py
--startup` (bench/RESULTS.md).

The key is the code's sha256 and the engine's fingerprint (wasmtime's version and the
Config vm.py gives it): another engine's file is not used, and wasmtime refuses one it
cannot run anyway (then the process compiles, as before).

Where: BATON_WASM_CACHE, else baton-wasm-<uid> in $XDG_RUNTIME_DIR or the temporary
directory. The first process to use it sets BATON_WASM_CACHE, so the workers it forks, which
may have become another user (worker/privileges.py), look in the master's directory.

Trust: loading a file runs its machine code, so a file is loaded only when it and its
directory belong to this user or to root and nobody else may write them (a worker that
became `baton` trusts its root master's files, and a local user cannot plant one). The
directory is 0755 and the files 0644, for those workers to read; anything else is passed
over, and the process compiles. Files are written whole under a temporary name and renamed
into place after an fsync; the directory keeps the MAX_FILES most recent modules.
BATON_WASM_CACHE=off: no cache.

Shared with the worker user: a root master with --worker-user keeps its own directory (the
bootstrap's modules, which its workers read), and share_with(uid, gid) gives that user a
directory of its own, baton-wasm-<uid> beside it, named in BATON_WASM_CACHE_SHARED: the
workers and the xDS agent, which run as that user, write there and read there first, then
the master's (the agent checks and compiles the modules xDS sends: without it the workers
could neither read nor write what it compiled, and each compiled every such module again).
The master never reads the shared directory (its user may write it); the trust check is the
same for both directories.

Damage: wasmtime checks a file's header, not its machine code, and runs what it maps: a torn
write or a bad block in the code killed every worker that loaded it (SIGSEGV, each respawn
too). So a compiled module is stored with the sha256 of its bytes after them, and loaded only
when they still match (read whole, hashed and deserialized from memory: 0.5-0.67 ms a load
for the AssemblyScript test plugin's 108 KiB of compiled code, 0.07-0.12 ms mapped unchecked;
others on CPU).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

MAX_FILES = 64
SUFFIX = ".cwasm"
DIGEST = 32                     # sha256 of the serialized module, after it in the file
ENV = "BATON_WASM_CACHE"
SHARED_ENV = "BATON_WASM_CACHE_SHARED"


class ModuleCache:
    def __init__(self, directory: str, fingerprint: str = "", fallback=None):
        self.directory = directory
        self.fingerprint = fingerprint
        self.fallback = fallback        # a ModuleCache read after this one (the master's)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}-{self.fingerprint}{SUFFIX}")

    def load(self, engine, key: str):
        """The module stored for `key`, or None (none, not trusted, or not loadable)."""
        found = self._load(engine, key)
        if found is None and self.fallback is not None:
            found = self.fallback.load(engine, key)
        return found

    def _load(self, engine, key: str):
        path = self.path(key)
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or not trusted(info):
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        body = memoryview(data)[:-DIGEST]
        if len(data) <= DIGEST or hashlib.sha256(body).digest() != data[-DIGEST:]:
            return None                         # damaged (or an older layout): compile
        import wasmtime
        try:
            return wasmtime.Module.deserialize(engine, bytes(body))
        except Exception:  # noqa: BLE001 - another wasmtime's file: compile
            return None

    def store(self, key: str, module) -> bool:
        """Write `module` for `key` (best effort: False when it could not be written, as in
        a directory of the master's that a worker may not write)."""
        try:
            data = module.serialize()
        except Exception:  # noqa: BLE001 - wasmtime's errors have no common base
            return False
        return self.store_bytes(os.path.basename(self.path(key)),
                                data + hashlib.sha256(data).digest())

    def store_bytes(self, name: str, data: bytes) -> bool:
        """Write `name` whole (a temporary file, on the disk before it is renamed), 0644;
        trim the directory."""
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.directory, name))
            tmp = None
            self._trim()
            return True
        except OSError:         # a full disk, or not ours to write: just compile or fetch
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _trim(self) -> None:
        entries = []
        for name in os.listdir(self.directory):
            if name.endswith((SUFFIX, ".wasm")) and not name.startswith("."):
                path = os.path.join(self.directory, name)
                try:
                    entries.append((os.stat(path).st_mtime, path))
                except OSError:
                    pass
        entries.sort()
        for _, path in entries[:-MAX_FILES]:
            try:
                os.unlink(path)
            except OSError:
                pass


def trusted(info) -> bool:
    """Owned by this user or root, writable by its owner only."""
    return info.st_uid in (os.geteuid(), 0) and not info.st_mode & 0o022


def directory() -> str:
    explicit = os.environ.get(ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"baton-wasm-{os.geteuid()}")


def share_with(uid: int, gid: int) -> str | None:
    """In a root master whose workers become `uid`: make baton-wasm-<uid> theirs (0755) and
    name it for them (SHARED_ENV; the environment the workers and the xDS agent inherit).
    None when there is no such directory to give (then each uses the master's, read-only)."""
    path = directory()
    if path == "off":
        return None
    shared = os.path.join(os.path.dirname(path), f"baton-wasm-{uid}")
    try:
        os.mkdir(shared, 0o755)
        os.chown(shared, uid, gid)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(shared)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        return None             # not the user's own, or others may write it: not used
    os.environ[SHARED_ENV] = shared
    return shared


def _shared(fingerprint: str, master: "ModuleCache | None") -> "ModuleCache | None":
    """The worker user's directory (share_with), in a process that is that user."""
    path = os.environ.get(SHARED_ENV)
    if not path or os.geteuid() == 0:
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or not trusted(info):
        return None
    return ModuleCache(path, fingerprint, master)


def default(fingerprint: str) -> ModuleCache | None:
    """The cache this process uses (made if missing); None when BATON_WASM_CACHE is "off"
    or the directory cannot be trusted (then every process compiles for itself). A worker
    or xDS agent of a root master's worker user gets the directory share_with gave it,
    then the master's."""
    path = directory()
    if path == "off":
        return None
    master = _master(path, fingerprint)
    if master is not None and master.directory == os.environ.get(SHARED_ENV):
        return master           # a master that was not root: one directory
    return _shared(fingerprint, master) or master


def _master(path: str, fingerprint: str) -> ModuleCache | None:
    try:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)       # whatever the umask: workers that became `baton` read it
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or not trusted(info):
        return None
    os.environ[ENV] = path          # the workers forked later look here too
    return ModuleCache(path, fingerprint)
