import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import type { EchoReply } from '../helpers/upstream.js';

describe('STRICT mTLS proxy', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(() => h.close());

  it('forwards a request from a verified SPIFFE peer with XFCC set by the proxy', async () => {
    const res = await request(`${h.url}/hello?x=1`, { ...h.client });
    expect(res.status).toBe(200);
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.url).toBe('/hello?x=1');
    expect(echo.headers['x-forwarded-client-cert']).toMatch(
      /^By=spiffe:\/\/example\.org\/ns\/default\/sa\/api;Hash=[0-9a-f]{64};URI=spiffe:\/\/example\.org\/ns\/default\/sa\/web$/,
    );
  });
});
