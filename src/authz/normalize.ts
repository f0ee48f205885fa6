/**
 * Path normalization, Istio's `meshConfig.pathNormalization` options. The normalized path is
 * both the one authorized and the one forwarded, so a policy and the service can never disagree
 * about which resource a request names.
 *
 * - NONE: the path as received.
 * - BASE (default): `\` becomes `/`; percent-encoded unreserved characters (RFC 3986 §2.3) are
 *   decoded once and other escapes get uppercase hex (§6.2.2.1); dot segments are removed (§5.2.4).
 * - MERGE_SLASHES: BASE, then runs of `/` become one.
 * - DECODE_AND_MERGE_SLASHES: `%2F` and `%5C` are decoded first, then MERGE_SLASHES.
 * A `%00` is refused before any of this (by the request-line stage), in every mode.
 */
import type { PathNormalization } from '../config/types.js';

export type { PathNormalization };

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(c: number): boolean {
  return (
    (c >= 65 && c <= 90) ||
    (c >= 97 && c <= 122) ||
    (c >= 48 && c <= 57) ||
    c === 45 ||
    c === 46 ||
    c === 95 ||
    c === 126
  );
}

/** Whether the path may need work; most paths do not, and they are returned as they are. */
function needsWork(p: string, merge: boolean): boolean {
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 37 /* % */ || c === 92 /* \ */) return true;
    if (c === 47 /* / */) {
      const n = p.charCodeAt(i + 1);
      if (n === 46 /* . */ || (merge && n === 47)) return true;
    }
  }
  return false;
}

function decodeEscapes(p: string, slashes: boolean): string {
  let out = '';
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c === 37 && i + 2 < p.length) {
      const h = hexVal(p.charCodeAt(i + 1));
      const l = hexVal(p.charCodeAt(i + 2));
      if (h !== -1 && l !== -1) {
        const v = h * 16 + l;
        if (isUnreserved(v) || (slashes && (v === 47 || v === 92))) {
          out += String.fromCharCode(v === 92 ? 47 : v);
        } else {
          out += `%${p[i + 1]?.toUpperCase()}${p[i + 2]?.toUpperCase()}`;
        }
        i += 2;
        continue;
      }
    }
    out += c === 92 ? '/' : p[i];
  }
  return out;
}

/** RFC 3986 §5.2.4 remove_dot_segments, for an absolute path. */
export function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segs = path.split('/');
  // segs[0] is '' (the path starts with '/').
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i] as string;
    const last = i === segs.length - 1;
    if (s === '.') {
      if (last) out.push('');
    } else if (s === '..') {
      out.pop();
      if (last) out.push('');
    } else {
      out.push(s);
    }
  }
  return `/${out.join('/')}`;
}

function mergeSlashes(p: string): string {
  return p.replace(/\/{2,}/g, '/');
}

/** Normalizes a request path (without its query). The input starts with "/". */
export function normalizePath(path: string, mode: PathNormalization): string {
  if (mode === 'NONE') return path;
  const merge = mode !== 'BASE';
  if (!needsWork(path, merge)) return path;
  let p = decodeEscapes(path, mode === 'DECODE_AND_MERGE_SLASHES');
  p = removeDotSegments(p);
  if (merge) p = mergeSlashes(p);
  return p;
}
