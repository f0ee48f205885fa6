import { X509Certificate } from 'node:crypto';
import http2 from 'node:http2';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { GrpcServerStream, parseTarget } from '../../../src/identity/grpc-stream.js';
import { decodeX509SvidResponse, splitDer } from '../../../src/identity/workload-api-proto.js';
import { makePki, TempDir } from '../../helpers/pki.js';
import { svidEntry, svidResponse } from '../../helpers/workload-api.js';

const PROTO = fileURLToPath(new URL('../../fixtures/workloadapi.proto', import.meta.url));

/** Portcullis' hand-written decoder against protobufjs encoding the standard's messages. */
describe('X509SVIDResponse decoding', () => {
  it('reads what protobufjs writes: SVIDs with hints, CRLs, federated bundles', async () => {
    const pki = await makePki();
    const root = await new protobuf.Root().load(PROTO, { keepCase: true });
    const Response = root.lookupType('X509SVIDResponse');
    const msg = svidResponse(
      [
        svidEntry(pki.server, 'spiffe://example.org/ns/default/sa/api', [pki.ca], 'internal'),
        svidEntry(pki.client, 'spiffe://example.org/ns/default/sa/web', [pki.ca]),
      ],
      { 'spiffe://partner.example': pki.ca },
    );
    msg.crl = [Buffer.from([1, 2, 3])];
    const bytes = Buffer.from(Response.encode(Response.fromObject(msg)).finish());
    const d = decodeX509SvidResponse(bytes);
    expect(d.svids.map((s) => [s.spiffeId, s.hint])).toEqual([
      ['spiffe://example.org/ns/default/sa/api', 'internal'],
      ['spiffe://example.org/ns/default/sa/web', ''],
    ]);
    expect(d.svids[0]?.x509Svid.equals(msg.svids[0]?.x509_svid as Buffer)).toBe(true);
    expect(d.svids[0]?.x509SvidKey.equals(msg.svids[0]?.x509_svid_key as Buffer)).toBe(true);
    expect(d.crl).toEqual([Buffer.from([1, 2, 3])]);
    expect([...d.federatedBundles.keys()]).toEqual(['spiffe://partner.example']);
    const certs = splitDer(d.federatedBundles.get('spiffe://partner.example') as Buffer);
    expect(new X509Certificate(certs[0] as Buffer).fingerprint256).toBe(
      new X509Certificate(pki.ca.certPem).fingerprint256,
    );
    // Unknown fields (a newer agent) are skipped.
    const withUnknown = Buffer.concat([bytes, Buffer.from([0x48, 0x01, 0x52, 0x01, 0x00])]);
    expect(decodeX509SvidResponse(withUnknown).svids).toHaveLength(2);
  });

  it('refuses truncated or malformed input instead of reading past it', async () => {
    const pki = await makePki();
    const root = await new protobuf.Root().load(PROTO, { keepCase: true });
    const Response = root.lookupType('X509SVIDResponse');
    const bytes = Buffer.from(
      Response.encode(
        Response.fromObject(svidResponse([svidEntry(pki.server, 'spiffe://example.org/x', [pki.ca])])),
      ).finish(),
    );
    for (const cut of [1, 5, 100, bytes.length - 1]) {
      expect(() => decodeX509SvidResponse(bytes.subarray(0, cut))).toThrow();
    }
    expect(() => decodeX509SvidResponse(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]))).toThrow(
      /truncated/,
    );
    expect(() => splitDer(Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]))).toThrow(/truncated|length/);
    expect(() => splitDer(Buffer.from([0x02, 0x01, 0x00]))).toThrow(/SEQUENCE/);
  });

  it('takes unix:// and tcp:// endpoint addresses, and nothing else', () => {
    expect(parseTarget('unix:///run/spire/agent.sock')).toEqual({
      socketPath: '/run/spire/agent.sock',
      host: 'localhost',
      port: 0,
    });
    expect(parseTarget('tcp://127.0.0.1:8081')).toEqual({ socketPath: null, host: '127.0.0.1', port: 8081 });
    expect(parseTarget('tcp://[::1]:8081').host).toBe('::1');
    expect(() => parseTarget('http://127.0.0.1:8081')).toThrow();
  });
});

describe('the gRPC stream client against a hostile endpoint', () => {
  it('ends the call on a message over 4 MiB without buffering it, and reports a non-gRPC answer', async () => {
    const dir = new TempDir('pc-grpc-');
    const server = http2.createServer();
    server.on('stream', (stream, headers) => {
      if (headers[':path'] === '/not-grpc') {
        stream.respond({ ':status': 404, 'content-type': 'text/html' });
        stream.end('<h1>nope</h1>');
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      const header = Buffer.alloc(5);
      header.writeUInt32BE(1024 * 1024 * 1024, 1); // claims 1 GiB
      stream.write(Buffer.concat([header, Buffer.alloc(1024)]));
    });
    await new Promise<void>((r) => server.listen(dir.file('s.sock'), r));
    const target = parseTarget(`unix://${dir.file('s.sock')}`);
    const status = (path: string): Promise<[number, string]> =>
      new Promise((resolve) => {
        const call = new GrpcServerStream(target, path, Buffer.alloc(0), {});
        call.on('message', () => resolve([-1, 'a message was delivered']));
        call.on('status', (code: number, details: string) => resolve([code, details]));
      });
    try {
      expect(await status('/SpiffeWorkloadAPI/FetchX509SVID')).toEqual([
        8,
        'a message of 1073741824 bytes (limit 4194304)',
      ]);
      const [code, details] = await status('/not-grpc');
      expect(code).toBe(14);
      expect(details).toContain('not a gRPC answer (HTTP 404');
    } finally {
      server.close();
      dir.cleanup();
    }
  });
});
