"""Replays tests/fuzz/corpus/http1/: every input the HTTP/1.1 fuzzer (tests/fuzz/fuzz_http1.py)
saved as failing, and the inputs seeded there by hand (corpus/README.md says which), through the
fuzzer's own checks. Each file is replayed with several seeds, since a seed chooses the codec's
limits and the sizes of the reads. (tests/fuzz/corpus/http2/ is replayed the same way by
test_http2_codec.py::test_fuzz_corpus.)"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
CORPUS = FUZZ / "corpus" / "http1"
SEEDS = range(8)


def _fuzz_http1():
    spec = importlib.util.spec_from_file_location("fuzz_http1", FUZZ / "fuzz_http1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))


def test_the_corpus_is_there():
    # Seeded by hand: an empty or missing directory means the replay below tests nothing.
    kinds = {path.name.split("-")[0] for path in corpus_files()}
    assert kinds == {"server", "client"}, kinds


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_replay(path):
    fuzz = _fuzz_http1()
    check = fuzz.check_server if path.name.startswith("server-") else fuzz.check_client
    data = path.read_bytes()
    for seed in SEEDS:
        check(random.Random(seed), data)


def test_fuzzer_smoke():
    """The fuzz script's generation and checks still run (a few hundred inputs, as main())."""
    fuzz = _fuzz_http1()
    rng = random.Random(3)
    for _ in range(300):
        server_side = rng.random() < 0.6
        seeds = fuzz.REQUEST_SEEDS if server_side else fuzz.RESPONSE_SEEDS
        data = fuzz.mutate(rng, rng.choice(seeds), seeds)
        (fuzz.check_server if server_side else fuzz.check_client)(random.Random(rng.random()), data)
