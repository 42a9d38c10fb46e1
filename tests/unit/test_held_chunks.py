"""held_chunks.with_chunk: the one way a held body (a stream's, the filters', a router's)
gains a chunk, () until the first (worker/proxy/http/held_chunks.py)."""

import re
from pathlib import Path

from baton.worker.proxy.http.held_chunks import with_chunk

HTTP = Path(__file__).resolve().parents[2] / "worker" / "proxy" / "http"


def test_the_empty_tuple_becomes_a_list_and_a_list_grows_in_place():
    first = with_chunk((), b"a")
    assert first == [b"a"]
    second = with_chunk(first, b"b")
    assert second is first and second == [b"a", b"b"]


def test_no_held_body_is_appended_to_in_place_elsewhere():
    # A held body may still be the empty tuple: appending to it directly raised
    # AttributeError and dropped the connection once (review R2, finding 1).
    direct = re.compile(r"(held_body|router\.body|self\.body)\.append\(")
    found = [f"{path.name}:{n}" for path in sorted(HTTP.glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if direct.search(line) and path.name != "held_chunks.py"]
    assert found == []
