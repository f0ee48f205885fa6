import { createPublicKey, type JsonWebKey } from 'node:crypto';
import { parseDuration } from '../config/duration.js';
import type { ResourceMeta } from './load.js';
import { parseSelector } from './peer-authentication.js';
import { isMap, Problems, type Report, specMap, unknownKeys } from './validate.js';

/**
 * Istio RequestAuthentication (security.istio.io/v1): which JWTs a workload accepts.
 * https://istio.io/latest/docs/reference/config/security/request_authentication/
 */
export interface JwtHeaderLocation {
  /** Header name, lowercased. */
  readonly name: string;
  /** Text that must precede the token (e.g. "Bearer "); '' for none. */
  readonly prefix: string;
}

export interface ClaimToHeader {
  /** Header name, lowercased. */
  readonly header: string;
  /** Claim path: `sub`, or nested `a.b.c`. */
  readonly claim: readonly string[];
}

export interface JwtRule {
  readonly issuer: string;
  readonly audiences: readonly string[];
  /** Where the keys come from: a URL (http, https or file), inline JSON, or OpenID discovery. */
  readonly jwksUri: string | null;
  readonly jwks: string | null;
  readonly fromHeaders: readonly JwtHeaderLocation[];
  readonly fromParams: readonly string[];
  readonly fromCookies: readonly string[];
  /** True when none of fromHeaders/fromParams/fromCookies is set: use the default locations. */
  readonly defaultLocations: boolean;
  readonly outputPayloadToHeader: string | null;
  readonly forwardOriginalToken: boolean;
  readonly outputClaimToHeaders: readonly ClaimToHeader[];
  /** JWKS fetch timeout in ms. */
  readonly timeoutMs: number;
  /** `RequestAuthentication ns/name jwtRules[i]`, for messages. */
  readonly source: string;
  /**
   * RFC 8705 certificate-bound tokens (annotation `portcullis.dev/certificate-bound: "true"`): a
   * token must carry `cnf` `x5t#S256` equal to the thumbprint of the client certificate on the
   * connection it arrives on.
   */
  readonly certificateBound: boolean;
  /**
   * RFC 9449 DPoP (annotation `portcullis.dev/dpop: "true"`): tokens bound to a key (`cnf.jkt`)
   * are accepted as `Authorization: DPoP <token>` with a valid `DPoP` proof. With either
   * annotation, a token must be bound one of the accepted ways.
   */
  readonly dpop: boolean;
}

/** The annotation that binds a RequestAuthentication's tokens to the client certificate (RFC 8705). */
export const CERTIFICATE_BOUND_ANNOTATION = 'portcullis.dev/certificate-bound';
/** The annotation that accepts DPoP-bound tokens with proofs (RFC 9449). */
export const DPOP_ANNOTATION = 'portcullis.dev/dpop';
const KNOWN_ANNOTATIONS = [CERTIFICATE_BOUND_ANNOTATION, DPOP_ANNOTATION];

export interface RequestAuthentication {
  readonly meta: ResourceMeta;
  readonly selector: Readonly<Record<string, string>> | null;
  readonly rules: readonly JwtRule[];
}

const RULE_FIELDS = [
  'issuer',
  'audiences',
  'jwksUri',
  'jwks_uri',
  'jwks',
  'fromHeaders',
  'fromParams',
  'fromCookies',
  'outputPayloadToHeader',
  'forwardOriginalToken',
  'outputClaimToHeaders',
  'timeout',
];

/** RFC 9110 token characters, which is what a header name may use. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
export const DEFAULT_JWKS_TIMEOUT_MS = 5_000;

function strings(v: unknown, field: string, report: Report): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '')) {
    report(field, 'must be a list of non-empty strings');
    return [];
  }
  return v as string[];
}

function headerName(v: unknown, field: string, report: Report): string | null {
  if (typeof v !== 'string' || !HEADER_NAME.test(v)) {
    report(field, `must be an HTTP header name (got ${JSON.stringify(v)})`);
    return null;
  }
  return v.toLowerCase();
}

function usablePublicKey(jwk: unknown): boolean {
  if (jwk === null || typeof jwk !== 'object') return false;
  const k = jwk as JsonWebKey;
  if (k.d !== undefined || (k.kty !== 'RSA' && k.kty !== 'EC' && k.kty !== 'OKP')) return false;
  try {
    createPublicKey({ key: k, format: 'jwk' });
    return true;
  } catch {
    return false;
  }
}

function parseJwksUri(v: unknown, field: string, report: Report): string | null {
  if (typeof v !== 'string' || v === '') {
    report(field, 'must be a URL');
    return null;
  }
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    report(field, `"${v}" is not a URL`);
    return null;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:' && url.protocol !== 'file:') {
    report(field, 'must be an https://, http:// or file:// URL');
    return null;
  }
  return url.href;
}

function parseRule(
  raw: unknown,
  at: string,
  source: string,
  binding: { certificateBound: boolean; dpop: boolean },
  report: Report,
): JwtRule | null {
  if (!isMap(raw)) {
    report(at, 'must be a mapping');
    return null;
  }
  const problems = new Problems(report);
  const fail = problems.report;
  unknownKeys(raw, RULE_FIELDS, at, fail);
  if (typeof raw.issuer !== 'string' || raw.issuer === '') fail(`${at}.issuer`, 'is required');
  const audiences = strings(raw.audiences, `${at}.audiences`, fail);
  const uriRaw = raw.jwksUri ?? raw.jwks_uri;
  const jwksUri = uriRaw === undefined ? null : parseJwksUri(uriRaw, `${at}.jwksUri`, fail);
  let jwks: string | null = null;
  if (raw.jwks !== undefined) {
    if (typeof raw.jwks !== 'string') fail(`${at}.jwks`, 'must be a string holding a JSON Web Key Set');
    else {
      try {
        const doc = JSON.parse(raw.jwks) as { keys?: unknown };
        if (!Array.isArray(doc.keys)) fail(`${at}.jwks`, 'the JSON Web Key Set has no "keys" array');
        else if (!doc.keys.some(usablePublicKey))
          fail(`${at}.jwks`, 'the JSON Web Key Set holds no RSA, EC or OKP public key');
        else jwks = raw.jwks;
      } catch {
        fail(`${at}.jwks`, 'is not valid JSON');
      }
    }
  }
  if (uriRaw !== undefined && raw.jwks !== undefined) fail(`${at}`, 'set jwksUri or jwks, not both');

  const fromHeaders: JwtHeaderLocation[] = [];
  if (raw.fromHeaders !== undefined && raw.fromHeaders !== null) {
    if (!Array.isArray(raw.fromHeaders)) fail(`${at}.fromHeaders`, 'must be a list of { name, prefix }');
    else
      raw.fromHeaders.forEach((h: unknown, i: number) => {
        const f = `${at}.fromHeaders[${i}]`;
        if (!isMap(h)) {
          fail(f, 'must be a mapping with name and optional prefix');
          return;
        }
        for (const k of Object.keys(h))
          if (k !== 'name' && k !== 'prefix') fail(`${f}.${k}`, 'unknown field');
        const name = headerName(h.name, `${f}.name`, fail);
        if (h.prefix !== undefined && typeof h.prefix !== 'string') fail(`${f}.prefix`, 'must be a string');
        if (name !== null) fromHeaders.push({ name, prefix: typeof h.prefix === 'string' ? h.prefix : '' });
      });
  }
  const fromParams = strings(raw.fromParams, `${at}.fromParams`, fail);
  const fromCookies = strings(raw.fromCookies, `${at}.fromCookies`, fail);

  let outputPayloadToHeader: string | null = null;
  if (raw.outputPayloadToHeader !== undefined) {
    outputPayloadToHeader = headerName(raw.outputPayloadToHeader, `${at}.outputPayloadToHeader`, fail);
  }
  if (raw.forwardOriginalToken !== undefined && typeof raw.forwardOriginalToken !== 'boolean') {
    fail(`${at}.forwardOriginalToken`, 'must be true or false');
  }
  const outputClaimToHeaders: ClaimToHeader[] = [];
  if (raw.outputClaimToHeaders !== undefined && raw.outputClaimToHeaders !== null) {
    if (!Array.isArray(raw.outputClaimToHeaders))
      fail(`${at}.outputClaimToHeaders`, 'must be a list of { header, claim }');
    else
      raw.outputClaimToHeaders.forEach((c: unknown, i: number) => {
        const f = `${at}.outputClaimToHeaders[${i}]`;
        if (!isMap(c)) {
          fail(f, 'must be a mapping with header and claim');
          return;
        }
        for (const k of Object.keys(c))
          if (k !== 'header' && k !== 'claim') fail(`${f}.${k}`, 'unknown field');
        const header = headerName(c.header, `${f}.header`, fail);
        if (typeof c.claim !== 'string' || c.claim === '' || c.claim.split('.').some((p) => p === '')) {
          fail(`${f}.claim`, 'must be a claim name, or a dotted path such as "a.b"');
          return;
        }
        if (header !== null) outputClaimToHeaders.push({ header, claim: c.claim.split('.') });
      });
  }
  let timeoutMs = DEFAULT_JWKS_TIMEOUT_MS;
  if (raw.timeout !== undefined) {
    const ms = typeof raw.timeout === 'string' ? parseDuration(raw.timeout) : null;
    if (ms === null || ms <= 0) fail(`${at}.timeout`, 'must be a duration such as "5s"');
    else timeoutMs = ms;
  }
  if (!problems.ok) return null;
  return {
    issuer: raw.issuer as string,
    audiences,
    jwksUri,
    jwks,
    fromHeaders,
    fromParams,
    fromCookies,
    defaultLocations: fromHeaders.length === 0 && fromParams.length === 0 && fromCookies.length === 0,
    outputPayloadToHeader,
    forwardOriginalToken: raw.forwardOriginalToken === true,
    outputClaimToHeaders,
    timeoutMs,
    source,
    certificateBound: binding.certificateBound,
    dpop: binding.dpop,
  };
}

/** Validates a RequestAuthentication; returns null (after reporting) when it is invalid. */
export function parseRequestAuthentication(
  meta: ResourceMeta,
  spec: unknown,
  report: Report,
): RequestAuthentication | null {
  const problems = new Problems(report);
  const fail = problems.report;
  const s = specMap(spec, fail);
  if (s === null) return null;
  unknownKeys(s, ['selector', 'jwtRules'], 'spec', fail);
  const selector = parseSelector(s.selector, fail);
  // Our annotations extend the resource the Kubernetes way; a misspelt one must not silently
  // leave tokens unbound.
  for (const k of Object.keys(meta.annotations)) {
    if (k.startsWith('portcullis.dev/') && !KNOWN_ANNOTATIONS.includes(k))
      fail(`metadata.annotations.${k}`, `unknown annotation (known: ${KNOWN_ANNOTATIONS.join(', ')})`);
  }
  for (const k of KNOWN_ANNOTATIONS) {
    const v = meta.annotations[k];
    if (v !== undefined && v !== 'true' && v !== 'false')
      fail(`metadata.annotations.${k}`, 'must be "true" or "false"');
  }
  const binding = {
    certificateBound: meta.annotations[CERTIFICATE_BOUND_ANNOTATION] === 'true',
    dpop: meta.annotations[DPOP_ANNOTATION] === 'true',
  };
  const rules: JwtRule[] = [];
  if (s.jwtRules !== undefined && s.jwtRules !== null) {
    if (!Array.isArray(s.jwtRules)) fail('spec.jwtRules', 'must be a list');
    else
      s.jwtRules.forEach((r: unknown, i: number) => {
        const rule = parseRule(
          r,
          `spec.jwtRules[${i}]`,
          `RequestAuthentication ${meta.namespace}/${meta.name} jwtRules[${i}]`,
          binding,
          fail,
        );
        if (rule !== null) rules.push(rule);
      });
  }
  if (!problems.ok || selector === undefined) return null;
  return { meta, selector, rules };
}
