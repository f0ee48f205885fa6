import { existsSync } from 'node:fs';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoginGateway, startLoginGateway } from '../helpers/oidc.js';

/**
 * A person with a real browser: headless Chromium (Debian's, which `.ci/run` installs) logs in at
 * the OpenID provider's own pages through Portcullis and lands on the legacy app with an identity.
 */

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (CHROMIUM === undefined)
  console.log('login-browser.test.ts: skipped — no Chromium (apt-get install chromium; .ci/run does)');

describe.skipIf(CHROMIUM === undefined)('logging in with a browser', () => {
  let g: LoginGateway;
  let browser: Browser;

  beforeAll(async () => {
    g = await startLoginGateway({
      providers: (issuer) => [
        {
          name: 'test',
          issuer,
          clientId: 'portcullis',
          clientSecretFile: 'client-secret',
          scopes: ['openid', 'email', 'groups'],
        },
      ],
      login: { headers: { 'x-forwarded-user': 'sub' } },
    });
    browser = await puppeteer.launch({
      executablePath: CHROMIUM as string,
      headless: true,
      // The listener's certificate comes from a CA made by the test; root (CI) needs no sandbox.
      acceptInsecureCerts: true,
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await g?.close();
  });

  it('signs in at the provider, comes back to the page, and the app sees the person', async () => {
    const page = await browser.newPage();
    await page.goto(`${g.origin}/reports/weekly`);
    expect(page.url().startsWith(g.issuer)).toBe(true);
    await page.type('input[name="login"]', 'admin');
    await page.type('input[name="password"]', 'anything');
    let [landed] = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    // The provider asks for consent once.
    if (page.url().startsWith(g.issuer))
      [landed] = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    expect(page.url()).toBe(`${g.origin}/reports/weekly`);
    const echoed = JSON.parse((await landed?.text()) ?? '{}') as { headers: Record<string, string> };
    expect(echoed.headers['x-forwarded-user']).toBe('admin');
    const cookies = await browser.cookies();
    const session = cookies.find((c) => c.name === '__Host-portcullis');
    expect(session).toMatchObject({ secure: true, httpOnly: true, sameSite: 'Lax', path: '/' });

    await page.goto(`${g.origin}/.portcullis/logout`);
    expect((await browser.cookies()).some((c) => c.name === '__Host-portcullis')).toBe(false);
    await page.close();
  }, 60_000);
});
