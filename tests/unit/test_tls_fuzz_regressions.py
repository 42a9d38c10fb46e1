"""Replays what tests/fuzz/fuzz_tls_record.py found (tests/fuzz/corpus/tls/*.json), with the
fuzzer's own property check, plus a short seeded run of the fuzzer itself."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_tls_record.py"
CORPUS = FUZZ.parent / "corpus" / "tls"


def load_fuzzer(path: Path = FUZZ):
    """A fuzz script of tests/fuzz/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzzer = load_fuzzer()


def test_corpus_cases():
    """Every input the fuzzer ever failed on (none so far: the directory may be absent)."""
    from baton.worker.tls.state import export_state

    from ..tls_helpers import layer_pair

    for case in sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []:
        found = json.loads(case.read_text())
        server, client = layer_pair(found["suite"], bytes.fromhex(found["key_seed"]))
        receiver = server if found["receiver"] == "server" else client
        fuzzer.check(export_state(receiver), [bytes.fromhex(p) for p in found["pieces"]],
                     bytes.fromhex(found["expected"]))


def test_short_fuzz_run():
    rng = random.Random(5)
    seeds = [fuzzer.make_seed(suite, receiver, 0, rng) for suite in fuzzer.SUITES
             for receiver in ("server", "client")]
    for _ in range(2000):
        seed = rng.choice(seeds)
        fuzzer.check(seed.state, fuzzer.pieces_of(rng, fuzzer.mutate(rng, seed, seeds)), seed.expected)
