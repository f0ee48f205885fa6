import { describe, expect, it } from 'vitest';
import { DecisionRing } from '../../../src/admin/decisions.js';
import { isLoopback } from '../../../src/admin/server.js';
import { requestAttributes } from '../../../src/authz/attributes.js';
import { Authorizer, Decision } from '../../../src/authz/compile.js';
import { PLAIN } from '../../helpers/request.js';

describe('who may read decision explains', () => {
  it('only loopback peers', () => {
    for (const a of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a)).toBe(true);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '0.0.0.0', '::', '1127.0.0.1', '', undefined])
      expect(isLoopback(a)).toBe(false);
  });
});

describe('the decisions ring', () => {
  const source = {
    policies: [],
    authorizer: new Authorizer([]),
    rego: null,
    ourId: '',
    tokenParams: new Set<string>(),
    redactedHeaders: new Set<string>(),
  };
  const decided = (id: string, deny: boolean) => ({
    attrs: requestAttributes(
      PLAIN,
      { method: 'GET', target: `/${id}`, headers: { host: 'h', 'x-request-id': id }, httpVersion: '1.1' },
      { workloadPort: 80, normalization: 'BASE', trustedProxies: 0 },
      0,
    ),
    decision: new Decision(),
    deny,
    status: deny ? 400 : 200,
    decisionReason: deny ? 'bad-request' : 'no-policies',
    reachedAuthorization: !deny,
    reachedRego: false,
    ctx: { target: `/${id}`, answeredBy: deny ? 'request-line' : '', detail: '' },
    plan: { explain: source, listenerName: 'inbound' },
  });

  it('keeps the last `size` decisions, overwriting the oldest', () => {
    const ring = new DecisionRing(3, true);
    for (let i = 0; i < 5; i++) ring.record(decided(`r${i}`, true));
    expect(ring.explain('r0')).toEqual([]);
    expect(ring.explain('r1')).toEqual([]);
    expect(ring.explain('r4')[0]?.request.path).toBe('/r4');
    expect(ring.explain('r2')[0]?.answered).toEqual({
      decision: 'deny',
      status: 400,
      reason: 'bad-request',
      detail: '',
      by: 'request-line',
    });
    expect(ring.recorded).toBe(5);
  });

  it('keeps allowed requests only when asked to', () => {
    const denies = new DecisionRing(3, false);
    denies.record(decided('a', false));
    expect(denies.explain('a')).toEqual([]);
    expect(denies.recorded).toBe(0);
    const all = new DecisionRing(3, true);
    all.record(decided('a', false));
    expect(all.explain('a')[0]?.authorization?.reason).toBe('no-allow-policies');
  });
});
