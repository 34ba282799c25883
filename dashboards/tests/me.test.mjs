// The agent page (/me) with an agent token: only that agent's numbers,
// waits and standing; nothing about colleagues, not even in requests.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ev, launchBrowser, openPage, screenshot, Server, TOKENS, waitStatus } from './support/server.mjs';

describe('agent page', { timeout: 90000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await new Server().start();
    const now = Date.now();
    await server.post([
      ev.status(server, { shop: 's1', agent: 'a1', status: 'online' }),
      ev.status(server, { shop: 's1', agent: 'a2', status: 'online' }),
      ev.customer(server, { shop: 's1', conv: 'm1', customer: 'u1', agent: 'a1', ts: now - 40000 }),
      ev.agent(server, { shop: 's1', conv: 'm1', customer: 'u1', agent: 'a1', ts: now - 39500 }),
      ev.order(server, { shop: 's1', customer: 'u1', amount: 9900, ts: now - 30000 }),
      ev.customer(server, { shop: 's1', conv: 'm2', customer: 'u2', agent: 'a2', ts: now - 40000 }),
      ev.agent(server, { shop: 's1', conv: 'm2', customer: 'u2', agent: 'a2', ts: now - 37000 }),
      // one customer still waiting for a1
      ev.customer(server, { shop: 's1', conv: 'm3', customer: 'u3', agent: 'a1', ts: now - 500 }),
    ]);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('shows only the signed-in agent, with waits and standing', async () => {
    const page = await openPage(browser, server, { token: TOKENS.agent, path: '/me' });
    const urls = [];
    page.on('request', (r) => urls.push(new URL(r.url()).pathname));
    await waitStatus(page, 'live');
    await page.waitForSelector('#me[data-agent="a1"][data-loaded="true"]');
    await page.waitForSelector('.agent-tile[data-agent="a1"]');
    assert.equal(await page.$$eval('.agent-tile', (els) => els.length), 1);
    await page.waitForFunction(() => document.querySelector('#me-today [data-f="sales_fen"]')?.textContent === '¥99.00');
    assert.equal(await page.textContent('#me-today [data-f="avg_response_ms"]'), '500ms');
    const waits = await page.$$eval('#me-waits tr.wait-row', (rows) => rows.map((r) => r.children[2].textContent));
    assert.deepEqual(waits, ['m3']);
    // a1 answered faster than a2: top of the team
    await page.waitForFunction(() => document.querySelector('#standing-gauge')?.dataset.percentile);
    const pct = Number(await page.$eval('#standing-gauge', (el) => el.dataset.percentile));
    assert.ok(pct >= 50, `a1 is faster than a2, percentile ${pct}`);
    const body = await page.textContent('body');
    assert.doesNotMatch(body, /\ba2\b/, 'nothing about a2 on the page');
    await screenshot(page, 'agent-page');
    const foreign = urls.filter((u) => /\/v1\/agents\/(?!a1\/)/.test(u) || u === '/v1/agents');
    assert.deepEqual(foreign, [], 'no request for other agents');
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('the agent page follows the stream', async () => {
    const page = await openPage(browser, server, { token: TOKENS.agent, path: '/me' });
    await waitStatus(page, 'live');
    await page.waitForSelector('#me[data-loaded="true"]');
    await server.post([ev.agent(server, { shop: 's1', conv: 'm3', customer: 'u3', agent: 'a1' })]);
    await page.waitForFunction(() => document.querySelectorAll('#me-waits tr.wait-row').length === 0, null, { timeout: 5000 });
    await page.waitForFunction(() => document.querySelector('.agent-tile .wait-n')?.textContent === '0', null, { timeout: 3000 });
    await page.context().close();
  });

  test('an agent token cannot read a colleague', async () => {
    const res = await server.request('GET', '/v1/agents/a2/stats?window=today', { token: TOKENS.agent });
    assert.ok(res.status === 401 || res.status === 403, `got ${res.status}`);
  });
});
