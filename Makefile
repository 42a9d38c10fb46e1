# The two commands a newcomer runs (README): `make run` and `make test`.
PY := .venv/bin/python

.PHONY: install run test unit integration upgrade-test bench bench-reload bench-intercept bench-http bench-tls bench-xds istio-acceptance wasm-fixtures clean

install:
	@BATON_TEST_TOOLS=1 scripts/install.sh

run: install
	@$(PY) examples/quickstart.py

test: install
	@$(PY) -m pytest -q tests

unit: install
	@$(PY) -m pytest -q tests/unit

integration: install
	@$(PY) -m pytest -q tests/integration

# Upgrade from every release in tests/releases.txt to this tree and back, under load (part of
# `make test` too). FROM=<commit> adds another starting point.
upgrade-test: install
	@BATON_UPGRADE_FROM=$(FROM) $(PY) -m pytest -q tests/integration/test_upgrade_releases.py

bench: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/run.py

bench-reload: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/reload.py

bench-intercept: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/intercept.py

bench-http: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/http_bench.py

bench-tls: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/tls_bench.py

bench-xds: install
	@BATON_BENCH_TOOLS=1 scripts/install.sh
	@$(PY) bench/xds_bench.py

# How many of the resources real istiod sent (../shared/istio-dumps, or ISTIO_DUMPS) Baton
# accepts, and the refusal reasons ranked (scripts/istio_acceptance.py).
istio-acceptance: install
	@$(PY) scripts/istio_acceptance.py $(ISTIO_DUMPS)

# Rebuild the Wasm tests' AssemblyScript plugin (tests/fixtures/wasm/demo.wasm) from its source
# with npm; the build is reproducible and the .wasm is committed, so the tests need no npm.
wasm-fixtures:
	@tests/fixtures/wasm/demo-plugin/build.sh
	@git diff --quiet -- tests/fixtures/wasm/demo.wasm && echo "demo.wasm: identical to the committed build" \
		|| echo "demo.wasm changed: commit it with its source"

clean:
	rm -rf .venv .venv-envoy build *.egg-info
