import { describe, expect, it } from 'vitest';
import { envoyInput, JWT_METADATA_KEY } from '../../../src/authz/rego/input.js';
import { RequestLineStage } from '../../../src/proxy/stages/request-line.js';
import { describedRequest } from '../../helpers/request.js';

/** The input example in the OPA-Envoy plugin's documentation (values shortened), for its shape. */
const OPA_ENVOY_EXAMPLE = {
  attributes: {
    source: { address: { socketAddress: { address: '172.17.0.10', portValue: 36472 } } },
    destination: { address: { socketAddress: { address: '172.17.0.17', portValue: 9080 } } },
    request: {
      http: {
        id: '13359530607844510314',
        method: 'GET',
        headers: {
          ':authority': '192.168.99.100:31380',
          ':method': 'GET',
          ':path': '/api/v1/products',
          accept: '*/*',
        },
        path: '/api/v1/products',
        host: '192.168.99.100:31380',
        protocol: 'HTTP/1.1',
      },
    },
  },
  parsed_path: ['api', 'v1', 'products'],
  parsed_query: {},
  parsed_body: null,
  truncated_body: false,
  version: { ext_authz: 'v3', encoding: 'protojson' },
};

/** Every key path of `ref` must exist in `actual` with a value of the same JSON type. */
function sameShape(ref: unknown, actual: unknown, at = 'input'): string[] {
  if (ref === null) return actual === null ? [] : [`${at} should be null`];
  if (Array.isArray(ref)) return Array.isArray(actual) ? [] : [`${at} should be an array`];
  if (typeof ref !== 'object') return typeof actual === typeof ref ? [] : [`${at} should be a ${typeof ref}`];
  if (actual === null || typeof actual !== 'object') return [`${at} should be an object`];
  return Object.entries(ref).flatMap(([k, v]) =>
    k.startsWith(':') || k === 'accept'
      ? []
      : sameShape(v, (actual as Record<string, unknown>)[k], `${at}.${k}`),
  );
}

describe('the Rego input document', () => {
  const headers = { host: 'shop.example:8443', accept: '*/*', authorization: 'Bearer x', 'x-user': 'u' };
  const ctx = describedRequest({
    target: '/api/v1/products?limit=2&tag=a&tag=b',
    headers: Object.entries(headers),
    conn: {
      sourceAddress: '172.17.0.10',
      sourcePort: 36472,
      destinationAddress: '172.17.0.17',
      tls: true,
      sni: 'shop.example',
      peerId: 'spiffe://example.org/ns/default/sa/web',
      peerPrincipal: 'example.org/ns/default/sa/web',
      peerNamespace: 'default',
    },
    workloadPort: 9080,
  });
  new RequestLineStage().run(ctx);
  ctx.attrs.claims = { sub: 'alice', groups: ['dev'] };
  const attrs = ctx.attrs;

  it("has the OPA-Envoy plugin's documented shape, and the values Envoy would give", () => {
    const input = envoyInput(
      attrs,
      null,
      'spiffe://example.org/ns/default/sa/api',
    ) as typeof OPA_ENVOY_EXAMPLE & {
      attributes: {
        source: { principal: string };
        destination: { principal: string };
        metadataContext: Record<string, Record<string, { payload: unknown }>>;
        request: { http: { scheme: string; headers: Record<string, string> } };
      };
      parsed_query: Record<string, string[]>;
    };
    expect(sameShape(OPA_ENVOY_EXAMPLE, input)).toEqual([]);
    expect(input.attributes.source.principal).toBe('spiffe://example.org/ns/default/sa/web');
    expect(input.attributes.destination.principal).toBe('spiffe://example.org/ns/default/sa/api');
    expect(input.attributes.source.address.socketAddress).toEqual({
      address: '172.17.0.10',
      portValue: 36472,
    });
    expect(input.attributes.destination.address.socketAddress).toEqual({
      address: '172.17.0.17',
      portValue: 9080,
    });
    expect(input.attributes.request.http).toMatchObject({
      method: 'GET',
      path: '/api/v1/products?limit=2&tag=a&tag=b',
      host: 'shop.example:8443',
      scheme: 'https',
      protocol: 'HTTP/1.1',
    });
    expect(input.attributes.request.http.headers).toMatchObject({
      ':path': '/api/v1/products?limit=2&tag=a&tag=b',
      ':method': 'GET',
      'x-user': 'u',
    });
    expect(input.parsed_path).toEqual(['api', 'v1', 'products']);
    expect(input.parsed_query).toEqual({ limit: ['2'], tag: ['a', 'b'] });
    expect(input.attributes.metadataContext.filterMetadata?.[JWT_METADATA_KEY]?.payload).toEqual({
      sub: 'alice',
      groups: ['dev'],
    });
  });

  it('includes only the configured headers when the config lists them', () => {
    const input = envoyInput(attrs, ['x-user'], '') as {
      attributes: { request: { http: { headers: Record<string, string> } } };
    };
    expect(Object.keys(input.attributes.request.http.headers).sort()).toEqual([
      ':authority',
      ':method',
      ':path',
      'x-user',
    ]);
  });
});
