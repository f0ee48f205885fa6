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
    throw new PortcullisError('ERR_USAGE', usageMessage(err as Error & { code?: string }, options));
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

/** parseArgs' messages, in the terms of this CLI (its own mention `--` and positional arguments). */
function usageMessage(err: Error & { code?: string }, options: Options): string {
  const flag = /'(-[^']*)'/.exec(err.message)?.[1];
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag !== undefined) {
    const known = Object.keys(options)
      .map((o) => `--${o}`)
      .join(', ');
    return `unknown option ${flag} (this command takes ${known === '' ? 'no options' : known}, and --help)`;
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && flag !== undefined) {
    return `${flag.split(' ')[0]} needs a value`;
  }
  return err.message;
}
