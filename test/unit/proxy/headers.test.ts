import { describe, expect, it } from 'vitest';
import { upstreamRequestHeaders, upstreamResponseHeaders } from '../../../src/proxy/headers.js';

const FWD = {
  xfcc: 'By=spiffe://a/b;Hash=00;URI=spiffe://a/c',
  tls: true,
  sourceAddress: '10.1.2.3',
  dropHeaders: null,
  addHeaders: null,
};

describe('upstream request headers', () => {
  it('drops hop-by-hop fields, Connection-named fields and client-sent identity headers', () => {
    const raw = [
      'Host',
      'api',
      'Connection',
      'keep-alive, X-Drop',
      'X-Drop',
      '1',
      'Keep-Alive',
      'timeout=5',
      'TE',
      'trailers',
      'Transfer-Encoding',
      'chunked',
      'Upgrade',
      'h2c',
      'Proxy-Connection',
      'x',
      'Expect',
      '100-continue',
      'X-Forwarded-Client-Cert',
      'URI=spiffe://evil',
      'X-Forwarded-Proto',
      'http',
      'Accept',
      'a',
      'accept',
      'b',
    ];
    const out = upstreamRequestHeaders(raw, 'keep-alive, X-Drop', FWD);
    expect(out).toEqual([
      'Host',
      'api',
      'Accept',
      'a',
      'accept',
      'b',
      'x-forwarded-for',
      '10.1.2.3',
      'x-forwarded-proto',
      'https',
      'x-forwarded-client-cert',
      FWD.xfcc,
    ]);
  });

  it('joins repeated X-Forwarded-For fields and appends the peer', () => {
    const out = upstreamRequestHeaders(
      ['X-Forwarded-For', '1.1.1.1', 'x-forwarded-for', '2.2.2.2'],
      undefined,
      { ...FWD, xfcc: '' },
    );
    expect(out).toEqual(['x-forwarded-for', '1.1.1.1, 2.2.2.2, 10.1.2.3', 'x-forwarded-proto', 'https']);
  });

  it('drops per-request headers and appends added ones after the forwarding headers', () => {
    const out = upstreamRequestHeaders(
      ['Authorization', 'Bearer x', 'X-Jwt-Sub', 'spoofed', 'Accept', '*/*'],
      undefined,
      {
        ...FWD,
        xfcc: '',
        dropHeaders: ['authorization', 'x-jwt-sub'],
        addHeaders: ['x-jwt-sub', 'alice'],
      },
    );
    expect(out).toEqual([
      'Accept',
      '*/*',
      'x-forwarded-for',
      '10.1.2.3',
      'x-forwarded-proto',
      'https',
      'x-jwt-sub',
      'alice',
    ]);
  });

  it('strips hop-by-hop fields from a response, including ones Connection names', () => {
    const raw = [
      'Connection',
      'close, X-Internal',
      'X-Internal',
      'secret',
      'Keep-Alive',
      'x',
      'Content-Type',
      'text/plain',
      'Set-Cookie',
      'a=1',
      'Set-Cookie',
      'b=2',
    ];
    expect(upstreamResponseHeaders(raw.map((x) => Buffer.from(x)))).toEqual([
      'Content-Type',
      'text/plain',
      'Set-Cookie',
      'a=1',
      'Set-Cookie',
      'b=2',
    ]);
  });
});
