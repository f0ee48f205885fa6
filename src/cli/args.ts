import { type ParseArgsConfig, parseArgs } from 'node:util';
import { PortcullisError } from '../errors.js';

export type Options = NonNullable<ParseArgsConfig['options']>;

/** parseArgs with strict checking, turning its errors into usage errors (exit code 2). */
export function parse(args: string[], options: Options): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, ...options },
      strict: true,
      allowPositionals: true,
    });
  } catch (err) {
    throw new PortcullisError('ERR_USAGE', (err as Error).message);
  }
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function strs(v: unknown): string[] {
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return typeof v === 'string' ? [v] : [];
}

export function required(v: unknown, flag: string): string {
  const s = str(v);
  if (s === undefined || s === '') throw new PortcullisError('ERR_USAGE', `${flag} is required`);
  return s;
}
