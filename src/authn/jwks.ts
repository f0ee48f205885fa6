import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { request } from '../http-client.js';
import type { JwtRule } from '../istio/request-authentication.js';

/** Counters for JWT work; the metrics endpoint reads them. */
export class JwtStats {
  /** Signature verifications actually performed (cache misses that reached the crypto). */
  verifications = 0;
  cacheHits = 0;
  cacheMisses = 0;
  jwksFetches = 0;
  jwksFetchFailures = 0;
}

export interface JwksTiming {
  /** Background refresh period. */
  readonly refreshIntervalMs: number;
  /** Least time between two fetches of one source triggered by unknown `kid`s. */
  readonly minRefetchIntervalMs: number;
}

/** One public key from a key set, imported once and reused until it leaves the set. */
export class JwksKey {
  readonly kid: string;
  /** The JWK's `alg`, or '' when it does not pin one. */
  readonly alg: string;
  readonly key: KeyObject;
  /** Identity of the key material, so that a refetched, unchanged key keeps its object. */
  readonly fingerprint: string;

  constructor(kid: string, alg: string, key: KeyObject, fingerprint: string) {
    this.kid = kid;
    this.alg = alg;
    this.key = key;
    this.fingerprint = fingerprint;
  }
}

/** Largest key set body accepted (a JWKS is a few KiB; this bounds a hostile or broken server). */
const MAX_JWKS_BYTES = 1024 * 1024;

type Kind = 'url' | 'file' | 'inline' | 'discovery';

/**
 * A key set for one or more JWT rules: fetched from a URL (or read from a file, or given inline, or
 * found by OpenID Connect discovery from the issuer), kept in memory, refreshed in the background
 * and at once when a token names an unknown `kid` — at most once per `minRefetchIntervalMs`, so a
 * flood of made-up `kid`s cannot become a flood of fetches. When a fetch fails, the keys already
 * held stay in use; a token whose key was never fetched is refused.
 */
export class JwksSource {
  readonly id: string;
  private readonly kind: Kind;
  private readonly location: string;
  private readonly timeoutMs: number;
  private readonly timing: JwksTiming;
  private readonly stats: JwtStats;
  private readonly log: Logger;
  private byKid = new Map<string, JwksKey>();
  private all: JwksKey[] = [];
  private current = new Set<KeyObject>();
  private inflight: Promise<void> | null = null;
  private lastAttempt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | null = null;
  private discoveredUri: string | null = null;
  loaded = false;
  lastError: string | null = null;

  constructor(rule: JwtRule, timing: JwksTiming, stats: JwtStats, log: Logger) {
    this.timing = timing;
    this.stats = stats;
    this.log = log;
    this.timeoutMs = rule.timeoutMs;
    if (rule.jwks !== null) {
      this.kind = 'inline';
      this.location = rule.jwks;
      this.id = `inline:${createHash('sha256').update(rule.jwks).digest('hex')}`;
    } else if (rule.jwksUri !== null) {
      this.kind = rule.jwksUri.startsWith('file:') ? 'file' : 'url';
      this.location = rule.jwksUri;
      this.id = rule.jwksUri;
    } else {
      this.kind = 'discovery';
      this.location = `${rule.issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
      this.id = `discovery:${rule.issuer}`;
    }
  }

  /** Loads the keys now (inline: synchronously valid after this) and refreshes them periodically. */
  start(): void {
    if (this.kind === 'inline') {
      this.install(this.location);
      return;
    }
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.timing.refreshIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  keys(): readonly JwksKey[] {
    return this.all;
  }

  /** Whether a key is still in the set (a cached token whose key was rotated out is dropped). */
  holds(key: KeyObject): boolean {
    return this.current.has(key);
  }

  /**
   * Finds the key for `kid`, fetching the set first if it has never loaded or if the `kid` is new
   * and the cool-down has passed.
   */
  async resolve(kid: string): Promise<JwksKey | undefined> {
    const hit = this.byKid.get(kid);
    if (hit !== undefined) return hit;
    if (this.kind === 'inline') return undefined;
    if (this.inflight !== null) await this.inflight;
    else if (!this.loaded || performance.now() - this.lastAttempt >= this.timing.minRefetchIntervalMs) {
      await this.refresh();
    }
    return this.byKid.get(kid);
  }

  /** Waits for the first load (or a failed attempt), for tokens without `kid`. */
  async ready(): Promise<void> {
    if (this.loaded || this.kind === 'inline') return;
    if (this.inflight !== null) return this.inflight;
    if (performance.now() - this.lastAttempt >= this.timing.minRefetchIntervalMs) return this.refresh();
  }

  refresh(): Promise<void> {
    if (this.kind === 'inline') return Promise.resolve();
    if (this.inflight !== null) return this.inflight;
    this.lastAttempt = performance.now();
    this.inflight = this.fetchText()
      .then((text) => this.install(text))
      .catch((err: unknown) => {
        this.stats.jwksFetchFailures++;
        this.lastError = err instanceof Error ? err.message : String(err);
        this.log.warn(
          { jwks: this.id, error: this.lastError, keysKept: this.all.length },
          this.all.length === 0
            ? 'JWKS fetch failed and no keys are held yet: tokens of this issuer are refused (401) until a fetch succeeds'
            : 'JWKS fetch failed; keeping the keys already held',
        );
      })
      .finally(() => {
        this.inflight = null;
      });
    return this.inflight;
  }

  private async fetchText(): Promise<string> {
    this.stats.jwksFetches++;
    if (this.kind === 'file') return readFile(fileURLToPath(this.location), 'utf8');
    if (this.kind === 'discovery') {
      if (this.discoveredUri === null) {
        const doc = JSON.parse(await this.get(this.location)) as { jwks_uri?: unknown };
        if (typeof doc.jwks_uri !== 'string') throw new Error(`${this.location} has no jwks_uri`);
        this.discoveredUri = doc.jwks_uri;
      }
      return this.get(this.discoveredUri);
    }
    return this.get(this.location);
  }

  private async get(url: string): Promise<string> {
    const res = await request(url, {
      method: 'GET',
      headers: { accept: 'application/json' },
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`${url} answered HTTP ${res.statusCode}`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length;
      if (size > MAX_JWKS_BYTES) {
        res.body.destroy();
        throw new Error(`${url} sent more than ${MAX_JWKS_BYTES} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /** Parses a key set and swaps it in; keys whose material did not change keep their objects. */
  private install(text: string): void {
    let doc: { keys?: unknown };
    try {
      doc = JSON.parse(text) as { keys?: unknown };
    } catch {
      throw new Error('the key set is not valid JSON');
    }
    if (!Array.isArray(doc.keys)) throw new Error('the key set has no "keys" array');
    const previous = new Map<string, JwksKey>();
    for (const k of this.all) previous.set(k.fingerprint, k);
    const all: JwksKey[] = [];
    const byKid = new Map<string, JwksKey>();
    for (const jwk of doc.keys as JsonWebKey[]) {
      const k = importKey(jwk, previous);
      if (k === null) continue;
      all.push(k);
      if (k.kid !== '' && !byKid.has(k.kid)) byKid.set(k.kid, k);
    }
    if (all.length === 0) throw new Error('the key set holds no usable signing key');
    const before = new Set(this.byKid.keys());
    this.all = all;
    this.byKid = byKid;
    this.current = new Set(all.map((k) => k.key));
    this.loaded = true;
    this.lastError = null;
    const added = [...byKid.keys()].filter((k) => !before.has(k));
    const removed = [...before].filter((k) => !byKid.has(k));
    if (added.length > 0 || removed.length > 0)
      this.log.info({ jwks: this.id, added, removed }, 'JWKS keys changed');
  }
}

const SUPPORTED_KTY = new Set(['RSA', 'EC', 'OKP']);

function importKey(jwk: JsonWebKey, previous: ReadonlyMap<string, JwksKey>): JwksKey | null {
  if (jwk === null || typeof jwk !== 'object' || !SUPPORTED_KTY.has(String(jwk.kty))) return null;
  if (jwk.use !== undefined && jwk.use !== 'sig') return null;
  // Only the public parameters identify the key; a private JWK published by mistake is not used.
  if (jwk.d !== undefined) return null;
  const kid = typeof jwk.kid === 'string' ? jwk.kid : '';
  const alg = typeof jwk.alg === 'string' ? jwk.alg : '';
  const fingerprint = JSON.stringify([kid, alg, jwk.kty, jwk.crv, jwk.n, jwk.e, jwk.x, jwk.y]);
  const known = previous.get(fingerprint);
  if (known !== undefined) return known;
  try {
    return new JwksKey(kid, alg, createPublicKey({ key: jwk, format: 'jwk' }), fingerprint);
  } catch {
    return null;
  }
}

/**
 * Key sets by source, shared across snapshots so that a policy or certificate reload does not
 * refetch every key set. Sources no snapshot uses any more are stopped.
 */
export class JwksRegistry {
  private readonly sources = new Map<string, JwksSource>();
  readonly stats = new JwtStats();
  private readonly timing: JwksTiming;
  private readonly log: Logger;

  constructor(timing: JwksTiming, log: Logger) {
    this.timing = timing;
    this.log = log;
  }

  sourceFor(rule: JwtRule): JwksSource {
    const probe = new JwksSource(rule, this.timing, this.stats, this.log);
    const existing = this.sources.get(probe.id);
    if (existing !== undefined) return existing;
    this.sources.set(probe.id, probe);
    probe.start();
    return probe;
  }

  /** Stops every source not in `inUse`. */
  retain(inUse: ReadonlySet<JwksSource>): void {
    for (const [id, s] of this.sources) {
      if (!inUse.has(s)) {
        s.stop();
        this.sources.delete(id);
      }
    }
  }

  list(): JwksSource[] {
    return [...this.sources.values()];
  }

  close(): void {
    for (const s of this.sources.values()) s.stop();
    this.sources.clear();
  }
}
