import { describe, expect, it } from 'vitest';
import { requestAttributes } from '../../../src/authz/attributes.js';
import { mtlsFrom, PLAIN } from '../../helpers/request.js';

const SETTINGS = { workloadPort: 9080, normalization: 'BASE', trustedProxies: 0 } as const;

/** Attributes are plain data made from a described connection and head: no socket anywhere. */
describe('requestAttributes', () => {
  it('takes method, host, normalized path and query from the head, addresses and peer from the connection', () => {
    const a = requestAttributes(
      mtlsFrom('spiffe://example.org/ns/shop/sa/web', '10.0.0.7'),
      {
        method: 'POST',
        target: '/a/./b/%7Eu?x=1&y',
        headers: { host: 'Shop.Example:8443', 'x-request-id': 'req-1' },
        httpVersion: '1.1',
      },
      SETTINGS,
      1_700_000_000_000,
    );
    expect(a).toMatchObject({
      method: 'POST',
      host: 'shop.example:8443',
      path: '/a/b/~u',
      query: 'x=1&y',
      sourceAddress: '10.0.0.7',
      remoteAddress: '10.0.0.7',
      destinationPort: 9080,
      tls: true,
      peerId: 'spiffe://example.org/ns/shop/sa/web',
      peerPrincipal: 'example.org/ns/shop/sa/web',
      peerNamespace: 'shop',
      requestPrincipal: '',
      claims: null,
      requestId: 'req-1',
      protocol: 'HTTP/1.1',
      time: 1_700_000_000_000,
    });
    expect(a.requestIdMade).toBe(false);
  });

  it("reads HTTP/2's :authority as the host", () => {
    const a = requestAttributes(
      PLAIN,
      { method: 'GET', target: '/', headers: { ':authority': 'API.example' }, httpVersion: '2.0' },
      SETTINGS,
      0,
    );
    expect(a.host).toBe('api.example');
    expect(a.protocol).toBe('HTTP/2');
  });

  it('makes a request id when the client sent none or one that could forge a log line', () => {
    for (const rid of [undefined, '', 'a b', 'x'.repeat(129), 'id\r\nforged: 1']) {
      const headers = rid === undefined ? { host: 'a' } : { host: 'a', 'x-request-id': rid };
      const a = requestAttributes(
        PLAIN,
        { method: 'GET', target: '/', headers, httpVersion: '1.1' },
        SETTINGS,
        0,
      );
      expect(a.requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(a.requestIdMade).toBe(true);
    }
  });

  it('computes remote.ip once, from X-Forwarded-For through the trusted hops only', () => {
    const head = {
      method: 'GET',
      target: '/',
      headers: { host: 'a', 'x-forwarded-for': '198.51.100.9, 203.0.113.5' },
      httpVersion: '1.1',
    };
    const conn = { ...PLAIN, sourceAddress: '10.1.1.1' };
    expect(requestAttributes(conn, head, SETTINGS, 0).remoteAddress).toBe('10.1.1.1');
    expect(requestAttributes(conn, head, { ...SETTINGS, trustedProxies: 1 }, 0).remoteAddress).toBe(
      '203.0.113.5',
    );
    expect(requestAttributes(conn, head, { ...SETTINGS, trustedProxies: 2 }, 0).remoteAddress).toBe(
      '198.51.100.9',
    );
    // A client cannot push the choice past what it sent.
    expect(requestAttributes(conn, head, { ...SETTINGS, trustedProxies: 9 }, 0).remoteAddress).toBe(
      '198.51.100.9',
    );
  });

  it('keeps a target that is not origin form as it is (the request-line stage refuses it)', () => {
    const a = requestAttributes(
      PLAIN,
      { method: 'GET', target: 'http://evil.example/x', headers: { host: 'a' }, httpVersion: '1.1' },
      SETTINGS,
      0,
    );
    expect(a.path).toBe('http://evil.example/x');
    expect(a.query).toBe('');
  });
});
