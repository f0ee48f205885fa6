/** What the primary and its workers say to each other over the cluster IPC channel. */

export type Query = 'ready' | 'status' | 'metrics';

/** Primary → worker. */
export type ToWorker =
  | { readonly type: 'portcullis:query'; readonly id: number; readonly what: Query }
  | { readonly type: 'portcullis:reload'; readonly id: number; readonly reason: string }
  | { readonly type: 'portcullis:explain'; readonly id: number; readonly requestId: string }
  | { readonly type: 'portcullis:stop' };

/** Worker → primary. */
export type ToPrimary =
  | { readonly type: 'portcullis:started' }
  | { readonly type: 'portcullis:audit'; readonly lines: readonly string[] }
  | { readonly type: 'portcullis:reply'; readonly id: number; readonly value: unknown };

const TYPES = new Set(['portcullis:query', 'portcullis:reload', 'portcullis:explain', 'portcullis:stop']);
const PRIMARY_TYPES = new Set(['portcullis:started', 'portcullis:audit', 'portcullis:reply']);

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
