"""proxy-wasm: the ABI host (abi.py, sans-IO), the wasmtime adapter (vm.py) and the per-worker
VMs of the HTTP Wasm filter (worker/proxy/http/wasm.py). wasmtime is imported only by vm.py,
on first use: a worker without a Wasm filter never loads it."""
