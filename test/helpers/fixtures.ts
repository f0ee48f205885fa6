/** The config from the README and issue 2, exactly as written; tests load and run it unchanged. */
export const DOCUMENTED_CONFIG = `trustDomain: example.org
workload: { namespace: default, serviceAccount: api, labels: { app: api } }
identity:
  cert: certs/api.pem
  key: certs/api.key
  bundles: { example.org: certs/bundle.pem }
listeners:
  - name: inbound
    address: 127.0.0.1:15006
    upstream: http://127.0.0.1:8080
policies: [policies/]
admin: { address: 127.0.0.1:15000 }
`;

/** The audit block from the README and issue 5, exactly as written. */
export const DOCUMENTED_AUDIT = `audit:
  decisions: all            # all | deny | audit
  sinks:
    - { type: stdout }
    - { type: file, path: audit.ndjson }
    - { type: http, url: http://127.0.0.1:9000/ingest }
`;
