import { describe, expect, it } from 'vitest';
import { LogLimiter } from '../../../src/transport/log-limit.js';

describe('LogLimiter', () => {
  it('lets one line per key through per interval and reports how many it held back', () => {
    const l = new LogLimiter(10_000);
    expect(l.allow('tls:x', 1_000)).toBe(0);
    expect(l.allow('tls:x', 2_000)).toBe(-1);
    expect(l.allow('tls:x', 10_999)).toBe(-1);
    expect(l.allow('tls:y', 3_000)).toBe(0); // another reason has its own budget
    expect(l.allow('tls:x', 11_000)).toBe(2);
    expect(l.allow('tls:x', 11_001)).toBe(-1);
  });

  it('holds back lines for new keys once it tracks maxKeys of them', () => {
    const l = new LogLimiter(10_000, 2);
    expect(l.allow('a', 0)).toBe(0);
    expect(l.allow('b', 0)).toBe(0);
    expect(l.allow('c', 0)).toBe(-1);
  });
});
