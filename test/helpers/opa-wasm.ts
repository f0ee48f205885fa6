// The OPA Wasm ABI test modules live beside the benchmark, which uses them too.
export { opaTestModule, tarGz, type WasmOptions } from '../../bench/opa-test-module.mjs';
