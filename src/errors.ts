/**
 * One error type for the whole project, with a closed union of codes (the way fastify's FST_ERR_*
 * and jose's ERR_JWT_* work): callers and tests branch on `code`, never on message text.
 * Details that may help an operator go in `cause`; secrets never go anywhere in an error.
 */
export type ErrorCode =
  | 'ERR_CONFIG_INVALID'
  | 'ERR_POLICY_INVALID'
  | 'ERR_SPIFFE_ID_INVALID'
  | 'ERR_SVID_INVALID'
  | 'ERR_BUNDLE_INVALID'
  | 'ERR_CREDENTIALS_INVALID'
  | 'ERR_PEER_UNTRUSTED'
  | 'ERR_SERVER_IDENTITY_MISMATCH'
  | 'ERR_BAD_REQUEST'
  | 'ERR_UPSTREAM_UNAVAILABLE'
  | 'ERR_UPSTREAM_TIMEOUT'
  | 'ERR_USAGE';

/** HTTP status a local reply uses for each code (codes that never reach a client map to 500). */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = {
  ERR_CONFIG_INVALID: 500,
  ERR_POLICY_INVALID: 500,
  ERR_SPIFFE_ID_INVALID: 400,
  ERR_SVID_INVALID: 403,
  ERR_BUNDLE_INVALID: 500,
  ERR_CREDENTIALS_INVALID: 500,
  ERR_PEER_UNTRUSTED: 403,
  ERR_SERVER_IDENTITY_MISMATCH: 503,
  ERR_BAD_REQUEST: 400,
  ERR_UPSTREAM_UNAVAILABLE: 503,
  ERR_UPSTREAM_TIMEOUT: 504,
  ERR_USAGE: 500,
};

export class PortcullisError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PortcullisError';
    this.code = code;
  }

  get status(): number {
    return HTTP_STATUS[this.code];
  }
}

/** A config or policy problem, located: which file, which field, what is wrong. */
export interface ConfigIssue {
  readonly file: string;
  readonly field: string;
  readonly message: string;
}

export function formatIssue(issue: ConfigIssue): string {
  return issue.field ? `${issue.file}: ${issue.field}: ${issue.message}` : `${issue.file}: ${issue.message}`;
}

/** Thrown when a config (or policy set) does not load; carries every problem found, not just the first. */
export class ConfigError extends PortcullisError {
  readonly issues: readonly ConfigIssue[];

  constructor(code: 'ERR_CONFIG_INVALID' | 'ERR_POLICY_INVALID', issues: readonly ConfigIssue[]) {
    super(code, issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
