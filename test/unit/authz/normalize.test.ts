import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { normalizePath, type PathNormalization } from '../../../src/authz/normalize.js';

// [input, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES]
const TABLE: [string, string, string, string][] = [
  ['/a/b', '/a/b', '/a/b', '/a/b'],
  ['/', '/', '/', '/'],
  ['/a/./b', '/a/b', '/a/b', '/a/b'],
  ['/a/../b', '/b', '/b', '/b'],
  ['/a/b/..', '/a/', '/a/', '/a/'],
  ['/a/b/.', '/a/b/', '/a/b/', '/a/b/'],
  ['/../../etc/passwd', '/etc/passwd', '/etc/passwd', '/etc/passwd'],
  ['/public/../admin', '/admin', '/admin', '/admin'],
  ['/public/%2e%2e/admin', '/admin', '/admin', '/admin'],
  ['/public/%2E%2E/admin', '/admin', '/admin', '/admin'],
  ['/public/.%2e/admin', '/admin', '/admin', '/admin'],
  ['/public\\..\\admin', '/admin', '/admin', '/admin'],
  ['/public%2F..%2Fadmin', '/public%2F..%2Fadmin', '/public%2F..%2Fadmin', '/admin'],
  ['/public%5C..%5Cadmin', '/public%5C..%5Cadmin', '/public%5C..%5Cadmin', '/admin'],
  ['/a//b', '/a//b', '/a/b', '/a/b'],
  ['//admin', '//admin', '/admin', '/admin'],
  ['/a/%41%62%7e', '/a/Ab~', '/a/Ab~', '/a/Ab~'],
  ['/a/%2a%3f', '/a/%2A%3F', '/a/%2A%3F', '/a/%2A%3F'],
  ['/a/%zz', '/a/%zz', '/a/%zz', '/a/%zz'],
  ['/a/%', '/a/%', '/a/%', '/a/%'],
  ['/..a/b', '/..a/b', '/..a/b', '/..a/b'],
];

describe('path normalization', () => {
  it.each(TABLE)('%s', (input, base, merge, decode) => {
    expect(normalizePath(input, 'NONE')).toBe(input);
    expect(normalizePath(input, 'BASE')).toBe(base);
    expect(normalizePath(input, 'MERGE_SLASHES')).toBe(merge);
    expect(normalizePath(input, 'DECODE_AND_MERGE_SLASHES')).toBe(decode);
  });

  it('returns an already-normal path as the same string (no copy on the common path)', () => {
    const p = '/api/v1/users/42';
    expect(Object.is(normalizePath(p, 'BASE'), p)).toBe(true);
  });

  const modes: PathNormalization[] = ['BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES'];
  const segment = fc.constantFrom('a', 'b', '.', '..', '%2e', '%2E%2e', '', 'x%41', '%2F', '\\', 'c.d');

  it('never leaves a dot segment and is idempotent (property)', () => {
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 8 }), fc.constantFrom(...modes), (segs, mode) => {
        const once = normalizePath(`/${segs.join('/')}`, mode);
        const segments = once.split('/');
        return (
          once.startsWith('/') &&
          !segments.includes('.') &&
          !segments.includes('..') &&
          normalizePath(once, mode) === once
        );
      }),
    );
  });
});
