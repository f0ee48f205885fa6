import { afterEach, describe, expect, it, vi } from 'vitest';
import { PrimaryReplayGuard } from '../../../src/cluster/worker.js';

describe("a cluster worker's DPoP replay guard", () => {
  afterEach(() => vi.useRealTimers());

  it("takes the primary's word: fresh or replayed", async () => {
    const g = new PrimaryReplayGuard();
    const first = g.record('k1', 0);
    const second = g.record('k2', 0);
    g.settle(1, true);
    g.settle(2, false);
    expect(await first).toBe('fresh');
    expect(await second).toBe('replayed');
  });

  it('fails closed when the primary does not answer within a second', async () => {
    vi.useFakeTimers();
    const g = new PrimaryReplayGuard();
    const pending = g.record('k', 0);
    vi.advanceTimersByTime(999);
    let settled = false;
    void pending.then(() => {
      settled = true;
    });
    await Promise.resolve();
    expect(settled).toBe(false);
    vi.advanceTimersByTime(1);
    expect(await pending).toBe('unavailable');
  });
});
