import { createPrivateKey, X509Certificate } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { PemPair } from '../../src/identity/dev-ca.js';
import { TempDir } from './pki.js';

const PROTO = fileURLToPath(new URL('../fixtures/workloadapi.proto', import.meta.url));

/** One SVID as the server sends it (the proto's X509SVID, protobufjs field names). */
export interface SvidEntry {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}

export interface SvidResponse {
  svids: SvidEntry[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}

function der(pems: readonly string[]): Buffer {
  return Buffer.concat(pems.map((p) => new X509Certificate(p).raw));
}

/** An X509SVID entry from a dev-CA SVID: DER chain, PKCS#8 DER key, DER bundle. */
export function svidEntry(
  svid: PemPair,
  spiffeId: string,
  bundleCas: readonly PemPair[],
  hint = '',
): SvidEntry {
  const chain = svid.certPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return {
    spiffe_id: spiffeId,
    x509_svid: der(chain),
    x509_svid_key: createPrivateKey(svid.keyPem).export({ type: 'pkcs8', format: 'der' }),
    bundle: der(bundleCas.map((c) => c.certPem)),
    hint,
  };
}

/** A response: these SVIDs, and federated bundles keyed by trust domain SPIFFE ID (`spiffe://td`). */
export function svidResponse(svids: SvidEntry[], federated: Record<string, PemPair> = {}): SvidResponse {
  const federated_bundles: Record<string, Buffer> = {};
  for (const [id, ca] of Object.entries(federated)) federated_bundles[id] = der([ca.certPem]);
  return { svids, crl: [], federated_bundles };
}

/**
 * A SPIFFE Workload API server for tests, as a SPIRE agent serves it: gRPC on a Unix socket, the
 * standard's proto (through protobufjs), the `workload.spiffe.io: true` metadata required
 * (InvalidArgument without it), the full state sent at once on each stream and again on each
 * change. `deny` answers PermissionDenied (a workload not registered yet).
 */
export class WorkloadApiServer {
  readonly socketPath: string;
  private server: grpc.Server | null = null;
  private readonly streams = new Set<grpc.ServerWritableStream<unknown, SvidResponse>>();
  private state: SvidResponse | null = null;
  deny = false;
  /** Calls that arrived without the required metadata. */
  refusedWithoutHeader = 0;
  calls = 0;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  async start(): Promise<void> {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, defaults: true, arrays: true, objects: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      SpiffeWorkloadAPI: { service: grpc.ServiceDefinition };
    };
    const server = new grpc.Server();
    server.addService(pkg.SpiffeWorkloadAPI.service, {
      FetchX509SVID: (call: grpc.ServerWritableStream<unknown, SvidResponse>) => this.fetch(call),
      FetchX509Bundles: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'not in this test server' }),
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err === null ? resolve() : reject(err),
      ),
    );
    this.server = server;
  }

  private fetch(call: grpc.ServerWritableStream<unknown, SvidResponse>): void {
    this.calls++;
    if (call.metadata.get('workload.spiffe.io')[0] !== 'true') {
      this.refusedWithoutHeader++;
      call.emit('error', {
        code: grpc.status.INVALID_ARGUMENT,
        details: 'security header missing from request',
      });
      return;
    }
    if (this.deny || this.state === null) {
      call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
      return;
    }
    this.streams.add(call);
    call.on('cancelled', () => this.streams.delete(call));
    call.on('close', () => this.streams.delete(call));
    call.write(this.state);
  }

  /** The new full state, sent to every open stream (and to every later one). */
  push(state: SvidResponse): void {
    this.state = state;
    for (const s of this.streams) s.write(state);
  }

  /** Ends every stream with a status (the agent refusing, or going away). */
  fail(code: grpc.status, details: string): void {
    for (const s of this.streams) s.emit('error', { code, details });
    this.streams.clear();
  }

  /** Stops serving at once (the agent going away); `start()` serves again on the same socket. */
  stop(): void {
    this.server?.forceShutdown();
    this.server = null;
    this.streams.clear();
  }
}

/** A test agent in a fresh folder, already serving `state`; `close()` stops it and removes the folder. */
export async function startAgent(
  state: SvidResponse,
  opts: { deny?: boolean; socketName?: string } = {},
): Promise<WorkloadApiServer & { readonly dir: TempDir; close(): void }> {
  const dir = new TempDir('pc-wapi-');
  const agent = new WorkloadApiServer(dir.file(opts.socketName ?? 'agent.sock'));
  agent.deny = opts.deny ?? false;
  agent.push(state);
  await agent.start();
  return Object.assign(agent, {
    dir,
    close(): void {
      agent.stop();
      dir.cleanup();
    },
  });
}

/** The `identity` config block for an agent. */
export function identityFrom(agent: WorkloadApiServer, startTimeout = '10s'): Record<string, unknown> {
  return { workloadApi: { socket: `unix://${agent.socketPath}`, startTimeout } };
}
