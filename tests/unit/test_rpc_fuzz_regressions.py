"""Replays what tests/fuzz/fuzz_rpc.py found (tests/fuzz/corpus/rpc/, kind-<hash>.bin) and a
short seeded run of the same generator, so a regression of the Dubbo or Bolt codec fails here
and not only in the million-input run."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_rpc.py"
_spec = importlib.util.spec_from_file_location("fuzz_rpc", FUZZ)
fuzz_rpc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_rpc)

def test_every_saved_input_passes():
    corpus = sorted(fuzz_rpc.CORPUS.glob("*.bin")) if fuzz_rpc.CORPUS.is_dir() else []
    for path in corpus:
        fuzz_rpc.check(path.name.split("-")[0], path.read_bytes(), random.Random(0))


def test_a_short_seeded_run_passes():
    rng = random.Random(16)
    pools = fuzz_rpc.seeds(rng)
    for i in range(3000):
        kind = "dubbo" if i % 2 else "bolt"
        base = b"".join(rng.choice(pools[kind]) for _ in range(rng.choice((1, 2, 3))))
        fuzz_rpc.check(kind, fuzz_rpc.mutate(rng, base, pools[kind]), rng)
