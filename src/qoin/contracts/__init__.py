"""Smart contracts: the WebAssembly runtime (:mod:`qoin.contracts.wasm`) and the host ABI that
contracts import (:mod:`qoin.contracts.host`), specified in docs/spec/contracts.md."""

from qoin.contracts.wasm import WasmRuntime, default_runtime

__all__ = ["WasmRuntime", "default_runtime"]
