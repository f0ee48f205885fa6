// The "realistic" policy set for the everything-on targets: a RequestAuthentication and 20
// AuthorizationPolicies mixing exact, prefix and template paths, principals, namespaces and claims.
// The benchmark request (GET /api/v1/items/42 from sa/web with a reader's token) is allowed by one
// of them; /admin/* and DELETE are denied.
export function policiesYaml(issuer, jwksUri) {
  const docs = [
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'RequestAuthentication',
      metadata: { name: 'bench-jwt', namespace: 'default' },
      spec: {
        selector: { matchLabels: { app: 'api' } },
        jwtRules: [{ issuer, jwksUri, audiences: ['api'] }],
      },
    },
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-admin', namespace: 'istio-system' },
      spec: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin', '/admin/*'] } }] }] },
    },
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'deny-debug-outside', namespace: 'default' },
      spec: {
        action: 'DENY',
        rules: [
          {
            from: [{ source: { notNamespaces: ['default'] } }],
            to: [{ operation: { paths: ['/debug/*'] } }],
          },
        ],
      },
    },
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'items-read', namespace: 'default' },
      spec: {
        selector: { matchLabels: { app: 'api' } },
        rules: [
          {
            from: [
              {
                source: { principals: ['example.org/ns/default/sa/web'], requestPrincipals: [`${issuer}/*`] },
              },
            ],
            to: [{ operation: { methods: ['GET', 'HEAD'], paths: ['/api/v1/items', '/api/v1/items/{*}'] } }],
            when: [{ key: 'request.auth.claims[groups]', values: ['readers', 'writers'] }],
          },
        ],
      },
    },
  ];
  for (let i = 0; i < 17; i++) {
    docs.push({
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: `service-${i}`, namespace: 'default' },
      spec: {
        rules: [
          {
            from: [
              {
                source: {
                  principals: [`example.org/ns/team${i}/sa/*`, `example.org/ns/default/sa/job-${i}`],
                },
              },
            ],
            to: [
              {
                operation: {
                  methods: i % 2 === 0 ? ['GET'] : ['GET', 'POST'],
                  paths: [`/svc${i}/*`, `/api/v2/svc${i}/{*}/detail`, `/exact/${i}`],
                },
              },
            ],
            when: i % 3 === 0 ? [{ key: 'request.auth.claims[scope]', values: [`svc${i}:read`] }] : undefined,
          },
        ],
      },
    });
  }
  return docs.map((d) => JSON.stringify(d)).join('\n---\n');
}
