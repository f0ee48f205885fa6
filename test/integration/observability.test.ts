import diagnostics_channel from 'node:diagnostics_channel';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkAttributes } from '../../src/cli/check.js';
import type { RequestStream } from '../../src/proxy/stream.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';

/**
 * The proxy publishes its events on diagnostics channels; metrics and audit subscribe to them like
 * any other code may. Two proxies in one process each count only their own requests.
 */
describe('events on diagnostics channels', () => {
  let a: Harness;
  let b: Harness;
  beforeAll(async () => {
    a = await startHarness();
    b = await startHarness();
  });
  afterAll(async () => {
    await a.close();
    await b.close();
  });

  it('a subscriber sees each finished request with its decision and reason', async () => {
    const seen: { path: string; deny: boolean; reason: string; status: number }[] = [];
    const onFinished = (m: unknown): void => {
      const rs = m as RequestStream;
      seen.push({ path: rs.attrs.path, deny: rs.deny, reason: rs.decisionReason, status: rs.status });
    };
    diagnostics_channel.subscribe('portcullis:request:finished', onFinished);
    try {
      expect((await request(`${a.url}/seen`, a.client)).status).toBe(200);
      expect((await request(`${a.url}/%00`, a.client)).status).toBe(400);
    } finally {
      diagnostics_channel.unsubscribe('portcullis:request:finished', onFinished);
    }
    expect(seen).toContainEqual({ path: '/seen', deny: false, reason: 'no-policies', status: 200 });
    expect(seen.some((s) => s.deny && s.reason === 'bad-request' && s.status === 400)).toBe(true);
  });

  it('`portcullis check` describes a request with the attributes the proxy gave the real one', async () => {
    const seen: RequestStream[] = [];
    const onFinished = (m: unknown): void => {
      seen.push(m as RequestStream);
    };
    diagnostics_channel.subscribe('portcullis:request:finished', onFinished);
    try {
      const res = await request(`${a.url}/x/./y/%7Eme?q=1`, {
        ...a.client,
        method: 'DELETE',
        headers: { 'x-team': 'blue', 'x-request-id': 'same-id' },
      });
      expect(res.status).toBe(200);
    } finally {
      diagnostics_channel.unsubscribe('portcullis:request:finished', onFinished);
    }
    const real = seen.find((rs) => rs.attrs.requestId === 'same-id')?.attrs;
    expect(real).toBeDefined();
    if (real === undefined) return;
    const described = checkAttributes(a.proxy.config, {
      principal: real.peerId,
      method: 'delete',
      path: '/x/./y/%7Eme?q=1',
      host: `localhost:${a.port}`,
      headers: ['x-team=blue', 'x-request-id=same-id'],
      explain: false,
    });
    const fields = [
      'method',
      'host',
      'path',
      'query',
      'sourceAddress',
      'remoteAddress',
      'destinationAddress',
      'destinationPort',
      'peerPrincipal',
      'peerNamespace',
      'requestPrincipal',
      'requestId',
    ] as const;
    for (const f of fields) expect({ f, v: described[f] }).toEqual({ f, v: real[f] });
    expect(described.headers['x-team']).toBe(real.headers['x-team']);
  });

  it('each proxy in the process counts only its own requests', async () => {
    for (let i = 0; i < 3; i++) await request(`${a.url}/only-a`, a.client);
    const count = async (h: Harness): Promise<number> => {
      const m =
        /portcullis_requests_total\{listener="inbound",decision="allow",reason="no-policies",status="200"\} (\d+)/.exec(
          (await h.proxy.metricsText()).body,
        );
      return m === null ? 0 : Number(m[1]);
    };
    expect(await count(a)).toBeGreaterThanOrEqual(4);
    expect(await count(b)).toBe(0);
  });
});
