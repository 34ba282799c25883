// Losing the server: the wallboard marks its data stale, keeps retrying with
// backoff, and comes back live after a restart on the same port and data dir.
// Also the open mode (no config): no login at all.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ev, launchBrowser, openPage, screenshot, Server, TOKENS, waitStatus } from './support/server.mjs';

describe('connection loss', { timeout: 90000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await new Server().start();
    await server.post([
      ev.status(server, { shop: 's1', agent: 'a1' }),
      ev.customer(server, { shop: 's1', conv: 'z1', customer: 'q1', agent: 'a1', ts: Date.now() - 2000 }),
      ev.agent(server, { shop: 's1', conv: 'z1', customer: 'q1', agent: 'a1', ts: Date.now() - 1000 }),
    ]);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('killing the server shows stale; a restart recovers', async () => {
    const page = await openPage(browser, server, { token: TOKENS.supervisor });
    await waitStatus(page, 'live');
    await page.waitForSelector('.agent-tile[data-agent="a1"]');
    assert.equal(await page.getAttribute('body', 'data-stale'), 'false');

    await server.kill();
    await waitStatus(page, 'stale', 10000);
    assert.equal(await page.getAttribute('body', 'data-stale'), 'true');
    assert.equal(await page.isVisible('#stale-banner'), true);
    // the data stays on screen, greyed
    assert.ok(await page.$('.agent-tile[data-agent="a1"]'));
    const filter = await page.$eval('.agent-tile[data-agent="a1"]', (el) => getComputedStyle(el).filter);
    assert.match(filter, /grayscale/);
    await screenshot(page, 'wallboard-stale');

    await server.restart();
    await waitStatus(page, 'live', 20000);
    assert.equal(await page.getAttribute('body', 'data-stale'), 'false');
    assert.equal(await page.isVisible('#stale-banner'), false);
    // the data survived the restart (same data dir)
    await page.waitForSelector('.agent-tile[data-agent="a1"]');
    await page.waitForFunction(() => document.querySelector('.agent-tile[data-agent="a1"] [data-f="avg_today"]')?.textContent === '1.0s');
    // and it is live again: a new event shows
    await server.post([ev.customer(server, { shop: 's1', conv: 'z2', customer: 'q2', agent: 'a1' })]);
    await page.waitForFunction(() => document.querySelector('.agent-tile[data-agent="a1"] .wait-n')?.textContent === '1', null, { timeout: 3000 });
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });
});

describe('open mode (no config)', { timeout: 60000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await new Server({ config: null }).start();
    await server.post([
      ev.status(server, { shop: 'x1', agent: 'b1' }),
      ev.status(server, { shop: 'x2', agent: 'b2' }),
    ]);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('shows every agent without a login', async () => {
    const page = await openPage(browser, server);
    await waitStatus(page, 'live');
    await page.waitForSelector('.agent-tile[data-agent="b1"]');
    await page.waitForSelector('.agent-tile[data-agent="b2"]');
    assert.equal(await page.isVisible('#login-form'), false);
    assert.equal(await page.isVisible('#logout'), false);
    assert.equal(await page.getAttribute('body', 'data-open'), 'true');
    await page.context().close();
  });
});
