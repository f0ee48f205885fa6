import type { RequestContext } from './context.js';
import { LocalReply, REPLIES, sendLocalReply } from './local-reply.js';
import type { StageResult } from './plan.js';
import { openTunnel } from './tunnel.js';

/**
 * Runs the plan's stages from `from`, then forwards. Synchronous stages cost a call and a
 * comparison; only a stage that returns a promise (one that must wait on I/O) suspends the loop.
 */
export function runStages(ctx: RequestContext, from: number): void {
  const stages = ctx.plan.stages;
  for (let i = from; i < stages.length; i++) {
    let result: StageResult | Promise<StageResult>;
    try {
      result = (stages[i] as (typeof stages)[number]).run(ctx);
    } catch (err) {
      failClosed(ctx, err);
      return;
    }
    if (result === null) continue;
    if (result instanceof LocalReply) {
      reply(ctx, result);
      return;
    }
    const next = i + 1;
    result.then(
      (r) => (r === null ? runStages(ctx, next) : reply(ctx, r)),
      (err: unknown) => failClosed(ctx, err),
    );
    return;
  }
  // undici sends origin-form targets only; the asterisk form is answered here (after the stages).
  if (ctx.forwardTarget === '*') reply(ctx, REPLIES.optionsAsterisk);
  else if (ctx.upgradeHead !== null) openTunnel(ctx);
  else ctx.plan.upstream.forward(ctx);
}

export function reply(ctx: RequestContext, r: LocalReply): void {
  ctx.reply = r;
  sendLocalReply(ctx.res, r, r.bearerChallenge ? ctx.bearerChallenge() : '');
}

/** Any error inside a stage denies the request: a PEP that cannot decide must not let it through. */
function failClosed(ctx: RequestContext, err: unknown): void {
  ctx.plan.upstream.logger.error({ err }, 'request stage failed; denying the request');
  reply(ctx, REPLIES.internal);
}
