// A development OpenID provider for this example: panva's oidc-provider (a certified OP; a dev
// dependency of Portcullis, so run this from a clone after `npm ci`) with its built-in sign-in and
// consent pages, where any login and password sign in as that login. `admin` is in the group
// `admins`; everyone else in `users`. Never use it for anything real.
//
//   node login-provider.mjs [--port 9000] [--redirect-uri https://localhost:8443/.portcullis/callback]
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '9000' },
    'redirect-uri': { type: 'string', default: 'https://localhost:8443/.portcullis/callback' },
  },
});
const server = http.createServer();
server.listen(Number(values.port), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'portcullis',
        client_secret: readFileSync(new URL('secrets/client-secret', import.meta.url), 'utf8').trim(),
        redirect_uris: [values['redirect-uri']],
        response_types: ['code'],
        grant_types: ['authorization_code'],
      },
    ],
    conformIdTokenClaims: false,
    claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    findAccount: (_ctx, id) => ({
      accountId: id,
      claims: () => ({
        sub: id,
        email: `${id}@corp.example`,
        name: id,
        groups: id === 'admin' ? ['admins'] : ['users'],
      }),
    }),
    features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  });
  server.on('request', provider.callback());
  console.log(`OpenID provider (development only) at ${issuer}`);
});
process.on('SIGTERM', () => process.exit(0));
