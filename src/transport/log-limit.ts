/**
 * Logs what clients cause (refused handshakes, refused peers, malformed requests) without letting
 * a client flood the log: per key (a reason), one line per interval; the lines held back in between
 * are counted and reported on the next line that goes out. Keys are reasons from a closed set, and
 * the map is capped anyway.
 */
export class LogLimiter {
  private readonly intervalMs: number;
  private readonly maxKeys: number;
  private readonly last = new Map<string, LimitState>();

  constructor(intervalMs = 10_000, maxKeys = 256) {
    this.intervalMs = intervalMs;
    this.maxKeys = maxKeys;
  }

  /**
   * Whether a line for `key` may go out now: -1 when it must be held back, else how many were held
   * back since the last one (to log with it).
   */
  allow(key: string, now: number = Date.now()): number {
    let s = this.last.get(key);
    if (s === undefined) {
      if (this.last.size >= this.maxKeys) return -1;
      s = new LimitState();
      this.last.set(key, s);
    } else if (now - s.at < this.intervalMs) {
      s.suppressed++;
      return -1;
    }
    const held = s.suppressed;
    s.at = now;
    s.suppressed = 0;
    return held;
  }
}

class LimitState {
  at = 0;
  suppressed = 0;
}
