import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeQueryComponent, headerText, parseQuery } from '../../../src/authz/query.js';

describe('the one query parser', () => {
  it('decodes names and values as forms do (+ is a space), keeps what does not decode, skips empty pairs', () => {
    expect(parseQuery('a=1&b=x+y&c&%61%3d=%zz&&d=')).toEqual([
      { name: 'a', value: '1', raw: 'a=1' },
      { name: 'b', value: 'x y', raw: 'b=x+y' },
      { name: 'c', value: '', raw: 'c' },
      { name: 'a=', value: '%zz', raw: '%61%3d=%zz' },
      { name: 'd', value: '', raw: 'd=' },
    ]);
    expect(parseQuery('')).toEqual([]);
  });

  it('agrees with URLSearchParams on every query it generates', () => {
    const part = fc
      .array(fc.constantFrom('a', 'b', '=', '+', '%20', '%2B', ' ', 'é', '%3D', '1'), { maxLength: 6 })
      .map((xs) => xs.join(''));
    fc.assert(
      fc.property(fc.array(fc.tuple(part, part), { maxLength: 5 }), (pairs) => {
        const q = pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
        const ours = parseQuery(q).map((p) => [p.name, p.value]);
        expect(ours).toEqual([...new URLSearchParams(q)]);
      }),
      { numRuns: Number(process.env.PORTCULLIS_FUZZ_RUNS ?? 100) },
    );
  });

  it('joins repeated header fields with ", "', () => {
    expect(headerText(['a', 'b'])).toBe('a, b');
    expect(headerText('a')).toBe('a');
    expect(headerText(undefined)).toBeUndefined();
    expect(decodeQueryComponent('x+%2B')).toBe('x +');
  });
});
