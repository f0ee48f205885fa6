import http from 'node:http';
import type {
  ClientHttp2Session,
  ClientHttp2Stream,
  IncomingHttpHeaders,
  OutgoingHttpHeaders,
} from 'node:http2';
import type { AddressInfo } from 'node:net';
import * as wsModule from 'ws';
import { type WebSocket, WebSocketServer } from 'ws';

/** A real WebSocket server upstream (the `ws` package): echoes messages, remembers the upgrade request it got. */
export class EchoWsUpstream {
  readonly server = http.createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' });
    res.end('upgrade required');
  });
  readonly wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
  readonly upgrades: http.IncomingMessage[] = [];
  readonly sockets: WebSocket[] = [];

  constructor() {
    this.server.on('upgrade', (req, socket, head) => {
      this.upgrades.push(req);
      if (req.url === '/refuse') {
        socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\nno, no.');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        this.sockets.push(ws);
        ws.on('message', (data, binary) => ws.send(data, { binary }));
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.terminate();
    this.wss.close();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

/** ws's frame writer and reader (exported by the package, not in its type declarations). */
interface WsSender {
  send(
    data: Buffer | string,
    options: { binary: boolean; fin: boolean; mask: boolean; compress: boolean },
    cb?: (err?: Error) => void,
  ): void;
  close(code: number, data: string, mask: boolean, cb?: (err?: Error) => void): void;
}
interface WsReceiver extends NodeJS.WritableStream {
  on(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): this;
  on(event: 'conclude', listener: (code: number, reason: Buffer) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
}
const { Sender, Receiver } = wsModule as unknown as {
  Sender: new (socket: NodeJS.WritableStream) => WsSender;
  Receiver: new (options: { binaryType: string; isServer: boolean; maxPayload: number }) => WsReceiver;
};

/**
 * A WebSocket client over HTTP/2 (RFC 8441): an extended CONNECT stream on a session, with ws's own
 * frame writer and reader on it (masked frames, as a client must send).
 */
export class H2WebSocket {
  readonly stream: ClientHttp2Stream;
  private readonly sender: WsSender;
  private readonly messages: Buffer[] = [];
  private readonly waiting: ((m: Buffer) => void)[] = [];
  /** Resolves with the close code when the server's close frame arrives or the stream ends. */
  readonly closed: Promise<number>;

  private constructor(stream: ClientHttp2Stream) {
    this.stream = stream;
    this.sender = new Sender(stream);
    const receiver = new Receiver({
      binaryType: 'nodebuffer',
      isServer: false,
      maxPayload: 64 * 1024 * 1024,
    });
    let onClose: (code: number) => void = () => undefined;
    this.closed = new Promise((r) => {
      onClose = r;
    });
    receiver.on('message', (data) => {
      const w = this.waiting.shift();
      if (w === undefined) this.messages.push(data);
      else w(data);
    });
    receiver.on('conclude', (code) => onClose(code));
    receiver.on('error', () => onClose(-1));
    stream.on('end', () => onClose(-2));
    stream.on('close', () => onClose(-3));
    stream.pipe(receiver);
  }

  /** Opens the stream; resolves with the response head, and the WebSocket when the status is 2xx. */
  static open(
    session: ClientHttp2Session,
    path: string,
    authority: string,
    headers: OutgoingHttpHeaders = {},
  ): Promise<{ status: number; headers: IncomingHttpHeaders; body: string; ws: H2WebSocket | null }> {
    return new Promise((resolve, reject) => {
      const stream = session.request({
        ':method': 'CONNECT',
        ':protocol': 'websocket',
        ':scheme': 'https',
        ':path': path,
        ':authority': authority,
        'sec-websocket-version': '13',
        ...headers,
      });
      stream.once('error', reject);
      stream.once('response', (h) => {
        const status = Number(h[':status']);
        if (status >= 200 && status < 300) {
          resolve({ status, headers: h, body: '', ws: new H2WebSocket(stream) });
          return;
        }
        let body = '';
        stream.setEncoding('utf8');
        stream.on('data', (c: string) => {
          body += c;
        });
        stream.on('end', () => resolve({ status, headers: h, body, ws: null }));
      });
    });
  }

  send(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) =>
      this.sender.send(
        data,
        { binary: typeof data !== 'string', fin: true, mask: true, compress: false },
        (err) => (err === undefined || err === null ? resolve() : reject(err)),
      ),
    );
  }

  next(): Promise<Buffer> {
    const m = this.messages.shift();
    if (m !== undefined) return Promise.resolve(m);
    return new Promise((r) => this.waiting.push(r));
  }

  /** Sends a close frame and ends the stream. */
  close(code = 1000): void {
    this.sender.close(code, '', true, () => this.stream.end());
  }
}
