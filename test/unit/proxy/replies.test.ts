import { describe, expect, it } from 'vitest';
import { grpcStatusFor, LocalReply, REPLIES } from '../../../src/proxy/local-reply.js';

describe('the reply table', () => {
  it('says which replies are refusals: everything but upstream failures and OPTIONS *', () => {
    const notDeny = Object.entries(REPLIES)
      .filter(([, r]) => !r.deny)
      .map(([k]) => k)
      .sort();
    expect(notDeny).toEqual(['optionsAsterisk', 'upstreamError', 'upstreamTimeout', 'upstreamUnavailable']);
    expect(LocalReply.refusal(451, 'ext-authz-denied', 'no', {}).deny).toBe(true);
  });

  it('gives the gRPC status Envoy gives for each HTTP status', () => {
    expect(REPLIES.rbacDenied.grpcStatus).toBe(7);
    expect(REPLIES.jwtInvalid.grpcStatus).toBe(16);
    expect(REPLIES.upstreamUnavailable.grpcStatus).toBe(14);
    expect(REPLIES.upstreamTimeout.grpcStatus).toBe(14);
    expect(REPLIES.badRequest.grpcStatus).toBe(13);
    expect(grpcStatusFor(418)).toBe(2);
    expect(grpcStatusFor(200)).toBe(0);
  });

  it('sends each body with its exact length, an empty one empty', () => {
    expect(REPLIES.optionsAsterisk.body.length).toBe(0);
    expect(REPLIES.optionsAsterisk.headers['content-length']).toBe('0');
    expect(REPLIES.rbacDenied.body.toString()).toBe('RBAC: access denied\n');
    expect(REPLIES.jwtInvalid.bearerChallenge).toBe(true);
  });
});
