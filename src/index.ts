/**
 * The library API: start a proxy from a config object or file.
 *
 *   import { startFromFile } from 'portcullis';
 *   const proxy = await startFromFile('portcullis.yaml');
 *   ...
 *   await proxy.close();
 */
import { type Config, configFromObject, loadConfigFile } from './config/load.js';
import { Portcullis, type StartOptions } from './proxy/portcullis.js';

export {
  type LatencySummary,
  type LoadtestInput,
  type LoadtestReport,
  loadtest,
} from './cli/loadtest.js';
export type { Config, Limits, ListenerConfig } from './config/load.js';
export { configFromObject, DEFAULT_LIMITS, loadConfigFile } from './config/load.js';
export { ConfigError, type ErrorCode, PortcullisError } from './errors.js';
export { createCa, issueSvid, type PemPair } from './identity/dev-ca.js';
export { SpiffeId, spiffeIdProblem } from './identity/spiffe-id.js';
export { Portcullis, type StartOptions } from './proxy/portcullis.js';

export function start(config: Config, options?: StartOptions): Promise<Portcullis> {
  return Portcullis.start(config, options);
}

export function startFromFile(file: string, options?: StartOptions): Promise<Portcullis> {
  return Portcullis.start(loadConfigFile(file), options);
}

export function startFromObject(raw: unknown, baseDir: string, options?: StartOptions): Promise<Portcullis> {
  return Portcullis.start(configFromObject(raw, baseDir), options);
}
