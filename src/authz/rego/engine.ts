import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { gunzipSync } from 'node:zlib';
import type { RegoConfig } from '../../config/types.js';
import { PortcullisError } from '../../errors.js';

export type { RegoConfig };

/**
 * Rego policies compiled to WebAssembly (`opa build -t wasm -e <entrypoint>`), evaluated in-process
 * with the opa-wasm SDK — no OPA sidecar, no network hop. Evaluation is synchronous and the
 * process single-threaded, so one instance serves every request in turn; it is never entered twice
 * at once. The SDK uses ABI 1.2's `opa_eval` fast path when the module offers it.
 */

/** The parts of the opa-wasm SDK used here (its published types name no default export). */
interface LoadedPolicy {
  readonly entrypoints: Record<string, number>;
  evaluate(input: unknown, entrypoint: number): unknown;
  setData(data: unknown): void;
}
interface OpaSdk {
  loadPolicySync(module: WasmModule): LoadedPolicy;
}
let sdk: OpaSdk | null = null;

/** The SDK, required on the first Rego engine: a config without Rego never loads it. */
function opa(): OpaSdk {
  if (sdk === null) sdk = createRequire(import.meta.url)('@open-policy-agent/opa-wasm') as OpaSdk;
  return sdk;
}

/** The WebAssembly API (its types come with the DOM library, which this Node build leaves out). */
type WasmModule = object;
const WA = (
  globalThis as unknown as {
    WebAssembly: {
      Module: {
        new (bytes: Uint8Array): WasmModule;
        exports(m: WasmModule): { name: string }[];
        imports(m: WasmModule): { module: string; name: string }[];
      };
    };
  }
).WebAssembly;

export interface RegoDecision {
  readonly allowed: boolean;
  /** Status for a denial (403 unless the policy set http_status). */
  readonly status: number;
  /** Body for a denial ('' = the default text). */
  readonly body: string;
  /** Headers to add to the upstream request (allowed) — OPA-Envoy's `headers`. */
  readonly upstreamHeaders: readonly (readonly [string, string])[];
  /** Headers to add to the response — OPA-Envoy's `response_headers_to_add` (or `headers` on a denial). */
  readonly responseHeaders: readonly (readonly [string, string])[];
}

/** Exports the SDK calls; a module without them is not an OPA Wasm policy (or is of another ABI). */
const REQUIRED_EXPORTS = [
  'memory',
  'opa_malloc',
  'opa_json_parse',
  'opa_json_dump',
  'opa_heap_ptr_get',
  'opa_heap_ptr_set',
  'builtins',
  'entrypoints',
];

function fail(message: string): never {
  throw new PortcullisError('ERR_POLICY_INVALID', message);
}

/** Reads the files of an OPA bundle: a gzipped tar (ustar), as `opa build` writes it. */
export function readBundle(file: string): Map<string, Buffer> {
  let tar: Buffer;
  try {
    tar = gunzipSync(readFileSync(file));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return fail(
      code === 'ENOENT' ? 'file not found' : 'not a gzipped tar (an OPA bundle as "opa build" writes it)',
    );
  }
  const files = new Map<string, Buffer>();
  for (let off = 0; off + 512 <= tar.length; ) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const field = (start: number, len: number): string =>
      header.toString('utf8', start, start + len).replace(/\0.*$/s, '');
    const name = field(345, 155) === '' ? field(0, 100) : `${field(345, 155)}/${field(0, 100)}`;
    const size = Number.parseInt(field(124, 12).trim() || '0', 8);
    if (!Number.isFinite(size) || size < 0) return fail('a tar header in the bundle is corrupt');
    const type = field(156, 1);
    const start = off + 512;
    if (start + size > tar.length) return fail('the bundle is truncated');
    if (type === '0' || type === '') files.set(name.replace(/^\.?\//, ''), tar.subarray(start, start + size));
    off = start + Math.ceil(size / 512) * 512;
  }
  return files;
}

type Policy = LoadedPolicy;

export class RegoEngine {
  readonly entrypoint: string;
  readonly headers: readonly string[] | null;
  private readonly policy: Policy;
  private readonly entrypointId: number;

  private constructor(
    policy: Policy,
    entrypoint: string,
    entrypointId: number,
    headers: readonly string[] | null,
  ) {
    this.policy = policy;
    this.entrypoint = entrypoint;
    this.entrypointId = entrypointId;
    this.headers = headers;
  }

  /** Loads and checks a module; throws with a message that says what is wrong with it. */
  static load(config: RegoConfig): RegoEngine {
    let wasm: Buffer;
    let data: unknown = {};
    if (config.bundle !== null) {
      const files = readBundle(config.bundle);
      const w = files.get('policy.wasm');
      if (w === undefined)
        fail(
          `the bundle has no /policy.wasm (found: ${[...files.keys()].join(', ') || 'nothing'}); build it with "opa build -t wasm"`,
        );
      wasm = w;
      const d = files.get('data.json');
      if (d !== undefined) data = parseData(d, 'data.json in the bundle');
    } else {
      try {
        wasm = readFileSync(config.wasm as string);
      } catch (err) {
        return fail(`cannot read the wasm file (${(err as NodeJS.ErrnoException).code})`);
      }
      if (config.data !== null) {
        let d: Buffer;
        try {
          d = readFileSync(config.data);
        } catch (err) {
          return fail(`cannot read the data file (${(err as NodeJS.ErrnoException).code})`);
        }
        data = parseData(d, 'the data file');
      }
    }
    let module: WasmModule;
    try {
      module = new WA.Module(wasm);
    } catch (err) {
      return fail(`not a WebAssembly module: ${(err as Error).message}`);
    }
    const exported = new Set(WA.Module.exports(module).map((e) => e.name));
    const imported = WA.Module.imports(module).some((i) => i.module === 'env' && i.name === 'memory');
    const missing = REQUIRED_EXPORTS.filter((n) => !(n === 'memory' && imported) && !exported.has(n));
    if (!exported.has('opa_eval') && !exported.has('eval')) missing.push('opa_eval');
    if (missing.length > 0) {
      fail(
        `not an OPA Wasm policy (ABI 1.x): missing export${missing.length === 1 ? '' : 's'} ${missing.join(', ')}`,
      );
    }
    let policy: Policy;
    try {
      policy = opa().loadPolicySync(module);
      policy.setData(data);
    } catch (err) {
      // The SDK throws strings for ABI problems ("unsupported ABI version 2").
      return fail(`the OPA Wasm SDK refused the module: ${err instanceof Error ? err.message : String(err)}`);
    }
    const entrypoints = policy.entrypoints;
    const id = entrypoints[config.entrypoint];
    if (id === undefined) {
      fail(
        `entrypoint "${config.entrypoint}" is not in the module (it has: ${Object.keys(entrypoints).join(', ') || 'none'}); build with -e ${config.entrypoint}`,
      );
    }
    return new RegoEngine(policy, config.entrypoint, id, config.headers);
  }

  /**
   * Evaluates the input. A policy that aborts or errs, or whose result is undefined or not a
   * boolean or an OPA-Envoy result object, denies (fail closed); the error is thrown for the caller
   * to log and record.
   */
  evaluate(input: unknown): RegoDecision {
    const rs = this.policy.evaluate(input, this.entrypointId) as { result?: unknown }[] | undefined;
    if (!Array.isArray(rs) || rs.length === 0) return DENY_UNDEFINED;
    return interpret(rs[0]?.result);
  }
}

const DENY_UNDEFINED: RegoDecision = {
  allowed: false,
  status: 403,
  body: '',
  upstreamHeaders: [],
  responseHeaders: [],
};
const ALLOW_PLAIN: RegoDecision = {
  allowed: true,
  status: 200,
  body: '',
  upstreamHeaders: [],
  responseHeaders: [],
};
const DENY_PLAIN: RegoDecision = DENY_UNDEFINED;

function parseData(buf: Buffer, what: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    return fail(`${what} is not valid JSON`);
  }
}

/** Header sets as OPA-Envoy accepts them: an object of name → value(s), or a list of {key, value}. */
function headerPairs(v: unknown): [string, string][] {
  const out: [string, string][] = [];
  if (Array.isArray(v)) {
    for (const e of v) {
      if (e !== null && typeof e === 'object' && typeof (e as { key?: unknown }).key === 'string') {
        out.push([(e as { key: string }).key.toLowerCase(), String((e as { value?: unknown }).value ?? '')]);
      }
    }
  } else if (v !== null && typeof v === 'object') {
    for (const [k, val] of Object.entries(v)) {
      if (Array.isArray(val)) for (const x of val) out.push([k.toLowerCase(), String(x)]);
      else if (val !== undefined && val !== null) out.push([k.toLowerCase(), String(val)]);
    }
  }
  return out.filter(([k]) => /^[!#$%&'*+\-.^_`|~0-9a-z]+$/.test(k));
}

/** A boolean, or OPA-Envoy's {allowed, headers, response_headers_to_add, http_status, body}. */
export function interpret(result: unknown): RegoDecision {
  if (result === true) return ALLOW_PLAIN;
  if (result === false || result === undefined || result === null || typeof result !== 'object')
    return DENY_PLAIN;
  const r = result as Record<string, unknown>;
  const allowed = r.allowed === true;
  const status =
    typeof r.http_status === 'number' && r.http_status >= 100 && r.http_status <= 599
      ? Math.trunc(r.http_status)
      : 403;
  const headers = headerPairs(r.headers);
  const toAdd = headerPairs(r.response_headers_to_add);
  return {
    allowed,
    status: allowed ? 200 : status,
    body: typeof r.body === 'string' ? r.body : '',
    upstreamHeaders: allowed ? headers : [],
    // On a denial OPA-Envoy sends `headers` with the local reply; on an allow they go upstream.
    responseHeaders: allowed ? toAdd : [...headers, ...toAdd],
  };
}
