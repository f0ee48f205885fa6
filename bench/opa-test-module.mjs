// Shared by the tests and the benchmark (test modules, not a Rego compiler: see below).
import { gzipSync } from 'node:zlib';
import wabtInit from 'wabt';

/**
 * Test WebAssembly modules that implement the OPA Wasm ABI 1.2 (the calls the opa-wasm SDK makes:
 * builtins, entrypoints, opa_malloc, opa_json_parse, opa_json_dump, opa_heap_ptr_get/set and
 * opa_eval), built from WebAssembly text at test time with wabt. They are NOT a Rego compiler:
 * each module decides by looking for marker strings in the input document it is given, so the
 * tests can drive allow, deny, object results and aborts through the real SDK and engine.
 *
 * Decisions of the standard module (first match wins):
 * - input contains `"/abort`  → calls opa_abort (evaluation error)
 * - input contains `"/object` → {"allowed": false, "http_status": 418, "body": "short and stout",
 *                                 "headers": {"x-rego": "on"}, "response_headers_to_add": {"x-rego-says": "no"}}
 * - input contains `"/headers`→ {"allowed": true, "headers": {"x-rego-user": "alice"},
 *                                 "response_headers_to_add": {"x-rego-says": "yes"}}
 * - input contains the `allowMarker` (default `"/allowed`) → true
 * - otherwise → false
 */

function bytes(s) {
  return [...Buffer.from(s, 'utf8')].map((b) => `\\${b.toString(16).padStart(2, '0')}`).join('');
}

/** @param {{ allowMarker?: string, abiVersion?: number, omitExport?: string }} opts */
export async function opaTestModule(opts = {}) {
  const allow = opts.allowMarker ?? '"/allowed';
  const strings = [
    ['builtins', 0x100, '{}'],
    ['entrypoints', 0x180, '{"envoy/authz/allow":0,"envoy/authz/other":1}'],
    ['rTrue', 0x200, '[{"result":true}]'],
    ['rFalse', 0x280, '[{"result":false}]'],
    [
      'rObject',
      0x300,
      '[{"result":{"allowed":false,"http_status":418,"body":"short and stout","headers":{"x-rego":"on"},"response_headers_to_add":{"x-rego-says":"no"}}}]',
    ],
    [
      'rHeaders',
      0x480,
      '[{"result":{"allowed":true,"headers":{"x-rego-user":"alice"},"response_headers_to_add":{"x-rego-says":"yes"}}}]',
    ],
    ['mAbort', 0x600, '"/abort'],
    ['mObject', 0x640, '"/object'],
    ['mHeaders', 0x680, '"/headers'],
    ['mAllow', 0x6c0, allow],
    ['abortMsg', 0x700, 'aborted by the test policy'],
  ];
  const at = (name) => strings.find((s) => s[0] === name)[1];
  const len = (name) => Buffer.byteLength(strings.find((s) => s[0] === name)[2]);
  const exp = (name, body) => (opts.omitExport === name ? body.replace(/\(export "[^"]+"\)/, '') : body);
  const wat = `(module
  (import "env" "memory" (memory 2))
  (import "env" "opa_abort" (func $opa_abort (param i32)))
  (import "env" "opa_println" (func $opa_println (param i32)))
  (import "env" "opa_builtin0" (func $b0 (param i32 i32) (result i32)))
  ${strings.map(([, addr, text]) => `(data (i32.const ${addr}) "${bytes(text)}\\00")`).join('\n  ')}
  (global $heap (mut i32) (i32.const 4096))
  (global (export "opa_wasm_abi_version") i32 (i32.const ${opts.abiVersion ?? 1}))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))
  ${exp('builtins', `(func (export "builtins") (result i32) (i32.const ${at('builtins')}))`)}
  ${exp('entrypoints', `(func (export "entrypoints") (result i32) (i32.const ${at('entrypoints')}))`)}
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_heap_ptr_set") (param i32) (global.set $heap (local.get 0)))
  (func $malloc (export "opa_malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1)))))
    (local.get $p))
  (func (export "opa_free") (param i32))
  ;; A "value" here is the address of its JSON text: parsing is the identity, and so is dumping.
  (func (export "opa_json_parse") (param $addr i32) (param $len i32) (result i32) (local.get $addr))
  (func (export "opa_json_dump") (param $v i32) (result i32) (local.get $v))
  ;; Does [p, p+n) contain [q, q+m)?
  (func $contains (param $p i32) (param $n i32) (param $q i32) (param $m i32) (result i32) (local $i i32) (local $j i32)
    (block $none
      (loop $outer
        (br_if $none (i32.gt_s (i32.add (local.get $i) (local.get $m)) (local.get $n)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $inner
            (if (i32.ge_u (local.get $j) (local.get $m)) (then (return (i32.const 1))))
            (br_if $mismatch (i32.ne
              (i32.load8_u (i32.add (i32.add (local.get $p) (local.get $i)) (local.get $j)))
              (i32.load8_u (i32.add (local.get $q) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const 0))
  ${exp(
    'opa_eval',
    `(func (export "opa_eval") (param $reserved i32) (param $entrypoint i32) (param $data i32) (param $input i32) (param $inputLen i32) (param $heapPtr i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heapPtr))
    (if (call $contains (local.get $input) (local.get $inputLen) (i32.const ${at('mAbort')}) (i32.const ${len('mAbort')}))
      (then (call $opa_abort (i32.const ${at('abortMsg')})) (unreachable)))
    (if (call $contains (local.get $input) (local.get $inputLen) (i32.const ${at('mObject')}) (i32.const ${len('mObject')}))
      (then (return (i32.const ${at('rObject')}))))
    (if (call $contains (local.get $input) (local.get $inputLen) (i32.const ${at('mHeaders')}) (i32.const ${len('mHeaders')}))
      (then (return (i32.const ${at('rHeaders')}))))
    (if (call $contains (local.get $input) (local.get $inputLen) (i32.const ${at('mAllow')}) (i32.const ${len('mAllow')}))
      (then (return (i32.const ${at('rTrue')}))))
    (i32.const ${at('rFalse')}))`,
  )}
)`;
  const wabt = await wabtInit();
  const mod = wabt.parseWat('opa-test.wat', wat);
  try {
    return Buffer.from(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

/** A `opa build -t wasm` style bundle: a gzipped tar with /policy.wasm and /data.json. */
/** @param {Record<string, Buffer | string>} files */
export function tarGz(files) {
  const blocks = [];
  for (const [name, content] of Object.entries(files)) {
    const body = Buffer.isBuffer(content) ? content : Buffer.from(content);
    const h = Buffer.alloc(512);
    h.write(name, 0, 100, 'utf8');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(`${body.length.toString(8).padStart(11, '0')}\0`, 124);
    h.write('00000000000\0', 136);
    h.write('        ', 148);
    h.write('0', 156);
    h.write('ustar\0', 257);
    h.write('00', 263);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}
