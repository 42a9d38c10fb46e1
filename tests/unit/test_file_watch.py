"""xds/file_watch.py on a real loop and real files: a file rewritten in a watched directory,
a kubelet-style `..data` symlink swap in a watched_directory, a burst reported once."""

from __future__ import annotations

import asyncio
import os

from baton.xds.file_watch import DirectoryWatcher


def _run(change, watches):
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        done = loop.create_future()

        def on_change(keys):
            seen.append(set(keys))
            if not done.done():
                loop.call_later(0.2, done.set_result, None)   # room for a second (wrong) call
        watcher = DirectoryWatcher(loop, on_change)
        watcher.set_watches(watches)
        change()
        await asyncio.wait_for(done, 10)
        watcher.close()
        return seen
    return asyncio.run(main())


def test_named_files_in_their_directory(tmp_path):
    (tmp_path / "tls.crt").write_text("a")

    def change():
        (tmp_path / "other").write_text("not watched")
        (tmp_path / "tls.crt").write_text("b")            # rewritten in place
        (tmp_path / "tls.key").write_text("b")
    seen = _run(change, [(str(tmp_path), ["tls.crt", "tls.key"], "server")])
    assert seen == [{"server"}]                            # one call for the burst


def test_a_symlink_swap_in_a_watched_directory(tmp_path):
    (tmp_path / "..1").mkdir()
    os.symlink("..1", tmp_path / "..data")

    def change():
        (tmp_path / "..2").mkdir()
        os.symlink("..2", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    seen = _run(change, [(str(tmp_path), None, ("ads", "default")),
                               (str(tmp_path / "..1"), ["unrelated"], "x")])
    assert seen == [{("ads", "default")}]
