import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SpiffeId, spiffeIdProblem, trustDomainProblem } from '../../../src/identity/spiffe-id.js';

// [input, the rule it breaks (a fragment of the message), or null when valid]
const TABLE: [string, string | null][] = [
  ['spiffe://example.org', null],
  ['spiffe://example.org/ns/default/sa/web', null],
  ['spiffe://a-b_c.d9/Path.With-All_chars/0', null],
  ['spiffe://example.org/...', null], // three dots is an ordinary segment
  ['spiffe://example.org/.hidden', null],
  ['', 'empty'],
  ['example.org/ns/a', 'scheme must be "spiffe://"'],
  ['http://example.org/ns/a', 'scheme must be "spiffe://"'],
  ['SPIFFE://example.org/ns/a', 'scheme must be lowercase'],
  ['spiffe:/example.org', 'scheme must be "spiffe://"'],
  ['spiffe://', 'trust domain is missing'],
  ['spiffe:///ns/a', 'trust domain is missing'],
  ['spiffe://Example.org', 'trust domain must be lowercase'],
  ['spiffe://example.org:8443/ns/a', 'must not contain a port'],
  ['spiffe://user@example.org/ns/a', 'userinfo'],
  ['spiffe://exa mple.org', 'trust domain may only contain'],
  ['spiffe://exämple.org', 'trust domain may only contain'],
  ['spiffe://example.org/', 'must not end with a slash'],
  ['spiffe://example.org/ns/a/', 'must not end with a slash'],
  ['spiffe://example.org//ns', 'empty segments'],
  ['spiffe://example.org/ns//a', 'empty segments'],
  ['spiffe://example.org/./a', '"." or ".."'],
  ['spiffe://example.org/a/..', '"." or ".."'],
  ['spiffe://example.org/a/../b', '"." or ".."'],
  ['spiffe://example.org/a%20b', 'percent-encoding'],
  ['spiffe://example.org%2e/a', 'percent-encoding'],
  ['spiffe://example.org/a?x=1', 'query'],
  ['spiffe://example.org?x=1', 'query'],
  ['spiffe://example.org/a#frag', 'fragment'],
  ['spiffe://example.org#frag', 'fragment'],
  ['spiffe://example.org/a b', 'path segments may only contain'],
  ['spiffe://example.org/a:b', 'path segments may only contain'],
  ['spiffe://example.org/a@b', 'path segments may only contain'],
  [`spiffe://${'a'.repeat(256)}`, 'trust domain is longer than 255 bytes'],
  [`spiffe://example.org/${'a'.repeat(2048)}`, 'longer than 2048 bytes'],
];

describe('SPIFFE ID validation (SPIFFE-ID standard §2)', () => {
  it.each(TABLE)('%j → %s', (input, rule) => {
    const problem = spiffeIdProblem(input);
    if (rule === null) {
      expect(problem).toBeNull();
      expect(SpiffeId.parse(input).id).toBe(input);
    } else {
      expect(problem).toContain(rule);
      expect(() => SpiffeId.parse(input)).toThrow(rule);
      try {
        SpiffeId.parse(input);
      } catch (err) {
        expect((err as { code: string }).code).toBe('ERR_SPIFFE_ID_INVALID');
      }
    }
  });

  it('accepts a trust domain of exactly 255 bytes and an ID of exactly 2048 bytes', () => {
    expect(spiffeIdProblem(`spiffe://${'a'.repeat(255)}`)).toBeNull();
    const base = 'spiffe://example.org/';
    expect(spiffeIdProblem(base + 'a'.repeat(2048 - base.length))).toBeNull();
  });

  it('splits trust domain, path, principal and namespace', () => {
    const id = SpiffeId.parse('spiffe://example.org/ns/payments/sa/api');
    expect(id.trustDomain).toBe('example.org');
    expect(id.path).toBe('/ns/payments/sa/api');
    expect(id.principal).toBe('example.org/ns/payments/sa/api');
    expect(id.namespace).toBe('payments');
    expect(SpiffeId.parse('spiffe://example.org').path).toBe('');
    expect(SpiffeId.parse('spiffe://example.org/workload').namespace).toBe('');
    expect(SpiffeId.parse('spiffe://example.org/ns/only').namespace).toBe('only');
  });

  it('checks bare trust domain names', () => {
    expect(trustDomainProblem('example.org')).toBeNull();
    expect(trustDomainProblem('spiffe://example.org')).toContain('bare name');
    expect(trustDomainProblem('Example.org')).toContain('lowercase');
  });

  const tdChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789.-_');
  const segChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_');
  const td = fc.string({ unit: tdChar, minLength: 1, maxLength: 40 });
  const segment = fc
    .string({ unit: segChar, minLength: 1, maxLength: 12 })
    .filter((s) => s !== '.' && s !== '..');

  it('accepts every ID built from the grammar (property)', () => {
    fc.assert(
      fc.property(td, fc.array(segment, { maxLength: 6 }), (domain, segs) => {
        const input = `spiffe://${domain}${segs.map((s) => `/${s}`).join('')}`;
        const id = SpiffeId.parse(input);
        return id.trustDomain === domain && id.path === segs.map((s) => `/${s}`).join('') && id.id === input;
      }),
    );
  });

  it('refuses an ID with any character outside the grammar inserted (property)', () => {
    const bad = fc.constantFrom(...' %?#:@\\/+~!$&\'()*,;=[]"<>^`{|}'.split(''), 'é', '\u0000', '\n');
    fc.assert(
      fc.property(td, segment, bad, fc.nat(), (domain, seg, ch, pos) => {
        const path = `/${seg}`;
        const at = pos % (path.length - 1);
        const mutated = `spiffe://${domain}${path.slice(0, at + 1)}${ch}${path.slice(at + 1)}`;
        // A "/" inserted can still form a valid ID ("/a/b"); anything else must be refused.
        if (ch === '/') return true;
        return spiffeIdProblem(mutated) !== null;
      }),
    );
  });
});
