#!/bin/bash
# Reload time of an idle Baton on examples/quickstart.yaml (bench/RESULTS.md, "Where a reload's
# time goes"): 15 reloads 0.5 s apart; prints the median and minimum of `baton reload`'s wall
# time and of the old master's "took over in". Uses the quickstart's ports (9901, 10000, 10080).
# Compare:  PYTHONDONTWRITEBYTECODE=1 bench/reload_breakdown.sh
#           env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/baton-pyc bench/reload_breakdown.sh
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$ROOT/.venv/bin/baton" run -c "$ROOT/examples/quickstart.yaml" --runtime-dir "$WORK/run" \
    --concurrency 2 > "$WORK/log" 2>&1 &
KEEPER=$!
for _ in $(seq 300); do      # /ready, for at most 30 s
    curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9901/ready 2>/dev/null | grep -q 200 && break
    sleep 0.1
done
WALL=()
for _ in $(seq 15); do
    start=$(date +%s%N)
    "$ROOT/.venv/bin/baton" reload --runtime-dir "$WORK/run" > /dev/null
    WALL+=($(( ($(date +%s%N) - start) / 1000000 )))
    sleep 0.5                # the cadence of the benchmark, not a wait for anything
done
kill -TERM "$KEEPER"
wait "$KEEPER" || true
TOOK=$(sed -n 's/.*took over in \([0-9.]*\)s/\1/p' "$WORK/log" | awk '{printf "%d ", $1 * 1000}')
python3 - "${WALL[*]}" "$TOOK" <<'PY'
import statistics, sys
wall, took = ([int(x) for x in arg.split()] for arg in sys.argv[1:])
for name, xs in (("baton reload wall", wall), ("took over in", took)):
    print(f"{name}: median {statistics.median(xs):.0f} ms, min {min(xs)} ms, max {max(xs)} ms")
PY
uptime
