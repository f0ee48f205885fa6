import type { Socket } from 'node:net';
import { isIPv6 } from 'node:net';

/**
 * The budget of connections that have not yet proved who they are: still in the PERMISSIVE
 * first-byte sniff, the TLS handshake or the SPIFFE checks. It is apart from the budget of
 * verified connections, so a client that never finishes a handshake can hold only pending slots:
 *
 * - a deadline from accept (not an idle timer: a ClientHello trickled a byte at a time resets an
 *   idle timer forever), after which the connection is closed;
 * - at most `maxPerSource` pending connections from one source (an IPv6 /64 counts as one, since
 *   one host is handed a whole /64); more are refused at once;
 * - at most `max` pending connections in all; a new one then closes the oldest. A real peer
 *   finishes its handshake in milliseconds, so to starve it an attacker must open connections
 *   faster than `max` per handshake time, not merely keep `max` of them open.
 */

const kSource = Symbol('portcullis.pending.source');
const kTimer = Symbol('portcullis.pending.timer');

interface PendingSocket {
  [kSource]?: string;
  [kTimer]?: NodeJS.Timeout | null;
}

export type PendingRefusal = '' | 'pending-per-source';

export class PendingConnections {
  readonly max: number;
  readonly maxPerSource: number;
  readonly timeoutMs: number;
  /** Insertion order is age order: the first one is the oldest. */
  private readonly sockets = new Set<Socket>();
  private readonly perSource = new Map<string, number>();
  private readonly onDeadline: (socket: Socket) => void;

  /** `onDeadline` must be a function that does not close over a connection (called with the socket). */
  constructor(max: number, maxPerSource: number, timeoutMs: number, onDeadline: (socket: Socket) => void) {
    this.max = max;
    this.maxPerSource = maxPerSource;
    this.timeoutMs = timeoutMs;
    this.onDeadline = onDeadline;
  }

  get size(): number {
    return this.sockets.size;
  }

  /**
   * Takes a new connection into the budget. Returns why it is refused ('' when admitted); when the
   * budget is full the oldest pending connection is returned in `evicted` for the caller to close.
   */
  admit(socket: Socket, evicted: { socket: Socket | null }): PendingRefusal {
    evicted.socket = null;
    const source = sourceKey(socket.remoteAddress ?? '');
    const n = this.perSource.get(source) ?? 0;
    if (n >= this.maxPerSource) return 'pending-per-source';
    if (this.sockets.size >= this.max) {
      const oldest = this.sockets.values().next();
      if (oldest.done !== true) {
        this.settle(oldest.value);
        evicted.socket = oldest.value;
      }
    }
    this.perSource.set(source, n + 1);
    this.sockets.add(socket);
    const tagged = socket as Socket & PendingSocket;
    tagged[kSource] = source;
    tagged[kTimer] = setTimeout(this.onDeadline, this.timeoutMs, socket);
    return '';
  }

  has(socket: Socket): boolean {
    return this.sockets.has(socket);
  }

  /** The connection is no longer pending (verified, refused or closed); safe to call twice. */
  settle(socket: Socket): void {
    if (!this.sockets.delete(socket)) return;
    const tagged = socket as Socket & PendingSocket;
    const timer = tagged[kTimer];
    if (timer !== undefined && timer !== null) clearTimeout(timer);
    tagged[kTimer] = null;
    const source = tagged[kSource] ?? '';
    const n = (this.perSource.get(source) ?? 1) - 1;
    if (n <= 0) this.perSource.delete(source);
    else this.perSource.set(source, n);
  }
}

/**
 * The address a per-source limit counts by: IPv4 as is (also when IPv4-mapped in IPv6), IPv6 by
 * its /64 prefix.
 */
export function sourceKey(address: string): string {
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  if (!isIPv6(address)) return address;
  const zone = address.indexOf('%');
  const a = zone === -1 ? address : address.slice(0, zone);
  const dbl = a.indexOf('::');
  let groups: string[];
  if (dbl === -1) {
    groups = a.split(':');
  } else {
    const head = a.slice(0, dbl) === '' ? [] : a.slice(0, dbl).split(':');
    const tail = a.slice(dbl + 2) === '' ? [] : a.slice(dbl + 2).split(':');
    groups = [...head, ...new Array<string>(Math.max(0, 8 - head.length - tail.length)).fill('0'), ...tail];
  }
  const prefix: string[] = [];
  for (let i = 0; i < 4; i++) prefix.push((Number.parseInt(groups[i] ?? '0', 16) || 0).toString(16));
  return `${prefix.join(':')}::/64`;
}
