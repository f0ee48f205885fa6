import type http from 'node:http';
import type { Limits } from '../config/load.js';

/** The HTTP/1.1 server options every listener (inbound and outbound) takes from its limits. */
export function http1Options(limits: Limits): http.ServerOptions {
  return {
    maxHeaderSize: limits.maxHeaderSize,
    headersTimeout: limits.headersTimeout,
    requestTimeout: limits.requestTimeout,
    keepAliveTimeout: limits.keepAliveTimeout,
    requireHostHeader: true,
    noDelay: true,
    // Node checks header and request deadlines on this interval (30 s by default), which would
    // let a slow-loris client hold a connection for up to 30 s past headersTimeout.
    connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(limits.headersTimeout / 4))),
  };
}
