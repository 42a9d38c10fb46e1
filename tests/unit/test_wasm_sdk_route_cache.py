"""The AssemblyScript SDK's clear_route_cache() (@solo-io/proxy-runtime 0.1.8) imports
env.proxy_clear_route_cache, an ABI 0.1 hostcall Envoy 1.40 does not offer: Envoy refuses
the module ("Failed to load Wasm module due to a missing import:
env.proxy_clear_route_cache", measured with .venv-envoy/bin/envoy), and so does Baton; the
foreign function clear_route_cache is the way (README, "Wasm filters")."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("wasmtime")

from baton.worker.wasm import plugin  # noqa: E402
from baton.worker.wasm.vm import WasmError  # noqa: E402

from .test_wasm_vm import config, module  # noqa: E402


def test_a_module_importing_proxy_clear_route_cache_is_refused_as_envoy_refuses_it():
    code = module("(drop (call $clear)) (i32.const 0)",
                  '(import "env" "proxy_clear_route_cache" (func $clear (result i32)))')
    with pytest.raises(WasmError, match=re.escape(
            "Failed to load Wasm module due to a missing import: env.proxy_clear_route_cache")):
        plugin.validate(config(code))
