"""The Hessian 2.0 reader against hessian.js, the maintained implementation on npm (installed
for the RPC tests): values generated here, encoded by hessian.js, read back by Baton."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs.hessian2 import JavaObject, Reader

PEERS = Path(__file__).resolve().parents[1] / "integration" / "rpc_peers"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None or not (PEERS / "node_modules" / "hessian.js").is_dir(),
    reason="node and hessian.js (scripts/install.sh with BATON_TEST_TOOLS=1) are needed")

_keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_scalars = (st.none() | st.booleans() | st.integers(-2**31, 2**31 - 1)
            | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
            | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
            | st.integers(-2**53, 2**53).map(lambda n: {"$class": "java.lang.Long", "$": n}))


def _object(children):
    return st.dictionaries(st.from_regex(r"[a-z][a-zA-Z0-9]{0,6}", fullmatch=True), children,
                           max_size=3).map(lambda f: {"$class": "com.example.Thing", "$": f})


_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=5)
                       | st.dictionaries(_keys.filter(lambda k: not k.startswith("$")), c, max_size=4)
                       | _object(c), max_leaves=20)


def expected(value):
    """What the reader should give for a JSON value in hessian.js' conventions."""
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        if value.get("$class") == "java.lang.Long":
            return value["$"]
        if "$class" in value:
            return JavaObject(value["$class"], {k: expected(v) for k, v in value["$"].items()})
        return {k: expected(v) for k, v in value.items()}
    return value


def hessian_js(values: list) -> list[bytes]:
    out = subprocess.run([NODE, str(PEERS / "hessian_js.js")], input="".join(
        json.dumps(v) + "\n" for v in values), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [bytes.fromhex(line) for line in out.stdout.split()]


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_values, min_size=300, max_size=300))
def test_reads_what_hessian_js_writes(values):
    for value, data in zip(values, hessian_js(values), strict=True):
        reader = Reader(data)
        assert repr(reader.read()) == repr(expected(value)), data.hex()
        assert reader.at_end
