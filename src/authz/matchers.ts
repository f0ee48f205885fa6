/**
 * Matchers compiled once from policy values and run per request without allocating: sets for
 * exact values, arrays for prefixes and suffixes, regular expressions built at load for path
 * templates, and a byte-level CIDR matcher (net.BlockList builds a SocketAddress per check).
 */

/**
 * Istio's string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` presence (any non-empty
 * value). `ignoreCase` lowercases the values; the caller passes lowercase input (hosts).
 */
export class StringMatcher {
  private readonly exact: ReadonlySet<string>;
  private readonly exactList: readonly string[];
  private readonly prefixes: readonly string[];
  private readonly suffixes: readonly string[];
  private readonly any: boolean;

  constructor(values: readonly string[], ignoreCase = false) {
    const exact: string[] = [];
    const prefixes: string[] = [];
    const suffixes: string[] = [];
    let any = false;
    for (const raw of values) {
      const v = ignoreCase ? raw.toLowerCase() : raw;
      if (v === '*') any = true;
      else if (v.endsWith('*')) prefixes.push(v.slice(0, -1));
      else if (v.startsWith('*')) suffixes.push(v.slice(1));
      else exact.push(v);
    }
    this.exact = new Set(exact);
    this.exactList = exact;
    this.prefixes = prefixes;
    this.suffixes = suffixes;
    this.any = any;
  }

  matches(s: string): boolean {
    if (s === '') return false;
    if (this.any || (this.exactList.length > 0 && this.exact.has(s))) return true;
    for (let i = 0; i < this.prefixes.length; i++) if (s.startsWith(this.prefixes[i] as string)) return true;
    for (let i = 0; i < this.suffixes.length; i++) if (s.endsWith(this.suffixes[i] as string)) return true;
    return false;
  }

  /** The same test on s[start, end) without slicing (for space-delimited claims such as `scope`). */
  matchesRange(s: string, start: number, end: number): boolean {
    const len = end - start;
    if (len <= 0) return false;
    if (this.any) return true;
    for (let i = 0; i < this.exactList.length; i++) {
      const v = this.exactList[i] as string;
      if (v.length === len && s.startsWith(v, start)) return true;
    }
    for (let i = 0; i < this.prefixes.length; i++) {
      const p = this.prefixes[i] as string;
      if (p.length <= len && s.startsWith(p, start)) return true;
    }
    for (let i = 0; i < this.suffixes.length; i++) {
      const x = this.suffixes[i] as string;
      if (x.length <= len && s.endsWith(x, end)) return true;
    }
    return false;
  }

  /** Any space-separated word of `s` matches. */
  matchesAnyWord(s: string): boolean {
    let start = 0;
    for (let i = 0; i <= s.length; i++) {
      if (i === s.length || s.charCodeAt(i) === 32) {
        if (this.matchesRange(s, start, i)) return true;
        start = i + 1;
      }
    }
    return false;
  }
}

/** Path values: Istio string matches plus `{*}` / `{**}` templates (compiled to anchored regexes at load). */
export class PathMatcher {
  private readonly strings: StringMatcher;
  private readonly templates: readonly RegExp[];

  constructor(values: readonly string[]) {
    const plain: string[] = [];
    const templates: RegExp[] = [];
    for (const v of values) {
      if (v.includes('{')) templates.push(templateRegex(v));
      else plain.push(v);
    }
    this.strings = new StringMatcher(plain);
    this.templates = templates;
  }

  matches(path: string): boolean {
    if (this.strings.matches(path)) return true;
    for (let i = 0; i < this.templates.length; i++) if ((this.templates[i] as RegExp).test(path)) return true;
    return false;
  }
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Envoy's URI template semantics: `{*}` is one non-empty segment, `{**}` is any run of characters
 * including "/" (zero or more segments). Validated beforehand (istio/authorization-policy.ts).
 */
export function templateRegex(template: string): RegExp {
  let re = '^';
  for (const [i, seg] of template.split('/').entries()) {
    if (i > 0) re += '/';
    if (seg === '{*}') re += '[^/]+';
    else if (seg === '{**}') re += '.*';
    else re += escapeRegex(seg);
  }
  return new RegExp(`${re}$`);
}

// --- IP addresses and CIDRs, as 16 bytes (IPv4 as ::ffff:a.b.c.d) ---

const SCRATCH = new Uint8Array(16);
const GROUPS = new Uint16Array(8);

function parseV4(s: string, start: number, end: number, out: Uint8Array, at: number): boolean {
  let octet = 0;
  let digits = 0;
  let part = 0;
  for (let i = start; i <= end; i++) {
    const c = i === end ? 46 : s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part > 3) return false;
      out[at + part] = octet;
      part++;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return false; // no leading zeros
      octet = octet * 10 + (c - 48);
      digits++;
      if (octet > 255) return false;
    } else return false;
  }
  return part === 4;
}

/** Parses an IPv4 or IPv6 address (zone ignored) into `out`; false if it is not an address. */
export function parseIp(s: string, out: Uint8Array): boolean {
  let end = s.indexOf('%');
  if (end === -1) end = s.length;
  if (s.indexOf(':') === -1) {
    out.fill(0, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    return parseV4(s, 0, end, out, 12);
  }
  // IPv6: up to 8 groups, one "::", an optional dotted IPv4 tail.
  let n = 0;
  let gap = -1;
  let i = 0;
  if (s.startsWith('::')) {
    gap = 0;
    i = 2;
  }
  while (i < end) {
    let j = i;
    let value = 0;
    while (j < end) {
      const c = s.charCodeAt(j);
      const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
      if (d === -1) break;
      value = value * 16 + d;
      j++;
    }
    if (j < end && s.charCodeAt(j) === 46) {
      // Dotted IPv4 tail: takes two groups.
      if (n > 6) return false;
      if (!parseV4(s, i, end, SCRATCH_V4, 0)) return false;
      GROUPS[n++] = ((SCRATCH_V4[0] as number) << 8) | (SCRATCH_V4[1] as number);
      GROUPS[n++] = ((SCRATCH_V4[2] as number) << 8) | (SCRATCH_V4[3] as number);
      i = end;
      break;
    }
    if (j === i || j - i > 4 || n >= 8) return false;
    GROUPS[n++] = value;
    if (j === end) {
      i = j;
      break;
    }
    if (s.charCodeAt(j) !== 58) return false;
    if (j + 1 < end && s.charCodeAt(j + 1) === 58) {
      if (gap !== -1) return false;
      gap = n;
      i = j + 2;
    } else {
      i = j + 1;
      if (i === end) return false;
    }
  }
  if (gap === -1 ? n !== 8 : n > 7) return false;
  const fill = 8 - n;
  for (let g = 0, k = 0; g < 8; g++) {
    const inGap = gap !== -1 && g >= gap && g < gap + fill;
    const v = inGap ? 0 : (GROUPS[k++] as number);
    out[g * 2] = v >> 8;
    out[g * 2 + 1] = v & 0xff;
  }
  return true;
}

const SCRATCH_V4 = new Uint8Array(4);

/** IP addresses and CIDR blocks, v4 and v6 (a v4 block also matches the v4-mapped v6 form). */
export class CidrMatcher {
  private readonly nets: readonly Uint8Array[];
  private readonly bits: readonly number[];

  constructor(values: readonly string[]) {
    const nets: Uint8Array[] = [];
    const bits: number[] = [];
    for (const v of values) {
      const slash = v.indexOf('/');
      const addr = slash === -1 ? v : v.slice(0, slash);
      const net = new Uint8Array(16);
      if (!parseIp(addr, net)) throw new Error(`"${v}" is not an IP address or CIDR`);
      const v4 = addr.indexOf(':') === -1;
      const full = v4 ? 32 : 128;
      const len = slash === -1 ? full : Number(v.slice(slash + 1));
      nets.push(net);
      bits.push(v4 ? 96 + len : len);
    }
    this.nets = nets;
    this.bits = bits;
  }

  matches(addr: string): boolean {
    if (addr === '' || !parseIp(addr, SCRATCH)) return false;
    for (let n = 0; n < this.nets.length; n++) {
      if (prefixEqual(this.nets[n] as Uint8Array, SCRATCH, this.bits[n] as number)) return true;
    }
    return false;
  }
}

function prefixEqual(a: Uint8Array, b: Uint8Array, bits: number): boolean {
  const whole = bits >> 3;
  for (let i = 0; i < whole; i++) if (a[i] !== b[i]) return false;
  const rest = bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((a[whole] as number) & mask) === ((b[whole] as number) & mask);
}
