import { existsSync } from 'node:fs';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issueCertificate, KeyUsage } from '../../src/identity/dev-ca.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { TestProvider } from '../helpers/oidc.js';
import { makePki } from '../helpers/pki.js';

/**
 * A person with a real browser: headless Chromium (Debian's, which `.ci/run` installs) logs in at
 * the OpenID provider's own pages through Portcullis and lands on the legacy app with an identity.
 */

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (CHROMIUM === undefined)
  console.log('login-browser.test.ts: skipped — no Chromium (apt-get install chromium; .ci/run does)');

describe.skipIf(CHROMIUM === undefined)('logging in with a browser', () => {
  let op: TestProvider;
  let h: Harness;
  let browser: Browser;

  beforeAll(async () => {
    const pki = await makePki();
    const webCa = await createCa('web.example');
    const web = await issueCertificate(webCa, {
      commonName: 'localhost',
      dnsNames: ['localhost'],
      keyUsage: KeyUsage.digitalSignature,
      extendedKeyUsage: ['1.3.6.1.5.5.7.3.1'],
    });
    op = new TestProvider();
    const issuer = await op.listen();
    h = await startHarness({
      pki,
      files: {
        'web.pem': web.certPem,
        'web.key': web.keyPem,
        'client-secret': 'client-secret\n',
        'cookie.key': `${Buffer.alloc(32, 9).toString('base64')}\n`,
      },
      listener: {
        tls: { cert: 'web.pem', key: 'web.key', clientCertificates: 'none' },
        login: {
          providers: [
            {
              name: 'test',
              issuer,
              clientId: 'portcullis',
              clientSecretFile: 'client-secret',
              scopes: ['openid', 'email', 'groups'],
            },
          ],
          cookie: { secretFile: 'cookie.key' },
          headers: { 'x-forwarded-user': 'sub' },
        },
      },
    });
    op.configure('portcullis', 'client-secret', `https://localhost:${h.port}/.portcullis/callback`);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM as string,
      headless: true,
      // The test's web certificate comes from a CA made here; root (CI) needs no sandbox.
      acceptInsecureCerts: true,
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await h?.close();
    await op?.close();
  });

  it('signs in at the provider, comes back to the page, and the app sees the person', async () => {
    const page = await browser.newPage();
    await page.goto(`https://localhost:${h.port}/reports/weekly`);
    expect(page.url().startsWith(op.issuer)).toBe(true);
    await page.type('input[name="login"]', 'admin');
    await page.type('input[name="password"]', 'anything');
    let [landed] = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    // The provider asks for consent once.
    if (page.url().startsWith(op.issuer))
      [landed] = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    expect(page.url()).toBe(`https://localhost:${h.port}/reports/weekly`);
    const echoed = JSON.parse((await landed?.text()) ?? '{}') as { headers: Record<string, string> };
    expect(echoed.headers['x-forwarded-user']).toBe('admin');
    const cookies = await browser.cookies();
    const session = cookies.find((c) => c.name === '__Host-portcullis');
    expect(session).toMatchObject({ secure: true, httpOnly: true, sameSite: 'Lax', path: '/' });

    await page.goto(`https://localhost:${h.port}/.portcullis/logout`);
    expect((await browser.cookies()).some((c) => c.name === '__Host-portcullis')).toBe(false);
    await page.close();
  }, 60_000);
});
