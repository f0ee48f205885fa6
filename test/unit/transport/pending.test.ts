import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { PendingConnections, sourceKey } from '../../../src/transport/pending.js';

/** Only what the budget reads of a socket: its remote address. */
const peer = (remoteAddress: string): Socket => ({ remoteAddress }) as Socket;

describe('the per-source key', () => {
  it('counts IPv4 as is, IPv4-mapped IPv6 as IPv4, and IPv6 by its /64 however it is written', () => {
    expect(sourceKey('203.0.113.7')).toBe('203.0.113.7');
    expect(sourceKey('::ffff:203.0.113.7')).toBe('203.0.113.7');
    const a = sourceKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd');
    expect(a).toBe('2001:db8:1:2::/64');
    // An attacker holding a /64 cannot spread over addresses to escape the cap.
    expect(sourceKey('2001:db8:1:2::1')).toBe(a);
    expect(sourceKey('2001:0db8:0001:0002:0:0:0:ffff')).toBe(a);
    expect(sourceKey('2001:db8:1:2::1%eth0')).toBe(a);
    expect(sourceKey('2001:db8:1:3::1')).not.toBe(a);
    expect(sourceKey('::1')).toBe('0:0:0:0::/64');
  });
});

describe('the pending-connection budget', () => {
  const never = (): void => undefined;

  it('refuses a source past its cap, and evicts the oldest when the budget is full', () => {
    const b = new PendingConnections(3, 2, 60_000, never);
    const out = { socket: null as Socket | null };
    const [a1, a2, a3, b1, c1] = [
      peer('10.0.0.1'),
      peer('10.0.0.1'),
      peer('10.0.0.1'),
      peer('10.0.0.2'),
      peer('10.0.0.3'),
    ];
    expect(b.admit(a1, out)).toBe('');
    expect(b.admit(a2, out)).toBe('');
    expect(b.admit(a3, out)).toBe('pending-per-source');
    expect(b.admit(b1, out)).toBe('');
    expect(out.socket).toBeNull();
    expect(b.admit(c1, out)).toBe('');
    expect(out.socket).toBe(a1); // the oldest went
    expect(b.size).toBe(3);
    // a1's slot of its source is free again, so its source may open one more.
    expect(b.admit(peer('10.0.0.1'), out)).toBe('');
    for (const s of [a2, b1, c1]) b.settle(s);
    b.settle(a2); // twice is harmless
    expect(b.size).toBe(1);
  });

  it('calls the deadline with the socket when it is still pending, not once it settled', async () => {
    const expired: Socket[] = [];
    const b = new PendingConnections(10, 10, 30, (s) => expired.push(s));
    const slow = peer('10.0.0.4');
    const quick = peer('10.0.0.5');
    const out = { socket: null as Socket | null };
    b.admit(slow, out);
    b.admit(quick, out);
    b.settle(quick);
    await new Promise((r) => setTimeout(r, 80));
    expect(expired).toEqual([slow]);
  });
});
