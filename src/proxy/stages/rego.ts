import type { Logger } from 'pino';
import type { RegoEngine } from '../../authz/rego/engine.js';
import { envoyInput } from '../../authz/rego/input.js';
import type { RequestContext } from '../context.js';
import { LocalReply, REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/**
 * Rego (OPA compiled to WebAssembly) after the Istio policies: when both are configured, a request
 * must pass the AuthorizationPolicies first, then the Rego decision must allow it too.
 */
export class RegoStage implements Stage {
  readonly name = 'rego';
  private readonly engine: RegoEngine;
  private readonly ourId: string;
  private readonly log: Logger;

  constructor(engine: RegoEngine, ourId: string, log: Logger) {
    this.engine = engine;
    this.ourId = ourId;
    this.log = log;
  }

  run(ctx: RequestContext): StageResult {
    let d: ReturnType<RegoEngine['evaluate']>;
    try {
      d = this.engine.evaluate(envoyInput(ctx.attrs, this.engine.headers, this.ourId));
    } catch (err) {
      // An abort or a trap in the policy: deny, and say why in the log (the audit reason is rego-error).
      this.log.warn(
        { entrypoint: this.engine.entrypoint, err: err instanceof Error ? err.message : String(err) },
        'Rego evaluation failed; denying',
      );
      return REPLIES.regoError;
    }
    if (d.allowed) {
      for (const [n, v] of d.upstreamHeaders) ctx.addHeader(n, v);
      for (const [n, v] of d.responseHeaders) ctx.addResponseHeader(n, v);
      return null;
    }
    if (d.status === 403 && d.body === '' && d.responseHeaders.length === 0) return REPLIES.regoDenied;
    const headers: Record<string, string[]> = {};
    for (const [n, v] of d.responseHeaders) (headers[n] ??= []).push(v);
    // A body the policy chose is sent exactly as given.
    return LocalReply.refusal(
      d.status,
      'rego-denied',
      d.body === '' ? 'RBAC: access denied' : Buffer.from(d.body),
      headers,
    );
  }
}
