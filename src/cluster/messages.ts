/** What the primary and its workers say to each other over the cluster IPC channel. */

export type Query = 'ready' | 'status' | 'metrics';

/** Primary → worker. */
export type ToWorker =
  | { readonly type: 'portcullis:query'; readonly id: number; readonly what: Query }
  | { readonly type: 'portcullis:reload'; readonly id: number; readonly reason: string }
  | { readonly type: 'portcullis:explain'; readonly id: number; readonly requestId: string }
  | { readonly type: 'portcullis:stop' }
  /** The answer to a worker's `portcullis:dpop`: whether the proof id was new to the cluster. */
  | { readonly type: 'portcullis:dpop-seen'; readonly id: number; readonly fresh: boolean };

/** Worker → primary. */
export type ToPrimary =
  | { readonly type: 'portcullis:started' }
  | { readonly type: 'portcullis:audit'; readonly lines: readonly string[] }
  | { readonly type: 'portcullis:reply'; readonly id: number; readonly value: unknown }
  /** A DPoP proof id to record in the primary's replay cache (one cache for the whole cluster). */
  | {
      readonly type: 'portcullis:dpop';
      readonly id: number;
      readonly key: string;
      readonly expiresAt: number;
    };

const TYPES = new Set([
  'portcullis:query',
  'portcullis:reload',
  'portcullis:explain',
  'portcullis:stop',
  'portcullis:dpop-seen',
]);
const PRIMARY_TYPES = new Set([
  'portcullis:started',
  'portcullis:audit',
  'portcullis:reply',
  'portcullis:dpop',
]);

function typed(m: unknown): string | null {
  if (typeof m !== 'object' || m === null) return null;
  const t = (m as { type?: unknown }).type;
  return typeof t === 'string' ? t : null;
}

export function isToWorker(m: unknown): m is ToWorker {
  const t = typed(m);
  return t !== null && TYPES.has(t);
}

export function isToPrimary(m: unknown): m is ToPrimary {
  const t = typed(m);
  return t !== null && PRIMARY_TYPES.has(t);
}
