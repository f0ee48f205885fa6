/**
 * The parts of undici Portcullis uses: Pool and Agent, with the request API. undici's index also
 * loads fetch, WebSocket, cookies, the mock agent and more, and touching the Web globals there
 * makes Node load its own bundled copy of undici as well: ~90 ms and several MB at every start
 * for code the proxy never runs. The index does exactly this to give dispatchers their request
 * API; it is done once here for the modules loaded on their own.
 */
import type { Dispatcher as DispatcherType } from 'undici';
import apiMethods from 'undici/lib/api/index.js';
import AgentClass from 'undici/lib/dispatcher/agent.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import PoolClass from 'undici/lib/dispatcher/pool.js';

Object.assign(DispatcherClass.prototype, apiMethods);

export const Pool = PoolClass;
export type Pool = InstanceType<typeof PoolClass>;
export const Agent = AgentClass;
export type Agent = InstanceType<typeof AgentClass>;
export type { buildConnector, Dispatcher } from 'undici';

let shared: Agent | null = null;

/** A request to any origin over one shared keep-alive agent (what undici's top-level request does). */
export function request(
  url: string,
  options: Omit<DispatcherType.RequestOptions, 'origin' | 'path'>,
): Promise<DispatcherType.ResponseData> {
  const u = new URL(url);
  shared ??= new Agent();
  return shared.request({ ...options, origin: u.origin, path: `${u.pathname}${u.search}` });
}
