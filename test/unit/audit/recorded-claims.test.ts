import { describe, expect, it } from 'vitest';
import { recordedClaims } from '../../../src/audit/log.js';

describe('the claims an audit event keeps for replay', () => {
  const claims = {
    sub: 'alice',
    groups: ['a', 'b'],
    org: { tier: 'gold', secret: 's' },
    email: 'x@y',
    n: 'str',
  };

  it('keeps exactly the values at the paths policies read, null where absent', () => {
    expect(
      recordedClaims(claims, [['groups'], ['org', 'tier'], ['missing'], ['org', 'nope'], ['n', 'deeper']]),
    ).toEqual({ groups: ['a', 'b'], org: { tier: 'gold', nope: null }, missing: null, n: 'str' });
  });

  it('keeps an object read as a whole as {} (policies match strings and lists only), not its contents', () => {
    expect(recordedClaims(claims, [['org']])).toEqual({ org: {} });
    expect(JSON.stringify(recordedClaims(claims, [['org'], ['sub']]))).not.toContain('secret');
  });
});
