import { describe, expect, it } from 'vitest';
import { decidePartial, keysRead } from '../../../src/authz/partial.js';
import { attrs, policy } from '../../helpers/authz.js';

const denyByHeader = policy(
  { action: 'DENY', rules: [{ when: [{ key: 'request.headers[x-debug]', values: ['on'] }] }] },
  'no-debug',
);
const allowApi = policy({ rules: [{ to: [{ operation: { paths: ['/api/*'] } }] }] }, 'api');
const allowAuditors = policy(
  { rules: [{ when: [{ key: 'request.auth.claims[groups]', values: ['auditors'] }] }] },
  'auditors',
);
const header = (k: string): boolean => k !== 'request.headers[x-debug]';

describe('deciding with attributes the record lacks', () => {
  it('decides what the missing value cannot change: a request no ALLOW matches is denied either way', () => {
    expect(decidePartial([denyByHeader, allowApi], attrs({ path: '/other' }), header)).toEqual({
      outcome: 'deny',
      reason: 'no-matching-allow',
      policy: null,
      rule: -1,
      missing: [],
      unknownRead: ['request.headers[x-debug]'],
    });
  });

  it('does not guess when it can: a DENY on an unrecorded header decides an otherwise allowed request', () => {
    expect(decidePartial([denyByHeader, allowApi], attrs({ path: '/api/x' }), header)).toEqual({
      outcome: 'unknown',
      reason: 'undecidable',
      policy: null,
      rule: -1,
      missing: ['request.headers[x-debug]'],
      unknownRead: ['request.headers[x-debug]'],
    });
  });

  it('an ALLOW that matches on known values decides, whatever an unknown claim says elsewhere', () => {
    const known = (k: string): boolean => k !== 'request.auth.claims[groups]';
    const d = decidePartial([allowAuditors, allowApi], attrs({ path: '/api/x' }), known);
    expect(d).toMatchObject({ outcome: 'allow', policy: 'default/api', rule: 0 });
    expect(decidePartial([allowAuditors, allowApi], attrs({ path: '/x' }), known)).toMatchObject({
      outcome: 'unknown',
      missing: ['request.auth.claims[groups]'],
    });
  });

  it('lists what the policies read', () => {
    expect([...keysRead([denyByHeader, allowApi, allowAuditors])].sort()).toEqual([
      'request.auth.claims[groups]',
      'request.headers[x-debug]',
      'request.path',
    ]);
  });
});
