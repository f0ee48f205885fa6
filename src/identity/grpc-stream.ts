import { EventEmitter } from 'node:events';
import http2 from 'node:http2';
import net from 'node:net';

/**
 * One gRPC server-streaming call over node:http2 (gRPC over HTTP/2: a POST with
 * `content-type: application/grpc` and `te: trailers`, messages framed as a compressed flag, a
 * 4-byte big-endian length and the bytes, the status in `grpc-status` / `grpc-message` trailers,
 * or in the response headers for a trailers-only answer).
 *
 * Why not @grpc/grpc-js: it depends on protobufjs, whose install script makes every
 * `npm install` of this package warn under npm 11, and it is a large module to load for one
 * stream. The Workload API needs exactly this much of gRPC; the tests run it against a grpc-js
 * server, so the framing is checked against the reference implementation.
 *
 * Events: `message` (Buffer) per message; `status` (code, details) once, when the call ends for
 * any reason (a transport failure is 14 UNAVAILABLE, as gRPC reports it).
 */

/** gRPC status codes by name (the ones this client reports or reads). */
export const GRPC_STATUS_NAMES: readonly string[] = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];
export const GRPC_PERMISSION_DENIED = 7;
const GRPC_RESOURCE_EXHAUSTED = 8;
const GRPC_INTERNAL = 13;
const GRPC_UNAVAILABLE = 14;
const GRPC_CANCELLED = 1;

/** Largest message accepted (gRPC's default receive limit). */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface GrpcTarget {
  /** A Unix socket path, or null for TCP. */
  readonly socketPath: string | null;
  readonly host: string;
  readonly port: number;
}

/** `unix:///path` or `tcp://host:port` (SPIFFE Workload Endpoint §4). */
export function parseTarget(address: string): GrpcTarget {
  if (address.startsWith('unix://'))
    return { socketPath: address.slice('unix://'.length), host: 'localhost', port: 0 };
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d+)$/.exec(address);
  if (m !== null)
    return { socketPath: null, host: (m[1] as string).replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  throw new Error(`"${address}" is not unix:///path or tcp://host:port`);
}

export class GrpcServerStream extends EventEmitter {
  private readonly session: http2.ClientHttp2Session;
  private readonly stream: http2.ClientHttp2Stream;
  private pending: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(target: GrpcTarget, path: string, request: Buffer, metadata: Readonly<Record<string, string>>) {
    super();
    const session =
      target.socketPath === null
        ? http2.connect(
            `http://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`,
          )
        : http2.connect('http://localhost', {
            createConnection: () => net.connect(target.socketPath as string),
          });
    this.session = session;
    session.on('error', (err: Error) => this.finish(GRPC_UNAVAILABLE, err.message));
    session.on('close', () => this.finish(GRPC_UNAVAILABLE, 'the connection closed'));
    const stream = session.request({
      ':method': 'POST',
      ':path': path,
      ':scheme': 'http',
      ':authority': target.socketPath === null ? `${target.host}:${target.port}` : 'localhost',
      'content-type': 'application/grpc',
      te: 'trailers',
      'grpc-accept-encoding': 'identity',
      'user-agent': 'portcullis',
      ...metadata,
    });
    this.stream = stream;
    stream.on('response', (headers) => this.onHeaders(headers));
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('trailers', (trailers) => this.onTrailers(trailers));
    stream.on('error', (err: Error) => this.finish(GRPC_UNAVAILABLE, err.message));
    stream.on('close', () => this.finish(GRPC_UNAVAILABLE, 'the stream closed without a status'));
    const frame = Buffer.alloc(5 + request.length);
    frame.writeUInt8(0, 0);
    frame.writeUInt32BE(request.length, 1);
    request.copy(frame, 5);
    stream.end(frame);
  }

  /** Ends the call from this side (CANCELLED, reported as the status). */
  cancel(): void {
    this.finish(GRPC_CANCELLED, 'cancelled by the client');
  }

  private onHeaders(headers: http2.IncomingHttpHeaders): void {
    const status = Number(headers[':status']);
    const ct = headers['content-type'];
    if (status !== 200 || typeof ct !== 'string' || !ct.startsWith('application/grpc')) {
      this.finish(GRPC_UNAVAILABLE, `not a gRPC answer (HTTP ${status}, content-type ${String(ct)})`);
      return;
    }
    // A trailers-only answer carries the status in the headers.
    if (headers['grpc-status'] !== undefined) this.onTrailers(headers);
  }

  private onData(chunk: Buffer): void {
    if (this.done) return;
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    while (this.pending.length >= 5) {
      const compressed = this.pending[0] as number;
      const len = this.pending.readUInt32BE(1);
      if (compressed !== 0) {
        this.finish(GRPC_INTERNAL, 'a compressed message, though none was accepted');
        return;
      }
      if (len > MAX_MESSAGE_BYTES) {
        this.finish(GRPC_RESOURCE_EXHAUSTED, `a message of ${len} bytes (limit ${MAX_MESSAGE_BYTES})`);
        return;
      }
      if (this.pending.length < 5 + len) return;
      const message = this.pending.subarray(5, 5 + len);
      this.pending = this.pending.subarray(5 + len);
      this.emit('message', message);
      if (this.done) return;
    }
  }

  private onTrailers(trailers: http2.IncomingHttpHeaders): void {
    const code = Number(trailers['grpc-status'] ?? GRPC_INTERNAL);
    const raw = trailers['grpc-message'];
    let details = '';
    if (typeof raw === 'string') {
      try {
        details = decodeURIComponent(raw);
      } catch {
        details = raw;
      }
    }
    this.finish(Number.isInteger(code) ? code : GRPC_INTERNAL, details);
  }

  private finish(code: number, details: string): void {
    if (this.done) return;
    this.done = true;
    if (!this.stream.closed) this.stream.close(http2.constants.NGHTTP2_CANCEL);
    this.session.close();
    this.session.destroy();
    this.emit('status', code, details);
  }
}
